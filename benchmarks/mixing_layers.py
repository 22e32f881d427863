"""Speed of the invertible mixing layers at the CIFAR-10 shapes of the paper's multiscale model.

For each shape (C=12 at 16x16, C=24 at 8x8, C=48 at 4x4; batch 16) and each layer -- QR1x1,
PeriodicConv2d (k=3), EmergingConv2d (k=3) and normflows' Invertible1x1Conv (LU), the usual
baseline -- times the density pass (``inverse``, with log_det) and the sampling pass (``forward``)
under torch.no_grad(), in eval mode, side by side in one run, with torch.utils.benchmark. Each time
is the smallest of ``--rounds`` medians (its interquartile range alongside), the rounds
interleaved over the layers so that load from other processes hits them alike. Prints a table
(milliseconds and ratio to Invertible1x1Conv) and writes benchmarks/results/mixing_layers.json.

    python benchmarks/mixing_layers.py [--device cuda] [--threads 1] [--rounds 3] [--min-time 0.2]
"""

import argparse
import os
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per layer and pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                             "mixing_layers.json"),
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    with torch.no_grad():
        for channels, size in SHAPES:
            x = torch.randn(BATCH, channels, size, size, device=args.device)
            layers = {name: make(channels).to(args.device).eval() for name, make in LAYERS.items()}
            passes = {"density": lambda layer, x=x: layer.inverse(x),
                      "sampling": lambda layer, x=x: layer(x)}
            best = {name: {} for name in layers}
            for _ in range(args.rounds):
                for name, layer in layers.items():
                    for p, run in passes.items():
                        m = timed(lambda: run(layer), min_time=args.min_time)  # noqa: B023
                        if p not in best[name] or m.median < best[name][p].median:
                            best[name][p] = m
            for name, m in best.items():
                base = best[BASELINE]
                rows.append({
                    "shape": f"{BATCH}x{channels}x{size}x{size}",
                    "layer": name,
                    "density ms": 1e3 * m["density"].median,
                    "density iqr ms": 1e3 * m["density"].iqr,
                    "sampling ms": 1e3 * m["sampling"].median,
                    "sampling iqr ms": 1e3 * m["sampling"].iqr,
                    "density ratio": m["density"].median / base["density"].median,
                    "sampling ratio": m["sampling"].median / base["sampling"].median,
                })

    print_table(rows, ["shape", "layer", "density ms", "density iqr ms", "sampling ms",
                       "sampling iqr ms", "density ratio", "sampling ratio"])
    write_json(args.output, rows, device=args.device, batch=BATCH, min_time=args.min_time,
               rounds=args.rounds, mode="eval, torch.no_grad()")


if __name__ == "__main__":
    main()
