"""Speed of the invertible mixing layers at the CIFAR-10 shapes of the paper's multiscale model.

For each shape (C=12 at 16x16, C=24 at 8x8, C=48 at 4x4; batch 16) and each layer -- QR1x1,
PeriodicConv2d (k=3), EmergingConv2d (k=3) and normflows' Invertible1x1Conv (LU), the usual
baseline -- times the density pass (``inverse``, with log_det) and the sampling pass (``forward``)
under torch.no_grad() in eval mode, and a training step's share ("training": the density pass in
training mode plus the backward to the input and parameters), side by side in one run, with
torch.utils.benchmark. Times are medians over ``--rounds`` rounds interleaved over the layers;
ratios to Invertible1x1Conv are medians over rounds of the ratio within a round. Prints a table
and writes benchmarks/results/mixing_layers.json.

    python benchmarks/mixing_layers.py [--device cuda] [--threads 1] [--rounds 3] [--min-time 0.2]
"""

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from normflows_emerging import EmergingConv2d, PeriodicConv2d, QR1x1  # noqa: E402
from normflows_emerging.flows.utils import plu_1x1_conv  # noqa: E402
from timing import print_table, timed, write_json  # noqa: E402

SHAPES = [(12, 16), (24, 8), (48, 4)]  # (channels, height = width)
BATCH = 16
LAYERS = {
    "Invertible1x1Conv (LU)": plu_1x1_conv,
    "QR1x1": lambda c: QR1x1(c),
    "EmergingConv2d k=3": lambda c: EmergingConv2d(c, kernel_size=3),
    "PeriodicConv2d k=3": lambda c: PeriodicConv2d(c, kernel_size=3),
}
BASELINE = "Invertible1x1Conv (LU)"
TASKS = ("density", "sampling", "training")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per layer and pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--output",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "mixing_layers.json"
        ),
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for channels, size in SHAPES:
        x = torch.randn(BATCH, channels, size, size, device=args.device)
        x_grad = x.clone().requires_grad_()
        layers = {name: make(channels).to(args.device).eval() for name, make in LAYERS.items()}
        trained = {name: make(channels).to(args.device).train() for name, make in LAYERS.items()}
        tasks = {
            name: {
                "density": no_grad(layer.inverse, x),
                "sampling": no_grad(layer, x),
                "training": density_backward(trained[name], x_grad),
            }
            for name, layer in layers.items()
        }
        seconds = {name: {task: [] for task in tasks[name]} for name in layers}
        for _ in range(args.rounds):
            for name in layers:
                for task, run in tasks[name].items():
                    seconds[name][task].append(timed(run, min_time=args.min_time).median)
        for name in layers:
            row = {"shape": f"{BATCH}x{channels}x{size}x{size}", "layer": name}
            for task, values in seconds[name].items():
                base = seconds[BASELINE][task]
                row[f"{task} ms"] = 1e3 * statistics.median(values)
                row[f"{task} ratio"] = statistics.median(v / b for v, b in zip(values, base))
            rows.append(row)

    print_table(
        rows, ["shape", "layer"] + [f"{task} {unit}" for task in TASKS for unit in ("ms", "ratio")]
    )
    write_json(
        args.output,
        rows,
        device=args.device,
        batch=BATCH,
        min_time=args.min_time,
        rounds=args.rounds,
        mode="density, sampling: eval, torch.no_grad(); training: train mode, density "
        "pass + backward to the input and parameters",
    )


def no_grad(fn, x):
    def run():
        with torch.no_grad():
            fn(x)

    return run


def density_backward(layer, x):
    """A training step's share of one layer: density pass, then backward of a loss on its
    output and log-det to the input and the parameters."""

    def run():
        y, log_det = layer.inverse(x)
        (y.square().mean() - log_det.mean()).backward()

    return run


if __name__ == "__main__":
    main()
