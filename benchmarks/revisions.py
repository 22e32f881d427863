"""The speed bars against another revision: this tree and ``--base`` timed in one process.

A change that must not slow the models down (say, making the layers safe for concurrent callers)
is checked here. Both revisions' packages are imported side by side in one process: the base is
exported with ``git archive`` into a temporary folder under another package name, using this
tree's compiled extension (the script refuses a base whose ``ext/`` differs). For each mixing
layer both revisions build the same model (``build_multiscale_flow``, the same seeds), and every
round times, in a rotated order, sampling at batch 1 and at ``--batch`` (eval mode, no gradients,
caches filled by an untimed call) and a training step (log_prob + backward + Adamax step at
``--batch``, on a separate copy), for the two revisions' 1x1 models too. A ratio is a model's
time over its own revision's 1x1 time in the same round; the table gives, per revision, the
median ratio over rounds and its range, and the change of the median ratio.

    python benchmarks/revisions.py --base b0f0cba --threads 1 [--clock cpu] [--rounds 5] ...

writes ``benchmarks/results/<--name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampling import sampler, train_step
from timing import print_table, timed, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MIXINGS = ("1x1", "emerging", "periodic", "qr")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def import_base(revision: str, folder: str):
    """The package of ``revision`` imported as ``normflows_emerging_base`` from ``folder``."""
    if git("diff", revision, "--stat", "--", "ext"):
        raise SystemExit(f"ext/ differs between this tree and {revision}: build both to compare")
    archive = subprocess.run(
        ["git", "archive", revision, "src/normflows_emerging"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    package = os.path.join(folder, "normflows_emerging_base")
    os.rename(os.path.join(folder, "src", "normflows_emerging"), package)
    for directory, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    source = f.read()
                with open(path, "w") as f:
                    f.write(re.sub(r"\bnormflows_emerging\b", "normflows_emerging_base", source))
    import normflows_emerging

    current = os.path.dirname(normflows_emerging.__file__)
    for name in os.listdir(current):
        if name.startswith("_solve") and name.endswith((".so", ".pyd")):
            shutil.copy(os.path.join(current, name), package)
    sys.path.insert(0, folder)
    return importlib.import_module("normflows_emerging_base")


def make_model(package, mixing, shape, args):
    """As ``sampling.py`` builds its models: ActNorms initialised on noise images, parameters
    moved off their initial values by noise of standard deviation 1e-3."""
    torch.manual_seed(0)
    model = package.build_multiscale_flow(shape, args.levels, args.steps, args.hidden, mixing)
    with torch.no_grad():
        model.log_prob(torch.rand(16, *shape), None)
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="Glow steps per level")
    parser.add_argument("--hidden", type=int, default=256, help="coupling hidden channels")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall-clock time, or this thread's CPU time (with --threads 1, on a shared machine)",
    )
    parser.add_argument("--name", default="revisions", help="results file name, without .json")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import normflows_emerging

    shape = (3, args.size, args.size)
    with tempfile.TemporaryDirectory() as folder:
        packages = {"base": import_base(args.base, folder), "this tree": normflows_emerging}
        tasks = {}
        for revision, package in packages.items():
            for mixing in MIXINGS:
                model = make_model(package, mixing, shape, args).eval()
                trained = make_model(package, mixing, shape, args).train()
                tasks[revision, mixing] = {
                    "sample_b1": sampler(model, 1),
                    f"sample_b{args.batch}": sampler(model, args.batch),
                    "train_step": train_step(trained, args.batch, shape, "cpu"),
                }
        seconds = {key: {task: [] for task in runs} for key, runs in tasks.items()}
        keys = list(tasks)
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                for task, run in tasks[key].items():
                    seconds[key][task].append(timed(run, args.min_time, args.clock).median)
    rows = []
    for mixing in MIXINGS[1:]:
        for task in seconds["base", mixing]:
            row = {"mixing": mixing, "task": task}
            for revision in packages:
                base = seconds[revision, "1x1"][task]
                ratios = [t / b for t, b in zip(seconds[revision, mixing][task], base)]
                row[f"{revision} ratio"] = round(statistics.median(ratios), 3)
                row[f"{revision} range"] = f"{min(ratios):.3g}-{max(ratios):.3g}"
            row["change"] = round(row["this tree ratio"] / row["base ratio"] - 1, 3)
            rows.append(row)
    columns = ["mixing", "task", "base ratio", "base range", "this tree ratio"]
    print_table(rows, columns + ["this tree range", "change"])
    write_json(
        os.path.join(RESULTS, f"{args.name}.json"),
        rows,
        what="ratio of each model's time to its own revision's 1x1 model in the same round, "
        "this tree against --base, interleaved in one process (benchmarks/revisions.py)",
        base=args.base,
        this_tree=git("rev-parse", "--short", "HEAD"),
        rounds=args.rounds,
        clock=args.clock,
        model=dict(shape=shape, levels=args.levels, flows_per_level=args.steps, hidden=args.hidden),
        batch=args.batch,
    )


if __name__ == "__main__":
    main()
