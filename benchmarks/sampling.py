"""Whole-model speed, the paper's Table 5: per-image sampling and training-step time.

Models come from ``build_multiscale_flow`` (3 levels x 8 steps, 256 hidden channels, 3x32x32 by
default; ``--paper`` for 3 x 32 steps with 512 hidden). Contenders, timed side by side in one run
with torch.utils.benchmark, rounds interleaved, best median of ``--rounds`` kept:

* ``1x1`` (Glow's plain 1x1 convolution, the baseline of every ratio), ``plu``, ``qr``;
* ``emerging`` with each solve (``compiled``, ``torch``; ``naive`` timed once at batch 1);
* ``periodic``; ``maf`` with its fast solve (the naive one only with ``--slow``: minutes).

Columns: milliseconds per image for sampling at batch 1 and at ``--batch`` (eval mode, no
gradients; the first, untimed call fills the eval caches), and per training step (log_prob +
backward + Adamax step at ``--batch``), each with its ratio to ``1x1``. Writes
``benchmarks/results/sampling.json`` and a PNG of batch-1 sampling time against image size
(16, 32, 64) for 1x1, emerging and periodic.

    python benchmarks/sampling.py [--threads 1] [--paper] [--slow] [--device cuda]
"""

import argparse
import os
import sys

import torch
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from normflows_emerging import build_multiscale_flow
from timing import measure, print_table, timed, write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PAPER_MS_PER_SAMPLE = {"glow": 5, "emerging_accelerated": 39, "emerging_naive": 1800,
                       "maf_accelerated": 650, "maf_naive": 3000}
# name: (mixing, solver of its EmergingConv2d / MaskedAffineAutoregressiveConv2d layers)
CONTENDERS = {
    "1x1": ("1x1", None), "plu": ("plu", None), "qr": ("qr", None),
    "emerging (compiled)": ("emerging", "compiled"), "emerging (torch)": ("emerging", "torch"),
    "emerging (naive)": ("emerging", "naive"),
    "periodic": ("periodic", None),
    "maf (fast)": ("maf", "fast"), "maf (naive)": ("maf", "naive"),
}
SLOW = {"emerging (naive)", "maf (naive)"}  # timed once, sampling at batch 1 only


def make_model(mixing, solver, shape, args):
    """A builder model with its parameters moved off their initial values, on ``args.device``."""
    torch.manual_seed(0)
    model = build_multiscale_flow(shape, args.levels, args.steps, args.hidden, mixing=mixing)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    if solver is not None:
        for module in model.modules():
            if hasattr(module, "solver"):
                module.solver = solver
    return model.to(args.device)


def sampler(model, batch):
    def run():
        with torch.no_grad():
            model.sample(batch)
    return run


def train_step(model, batch, shape, device):
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4)
    x = torch.rand(batch, *shape, device=device)

    def run():
        optimizer.zero_grad()
        (-model.log_prob(x, None).mean()).backward()
        optimizer.step()
    return run


def table5(args):
    shape = (3, args.size, args.size)
    names = [n for n in CONTENDERS if n not in SLOW or n == "emerging (naive)" or args.slow]
    models = {n: make_model(*CONTENDERS[n], shape, args) for n in names}
    tasks = {n: {} for n in names}
    for name, model in models.items():
        model.eval()
        tasks[name]["sample_b1"] = sampler(model, 1)
        if name not in SLOW:
            tasks[name][f"sample_b{args.batch}"] = sampler(model, args.batch)
    best = {n: {} for n in names}
    for _ in range(args.rounds):
        for name in names:
            for task, run in tasks[name].items():
                if name in SLOW:
                    if task not in best[name]:
                        best[name][task] = measure(run, warmup=0, max_repeat=1)
                    continue
                seconds = timed(run, args.min_time).median
                best[name][task] = min(best[name].get(task, seconds), seconds)
    for name in names:  # training steps change the parameters, so they come last
        if name not in SLOW:
            model = models[name].train()
            best[name]["train_step"] = timed(train_step(model, args.batch, shape, args.device),
                                             args.min_time).median
    per_call = {"sample_b1": 1, f"sample_b{args.batch}": args.batch, "train_step": 1}
    rows = []
    for name in names:
        row = {"model": name}
        for task, seconds in best[name].items():
            row[f"{task} ms"] = 1e3 * seconds / per_call[task]
            row[f"{task} ratio"] = seconds / best["1x1"][task]
        rows.append(row)
    return rows


def levels_for(size, args):
    """``args.levels``, fewer where the deepest level would be under 4x4 (periodic's k=3 needs
    3x3 images, and a 2x2 level is no image)."""
    return max(1, min(args.levels, (size // 4).bit_length() - 1))


def size_curve(args):
    """Batch-1 sampling ms against image size for 1x1, emerging and periodic."""
    curve = {}
    for name in ("1x1", "emerging (compiled)", "periodic"):
        curve[name] = []
        for size in args.plot_sizes:
            sized = argparse.Namespace(**{**vars(args), "levels": levels_for(size, args)})
            model = make_model(*CONTENDERS[name], (3, size, size), sized).eval()
            curve[name].append(1e3 * timed(sampler(model, 1), args.min_time).median)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for name, values in curve.items():
        axes.plot(args.plot_sizes, values, marker="o", label=name)
    axes.set_xlabel("image side (3 x N x N)")
    axes.set_ylabel("ms per sample, batch 1")
    levels = [levels_for(size, args) for size in args.plot_sizes]
    axes.set_title(f"levels {levels} x {args.steps} steps, {args.hidden} hidden")
    axes.legend()
    figure.tight_layout()
    path = os.path.join(RESULTS, "sampling_vs_size.png")
    os.makedirs(RESULTS, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="Glow steps per level")
    parser.add_argument("--hidden", type=int, default=256, help="coupling hidden channels")
    parser.add_argument("--paper", action="store_true", help="3 levels x 32 steps, 512 hidden")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slow", action="store_true", help="also time MAF's naive solve")
    parser.add_argument("--plot-sizes", type=int, nargs="*", default=[16, 32, 64])
    args = parser.parse_args()
    if args.paper:
        args.levels, args.steps, args.hidden = 3, 32, 512
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = table5(args)
    columns = ["model"] + [f"{t} {u}" for t in ("sample_b1", f"sample_b{args.batch}", "train_step")
                           for u in ("ms", "ratio")]
    print_table(rows, columns)
    curve = size_curve(args) if args.plot_sizes else {}
    write_json(os.path.join(RESULTS, "sampling.json"), rows, device=args.device,
               model={"levels": args.levels, "steps": args.steps, "hidden": args.hidden,
                      "input_shape": [3, args.size, args.size]},
               batch=args.batch, rounds=args.rounds, min_time=args.min_time,
               sampling_ms_vs_size={"sizes": args.plot_sizes,
                                    "levels": [levels_for(s, args) for s in args.plot_sizes],
                                    **curve},
               paper_ms_per_sample=PAPER_MS_PER_SAMPLE)


if __name__ == "__main__":
    main()
