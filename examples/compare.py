"""Compare mixing layers with the same data, training budget and seeds (the paper's Tables 2, 4, 6).

Trains one multiscale model per mixing layer and seed, evaluates each checkpoint and writes
OUT/results.md (a markdown table: test bits/dim, parameters, sampling ms per image, training
seconds), OUT/results.json and OUT/curves.png (test bits/dim during training). The defaults
run on scikit-learn's bundled 8x8 digits in a few minutes on a CPU:

    python examples/compare.py

Paper-size runs on a GPU, e.g. Table 4 (1x1 vs emerging as models shrink) and Table 6 (QR):

    python examples/compare.py --dataset cifar10 --download --levels 3 --flows-per-level 8 \\
        --hidden-channels 512 --steps 200000 --eval-every 5000 --mixings 1x1 emerging \\
        --device cuda --out runs/table4-d8
    python examples/compare.py --dataset cifar10 --download --levels 3 --flows-per-level 8 \\
        --hidden-channels 512 --steps 200000 --mixings 1x1 plu qr --device cuda

``periodic_galaxy.py`` and ``maf.py`` are this script with other defaults.
"""

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

from normflows_emerging import evaluation
from normflows_emerging import train as training
from normflows_emerging.architectures import mixing_layers
from normflows_emerging.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.cli import (
    add_config_arguments,
    add_device_argument,
    config_from_args,
)
from normflows_emerging.commands import evaluate_checkpoint
from normflows_emerging.config import TrainConfig
from normflows_emerging.run_folder import METRICS

DEFAULTS = TrainConfig(dataset="digits", levels=1, flows_per_level=4,
                       hidden_channels=32, batch_size=64, steps=800, warmup=50,
                       eval_every=100)
MIXINGS = ("1x1", "plu", "qr", "emerging", "periodic")


def compare_mixings(config, mixings, seeds, out, device="cpu", naive_timing=False,
                    progress=True):
    """Train one model per mixing layer and seed with the same budget and evaluate each.

    Args:
      config: ``TrainConfig`` shared by all runs (its ``mixing`` and ``seed`` are replaced)
      mixings: mixing layer names
      seeds: seeds; results are averaged over them
      out: output folder; each run writes to ``out/<mixing>-seed<seed>``
      device: device to train on
      naive_timing: also time sampling with the naive solve backend
      progress: show progress bars

    Returns:
      list of dicts, one per mixing: mixing, test_bpd, test_bpd_std, parameters,
      sample_ms_per_image (and naive_sample_ms_per_image), train_seconds, runs
    """
    rows = []
    for mixing in mixings:
        runs = []
        for seed in seeds:
            run_config = dataclasses.replace(config, mixing=mixing, seed=seed)
            run_dir = Path(out) / f"{mixing}-seed{seed}"
            last = training.train(run_config, run_dir, device, progress=progress)
            result = evaluate_checkpoint(run_dir / CHECKPOINT, device=device)
            if naive_timing:
                model, _ = load_checkpoint(run_dir / CHECKPOINT, device)
                result["naive_sample_ms_per_image"] = evaluation.sample_ms_per_image(
                    model, device=device, backend="naive", seed=seed)
            result["train_seconds"] = last["seconds"]
            runs.append(result)
        row = {"mixing": mixing, "runs": len(runs)}
        for key in runs[0]:
            row[key] = statistics.fmean(run[key] for run in runs)
        bpds = [run["test_bpd"] for run in runs]
        row["test_bpd_std"] = statistics.stdev(bpds) if len(bpds) > 1 else 0.0
        row["parameters"] = int(row["parameters"])
        rows.append(row)
    return rows


def markdown_table(rows):
    """A markdown table of :func:`compare_mixings` results.

    Args:
      rows: list of dicts from :func:`compare_mixings`

    Returns:
      str
    """
    naive = any("naive_sample_ms_per_image" in row for row in rows)
    header = ["mixing", "test bits/dim", "parameters", "sample ms/image"]
    header += ["naive sample ms/image"] if naive else []
    header += ["train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        bpd = f"{row['test_bpd']:.3f}"
        if row["runs"] > 1:
            bpd += f" ± {row['test_bpd_std']:.3f}"
        cells = [row["mixing"], bpd, f"{row['parameters']:,}", f"{row['sample_ms_per_image']:.2f}"]
        cells += [f"{row['naive_sample_ms_per_image']:.2f}"] if naive else []
        cells += [f"{row['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser(description, defaults, mixings, out, naive_timing=False):
    """Parser of a comparison script.

    Args:
      description: help text
      defaults: ``TrainConfig`` with the default settings
      mixings: default mixing layers
      out: default output folder
      naive_timing: default of ``--naive-timing``

    Returns:
      argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, defaults, exclude=("mixing", "seed"))
    parser.add_argument("--mixings", nargs="+", choices=mixing_layers(), default=list(mixings),
                        help=f"mixing layers to compare (default: {' '.join(mixings)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds; each mixing is trained once per seed (default: 0)")
    parser.add_argument("--naive-timing", action=argparse.BooleanOptionalAction,
                        default=naive_timing,
                        help="also time sampling with the naive solve backend of the "
                             f"autoregressive convolutions (default: {naive_timing})")
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_device_argument(parser)
    return parser


def plot_curves(out, mixings, seed):
    """OUT/curves.png: test bits/dim against steps of each mixing's run with ``seed``."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for mixing in mixings:
        lines = (Path(out) / f"{mixing}-seed{seed}" / METRICS).read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        ax.plot([m["step"] for m in metrics], [m["test_bpd"] for m in metrics], "o-", label=mixing)
    ax.set_xlabel("step")
    ax.set_ylabel("test bits/dim")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out) / "curves.png", dpi=100)


def run(argv=None, description=__doc__, defaults=DEFAULTS, mixings=MIXINGS, out="runs/compare",
        naive_timing=False):
    """Parse the arguments, train and evaluate every mixing, write and print the table.

    Args:
      argv: command-line arguments (None: ``sys.argv[1:]``)
      description, defaults, mixings, out, naive_timing: see :func:`build_parser`

    Returns:
      the markdown table
    """
    parser = build_parser(description, defaults, mixings, out, naive_timing)
    args = parser.parse_args(argv)
    config = config_from_args(args, parser, defaults)
    try:
        rows = compare_mixings(config, args.mixings, args.seeds, args.out, args.device,
                                        args.naive_timing, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    table = markdown_header(config, args) + markdown_table(rows)
    Path(args.out, "results.md").write_text(table)
    Path(args.out, "results.json").write_text(json.dumps(
        {"config": dataclasses.asdict(config), "seeds": args.seeds, "rows": rows}, indent=2))
    plot_curves(args.out, args.mixings, args.seeds[0])
    print(table)
    return table


def markdown_header(config, args):
    """One line saying what was trained, above the table."""
    size = f", {config.image_size}x{config.image_size}" if config.image_size else ""
    return (f"{config.dataset}{size}: {config.levels} levels x {config.flows_per_level} steps, "
            f"{config.hidden_channels} hidden channels, {config.steps} steps of batch "
            f"{config.batch_size}, seeds {' '.join(map(str, args.seeds))}, {args.device}\n\n")


if __name__ == "__main__":
    run()
    sys.exit(0)
