"""Whole-model speed, the paper's Table 5: per-image sampling and training-step time.

Models come from ``build_multiscale_flow`` (3 levels x 8 steps, 256 hidden channels, 3x32x32 by
default; ``--paper`` for 3 x 32 steps with 512 hidden). Contenders, timed side by side in one run
with torch.utils.benchmark, rounds interleaved, best median of ``--rounds`` kept:

* ``1x1`` (Glow's plain 1x1 convolution, the baseline of every ratio), ``plu``, ``qr``;
* ``emerging`` with each solve (``compiled``, ``torch``; ``naive`` timed once at batch 1);
* ``periodic``; ``maf`` with its fast solve (the naive one only with ``--slow``: minutes).

Each of ``--rounds`` rounds times every contender once per task (torch.utils.benchmark, about
``--min-time`` seconds each), the contenders in a rotated order; a ratio is taken against the 1x1
time of the same round, and the table gives the median over rounds (ms and ratio) and the range
of the ratios, so a load spike in one round shows as spread instead of a wrong ratio. Naive
solves are timed once.

Columns: milliseconds per image for sampling at batch 1 and at ``--batch`` (eval mode, no
gradients; the first, untimed call fills the eval caches), and per training step (log_prob +
backward + Adamax step at ``--batch``, on a separate copy of the model), each with its ratio to
``1x1``. Writes ``benchmarks/results/<--name>.json`` and, unless ``--plot-sizes`` is given
empty, a PNG of batch-1 sampling time against image size (16, 32, 64) for 1x1, emerging and
periodic.

    python benchmarks/sampling.py [--threads 1] [--paper] [--slow] [--device cuda]
    python benchmarks/sampling.py --threads 1 --levels 2 --steps 4 --hidden 32 \
        --name sampling_small --plot-sizes
"""

import argparse
import os
import statistics
import sys

import torch
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from normflows_emerging import build_multiscale_flow
from timing import measure, print_table, timed, write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PAPER_MS_PER_SAMPLE = {
    "glow": 5,
    "emerging_accelerated": 39,
    "emerging_naive": 1800,
    "maf_accelerated": 650,
    "maf_naive": 3000,
}
# name: (mixing, solver of its EmergingConv2d / MaskedAffineAutoregressiveConv2d layers)
CONTENDERS = {
    "1x1": ("1x1", None),
    "plu": ("plu", None),
    "qr": ("qr", None),
    "emerging (compiled)": ("emerging", "compiled"),
    "emerging (torch)": ("emerging", "torch"),
    "emerging (naive)": ("emerging", "naive"),
    "periodic": ("periodic", None),
    "maf (fast)": ("maf", "fast"),
    "maf (naive)": ("maf", "naive"),
}
SLOW = {"emerging (naive)", "maf (naive)"}  # timed once, sampling at batch 1 only


def make_model(mixing, solver, shape, args):
    """A builder model on ``args.device``, its ActNorms initialised by one density pass on
    uniform noise images (as the first training batch would: left to initialise on the first
    sampled latents, a deep model's later samples overflow), then its parameters moved off their
    initial values by noise of standard deviation 1e-3 (with 1e-2 the samples of the paper-size
    emerging model overflowed: 96 steps compound the perturbation)."""
    torch.manual_seed(0)
    model = build_multiscale_flow(shape, args.levels, args.steps, args.hidden, mixing=mixing)
    with torch.no_grad():
        model.log_prob(torch.rand(16, *shape), None)
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
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
    """Rows of the table: per contender and task, the median over ``args.rounds`` rounds of ms
    per image (per step for training) and of the ratio to ``1x1`` measured in the same round,
    with the smallest and largest of those ratios."""
    shape = (3, args.size, args.size)
    names = [
        n
        for n in CONTENDERS
        if n in args.models and (n not in SLOW or args.slow or n == "emerging (naive)")
    ]
    names = ["1x1"] + [n for n in names if n != "1x1"]
    samplers = {n: make_model(*CONTENDERS[n], shape, args).eval() for n in names}
    tasks = {n: {"sample_b1": sampler(samplers[n], 1)} for n in names}
    for name in names:
        if name not in SLOW:
            tasks[name][f"sample_b{args.batch}"] = sampler(samplers[name], args.batch)
            # a separate copy: training changes the parameters, which would refill the eval
            # caches of the sampling model inside a timed call
            trained = make_model(*CONTENDERS[name], shape, args).train()
            tasks[name]["train_step"] = train_step(trained, args.batch, shape, args.device)
    seconds = {n: {task: [] for task in tasks[n]} for n in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        print(f"round {round_index + 1}/{args.rounds}", flush=True)
        for name in order:
            for task, run in tasks[name].items():
                if name in SLOW:
                    if round_index == 0:
                        seconds[name][task].append(measure(run, warmup=0, max_repeat=1))
                    continue
                seconds[name][task].append(timed(run, args.min_time).median)
    per_call = {"sample_b1": 1, f"sample_b{args.batch}": args.batch, "train_step": 1}
    rows = []
    for name in names:
        row = {"model": name}
        for task, values in seconds[name].items():
            base = seconds["1x1"][task]
            ratios = [value / base[i] for i, value in enumerate(values)]
            row[f"{task} ms"] = 1e3 * statistics.median(values) / per_call[task]
            row[f"{task} ratio"] = statistics.median(ratios)
            row[f"{task} ratio range"] = f"{min(ratios):.3g}-{max(ratios):.3g}"
        rows.append(row)
    return rows


def levels_for(size, args):
    """``args.levels``, fewer where the deepest level would be under 4x4 (periodic's k=3 needs
    3x3 images, and a 2x2 level is no image)."""
    return max(1, min(args.levels, (size // 4).bit_length() - 1))


def size_curve(args):
    """Batch-1 sampling ms against image size for 1x1, emerging and periodic (median over
    ``args.rounds`` interleaved rounds)."""
    names = ("1x1", "emerging (compiled)", "periodic")
    runs = {}
    for name in names:
        for size in args.plot_sizes:
            sized = argparse.Namespace(**{**vars(args), "levels": levels_for(size, args)})
            runs[name, size] = sampler(
                make_model(*CONTENDERS[name], (3, size, size), sized).eval(), 1
            )
    seconds = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, run in runs.items():
            seconds[key].append(timed(run, args.min_time).median)
    curve = {
        name: [1e3 * statistics.median(seconds[name, size]) for size in args.plot_sizes]
        for name in names
    }
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
    path = os.path.join(RESULTS, f"{args.name}_vs_size.png")
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slow", action="store_true", help="also time MAF's naive solve")
    parser.add_argument(
        "--plot-sizes",
        type=int,
        nargs="*",
        default=[16, 32, 64],
        help="image sides of the PNG of batch-1 sampling time against size; "
        "the flag with no sides skips the PNG",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(CONTENDERS),
        metavar="NAME",
        default=list(CONTENDERS),
        help=f"contenders to time (1x1 always), of {list(CONTENDERS)}",
    )
    parser.add_argument("--name", default="sampling", help="results file name, without .json")
    args = parser.parse_args()
    if args.paper:
        args.levels, args.steps, args.hidden = 3, 32, 512
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = table5(args)
    columns = ["model"] + [
        f"{t} {u}"
        for t in ("sample_b1", f"sample_b{args.batch}", "train_step")
        for u in ("ms", "ratio", "ratio range")
    ]
    print_table(rows, columns)
    curve = size_curve(args) if args.plot_sizes else {}
    write_json(
        os.path.join(RESULTS, f"{args.name}.json"),
        rows,
        device=args.device,
        model={
            "levels": args.levels,
            "steps": args.steps,
            "hidden": args.hidden,
            "input_shape": [3, args.size, args.size],
        },
        batch=args.batch,
        rounds=args.rounds,
        min_time=args.min_time,
        sampling_ms_vs_size={
            "sizes": args.plot_sizes,
            "levels": [levels_for(s, args) for s in args.plot_sizes],
            **curve,
        },
        paper_ms_per_sample=PAPER_MS_PER_SAMPLE,
    )


if __name__ == "__main__":
    main()
