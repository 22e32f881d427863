"""Compare mixing layers with the same data, training budget, parameter budget and seeds.

Trains one multiscale model per mixing layer and seed and evaluates each on the held-out test
split. By default every model's coupling width (``--hidden-channels``) is shrunk until it has no
more *degrees of freedom* than the 1x1 baseline (the paper's "correcting for the increase in
parameters": entries a mask or triangle discards and directions that leave a layer unchanged are
not counted, see ``normflows_emerging.parameters``).
For each mixing the table gives the mean ± standard deviation
of the test bits/dim over the seeds and the *paired* difference to 1x1 (a seed fixes the data
order, the dequantisation noise and the initialisation seed, so seed s of every mixing sees the
same batches) with a 95% Student-t interval, and says whether that interval excludes zero.
Writes OUT/results.md (that table), OUT/results.json (settings, per-mixing rows, every run) and
OUT/curves.png (test bits/dim during training, mean over seeds).

The default trains 1x1 and emerging (1 level of 2 steps, 16 hidden channels, 1000 steps) on
scikit-learn's bundled 8x8 digits (17 grey levels) with 5 seeds, a few minutes on one CPU
thread. Its results are in the docs ("Results"), generated from a run of this script:

    python examples/compare.py

Other mixings, or all of them, and the unmatched comparison:

    python examples/compare.py --mixings 1x1 plu qr emerging periodic --seeds 0 1 2
    python examples/compare.py --no-match-budget

The shape of the paper's Table 4 (the gain of emerging over 1x1 grows as the model shrinks):
``--depths`` repeats the comparison at each number of steps per level and writes OUT/depths.md
(gain with its interval against model size) and OUT/depths.png:

    python examples/compare.py --depths 4 2 1 --out runs/table4

Paper-size runs on a GPU, e.g. Table 4 and Table 6 (QR):

    python examples/compare.py --dataset cifar10 --download --levels 3 --hidden-channels 512 \\
        --steps 200000 --eval-every 5000 --depths 8 4 2 --device cuda --out runs/table4
    python examples/compare.py --dataset cifar10 --download --levels 3 --flows-per-level 8 \\
        --hidden-channels 512 --steps 200000 --mixings 1x1 plu qr --device cuda

``periodic_galaxy.py`` and ``maf.py`` are this script with other defaults.
"""

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from example_cli import example_parser, parse_config
from normflows_emerging.app import evaluation
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.commands import evaluate_checkpoint
from normflows_emerging.app.config import TrainConfig, build_model, load_datasets
from normflows_emerging.app.errors import NonFiniteError
from normflows_emerging.app.evaluation import import_torch_benchmark
from normflows_emerging.app.run_folder import METRICS, prepare_run_folder
from normflows_emerging.mixing import mixing_layers
from normflows_emerging.parameters import count_parameters, widest_within_budget
from normflows_emerging.solve import use_backend
from paired_stats import paired_difference

# The CPU model and instruction set recorded in results.json, as in the benchmarks' results.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from machine import machine_info  # noqa: E402

# Small enough that 5 seeds separate 1x1 from emerging (the gain grows as the model shrinks).
DEFAULTS = TrainConfig(
    dataset="digits",
    levels=1,
    flows_per_level=2,
    hidden_channels=16,
    batch_size=64,
    steps=1000,
    warmup=50,
    eval_every=200,
)
MIXINGS = ("1x1", "emerging")
SEEDS = (0, 1, 2, 3, 4)
BASELINE = "1x1"
TIMING_SECONDS = 1.0  # least total time of the timed sampling blocks of each run
# Fields that differ between the runs of one comparison (left out of results.json's "config").
PER_RUN_FIELDS = ("mixing", "seed", "hidden_channels", "flows_per_level")


def matched_widths(config, mixings, input_shape):
    """Coupling width of each mixing so that none has more degrees of freedom than 1x1.

    Args:
      config: ``TrainConfig``; its ``hidden_channels`` is the baseline's (and the largest) width
      mixings: mixing layer names
      input_shape: (channels, height, width) of the data

    Returns:
      dict mixing -> hidden channels

    Raises:
      ValueError: if a mixing exceeds the budget even at width 1
    """

    def build(mixing, width):
        return build_model(
            dataclasses.replace(config, mixing=mixing, hidden_channels=width), input_shape
        )

    budget = count_parameters(build(BASELINE, config.hidden_channels)).degrees_of_freedom
    widths = {}
    for mixing in mixings:
        try:
            widths[mixing] = widest_within_budget(
                lambda w, m=mixing: build(m, w), budget, config.hidden_channels
            )
        except ValueError:
            raise ValueError(
                f"mixing {mixing!r} has more than the {BASELINE} model's "
                f"{budget:,} degrees of freedom even with 1 hidden channel; "
                "use --no-match-budget or more --hidden-channels"
            ) from None
    return widths


def sampling_ms_per_image(model, num_samples, device, seed, backend=None):
    """Milliseconds per image of drawing ``num_samples`` samples, timed by torch.utils.benchmark.

    ``blocked_autorange`` warms up while it sizes its blocks, then times blocks for at least
    ``TIMING_SECONDS``; each block gives one time.

    Returns:
      list of per-image milliseconds, one per timed block
    """
    # imported here, without the "No CUDA runtime is found" warning torch logs at its import
    timer = import_torch_benchmark().Timer(
        stmt="sample(model, num_samples, 1.0, seed, device)",
        globals={
            "sample": evaluation.sample,
            "model": model,
            "num_samples": num_samples,
            "seed": seed,
            "device": device,
        },
        num_threads=torch.get_num_threads(),
    )
    with use_backend(backend) if backend else contextlib.nullcontext():
        measurement = timer.blocked_autorange(min_run_time=TIMING_SECONDS)
    return [1000 * t / num_samples for t in measurement.times]


def train_and_evaluate(
    config, run_dir, device, naive_timing, progress, overwrite=False, num_samples=16, label=None
):
    """Train one run, evaluate it on the test split and time its sampling.

    ``label`` prefixes its progress bar or lines (None: ``"train <mixing>"``).

    Returns:
      dict: mixing, seed, hidden_channels, test_bpd, inverse_error, parameters_total,
      degrees_of_freedom, train_seconds, sample_ms (list, one per timed block; empty, with
      the reason in sampling_error, when the model cannot sample) and with ``naive_timing``
      naive_sample_ms
    """
    # refused here first: the comparison cannot --resume, so the message offers --overwrite only
    prepare_run_folder(run_dir, overwrite=overwrite, remove=False, resumable=False)
    last = training.train(
        config, run_dir, device, progress=progress, overwrite=overwrite, progress_label=label
    )
    checkpoint = run_dir / CHECKPOINT
    result = evaluate_checkpoint(checkpoint, device=device)
    model, _ = load_checkpoint(checkpoint, device)
    count = count_parameters(model)
    record = {
        "mixing": config.mixing,
        "seed": config.seed,
        "hidden_channels": config.hidden_channels,
        "test_bpd": result["test_bpd"],
        "inverse_error": result["inverse_error"],
        "parameters_total": count.total,
        "degrees_of_freedom": count.degrees_of_freedom,
        "train_seconds": last["seconds"],
    }
    backends = {"sample_ms": None, **({"naive_sample_ms": "naive"} if naive_timing else {})}
    for key, backend in backends.items():
        try:
            record[key] = sampling_ms_per_image(model, num_samples, device, config.seed, backend)
        except NonFiniteError as err:  # the model cannot sample; its likelihood still counts
            record[key] = []
            record["sampling_error"] = " ".join(str(err).split())
    return record


def compare_mixings(
    config,
    mixings,
    seeds,
    out,
    device="cpu",
    naive_timing=False,
    progress=True,
    match_budget=True,
    overwrite=False,
    label="",
):
    """Train and evaluate every mixing with every seed.

    Each run's progress is labelled ``<label>run k of N: <mixing>, seed <seed>``.

    Args:
      config: ``TrainConfig`` shared by all runs (its ``mixing`` and ``seed`` are replaced, and
        with ``match_budget`` its ``hidden_channels``)
      mixings: mixing layer names
      seeds: seeds; seed s of every mixing reads the same batches and noise
      out: output folder; each run writes to ``out/<mixing>-seed<seed>``
      device: device to train on
      naive_timing: also time sampling with the naive solve backend
      progress: show progress bars
      match_budget: shrink each mixing's ``hidden_channels`` to the 1x1 model's degrees of
        freedom (see :func:`matched_widths`)
      overwrite: replace earlier runs in ``out`` (otherwise a run folder in the way is refused)
      label: prefix of every run's progress label (e.g. ``"depth 4: "``)

    Returns:
      list of run dicts (see :func:`train_and_evaluate`), mixing-major
    """
    train_set, _ = load_datasets(config)
    input_shape = tuple(train_set[0][0].shape)
    if match_budget:
        widths = matched_widths(config, mixings, input_shape)
    else:
        widths = dict.fromkeys(mixings, config.hidden_channels)
    runs = []
    plan = [(mixing, seed) for mixing in mixings for seed in seeds]
    for number, (mixing, seed) in enumerate(plan, 1):
        run_config = dataclasses.replace(
            config, mixing=mixing, seed=seed, hidden_channels=widths[mixing]
        )
        runs.append(
            train_and_evaluate(
                run_config,
                Path(out) / f"{mixing}-seed{seed}",
                device,
                naive_timing,
                progress,
                overwrite,
                label=f"{label}run {number} of {len(plan)}: {mixing}, seed {seed}",
            )
        )
    return runs


def summarize(runs):
    """One row per mixing: mean ± std of the test bits/dim and the paired difference to 1x1.

    Args:
      runs: list of run dicts from :func:`compare_mixings`

    Returns:
      list of dicts (in the runs' mixing order): mixing, seeds, hidden_channels,
      degrees_of_freedom, parameters_total, test_bpd_mean, test_bpd_std, and, when 1x1 was
      run: difference (mean, low, high of the 95% interval, seeds) and verdict; sample_ms_median
      and sample_ms_iqr (over every timed block of every seed that can sample; None when none
      can) and sample_ms_failed_runs (seeds whose model cannot sample), likewise
      naive_sample_ms_* when timed, train_seconds (mean)
    """
    by_mixing = {}
    for run in runs:
        by_mixing.setdefault(run["mixing"], []).append(run)
    baseline = {run["seed"]: run["test_bpd"] for run in by_mixing.get(BASELINE, [])}
    rows = []
    for mixing, group in by_mixing.items():
        bpds = [run["test_bpd"] for run in group]
        row = {
            "mixing": mixing,
            "seeds": [run["seed"] for run in group],
            "hidden_channels": group[0]["hidden_channels"],
            "degrees_of_freedom": group[0]["degrees_of_freedom"],
            "parameters_total": group[0]["parameters_total"],
            "test_bpd_mean": statistics.fmean(bpds),
            "test_bpd_std": statistics.stdev(bpds) if len(bpds) > 1 else None,
            "train_seconds": statistics.fmean(run["train_seconds"] for run in group),
        }
        if baseline and mixing != BASELINE:
            difference = paired_difference(bpds, [baseline[run["seed"]] for run in group])
            row["difference"] = dataclasses.asdict(difference)
            row["verdict"] = difference.verdict(BASELINE)
        for key in ("sample_ms", "naive_sample_ms"):
            if key in group[0]:
                times = [t for run in group for t in run[key]]
                row[f"{key}_failed_runs"] = sum(not run[key] for run in group)
                if not times:
                    row[f"{key}_median"] = row[f"{key}_iqr"] = None
                    continue
                quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
                row[f"{key}_median"] = statistics.median(times)
                row[f"{key}_iqr"] = quartiles[2] - quartiles[0]
        rows.append(row)
    return rows


def _plural(count, word):
    return f"{count} {word}" + ("" if count == 1 else "s")


def markdown_header(config, seeds, device, match_budget, steps_per_level=None):
    """The lines above the table: what was trained and how to read it.

    ``steps_per_level`` replaces ``config.flows_per_level`` in the text (e.g. ``"8/4/2"``).
    """
    steps_per_level = steps_per_level or config.flows_per_level
    size = f", {config.image_size}x{config.image_size}" if config.image_size else ""
    budget = (
        f"coupling widths shrunk to at most the {BASELINE} model's degrees of freedom "
        "(parameters that change the map)"
        if match_budget
        else "the same coupling width for all (parameters not matched)"
    )
    return (
        f"{config.dataset}{size}: {_plural(config.levels, 'level')} of "
        f"{_plural(steps_per_level, 'step')}, {budget}; "
        f"{_plural(config.steps, 'training step')} of batch {config.batch_size}; "
        f"{_plural(len(seeds), 'seed')} ({' '.join(map(str, seeds))}); {device}.\n"
        f"Δ: paired difference to {BASELINE} over seeds (same seed: same batches and noise), "
        "with its 95% t interval; lower bits/dim is better. Sampling: median (IQR) over "
        "timed blocks of 16 images.\n\n"
    )


def markdown_table(rows):
    """A markdown table of :func:`summarize` rows."""
    naive = any("naive_sample_ms_median" in row for row in rows)
    header = [
        "mixing",
        "hidden",
        "degrees of freedom / parameters stored",
        "test bits/dim",
        f"Δ vs {BASELINE} [95% CI]",
        "verdict",
        "sample ms/image",
    ]
    header += ["naive sample ms/image"] if naive else []
    header += ["train s (wall)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        bpd = f"{row['test_bpd_mean']:.3f}"
        if len(row["seeds"]) > 1:
            bpd += f" ± {row['test_bpd_std']:.3f}"
        difference, verdict = "", row.get("verdict", "baseline")
        if "difference" in row:
            d = row["difference"]
            difference = f"{d['mean']:+.3f}"
            if d["seeds"] > 1:
                difference += f" [{d['low']:+.3f}, {d['high']:+.3f}]"
        cells = [
            row["mixing"],
            str(row["hidden_channels"]),
            f"{row['degrees_of_freedom']:,} / {row['parameters_total']:,}",
            bpd,
            difference,
            verdict,
            _timing_cell(row, "sample_ms"),
        ]
        if naive:
            cells.append(_timing_cell(row, "naive_sample_ms"))
        cells.append(f"{row['train_seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _timing_cell(row, key):
    """``median (IQR)`` of a row's timings, saying how many seeds' models cannot sample."""
    failed = row.get(f"{key}_failed_runs", 0)
    if row[f"{key}_median"] is None:
        return "cannot sample"
    cell = f"{row[f'{key}_median']:.2f} ({row[f'{key}_iqr']:.2f})"
    return cell + (f"; {failed} of {len(row['seeds'])} seeds cannot sample" if failed else "")


LINE_STYLES = [
    ("o", "-"),
    ("s", "--"),
    ("^", ":"),
    ("D", "-."),
    ("v", (0, (5, 1))),
    ("x", (0, (1, 3))),
]


def plot_curves(out, runs, title):
    """OUT/curves.png: test bits/dim against steps, mean over each mixing's seeds.

    Returns:
      the matplotlib Figure (one line per mixing, each with its own marker and line style)
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    mixings = list(dict.fromkeys(run["mixing"] for run in runs))
    for i, mixing in enumerate(mixings):
        curves = {}
        for run in runs:
            if run["mixing"] == mixing:
                path = Path(out) / f"{mixing}-seed{run['seed']}" / METRICS
                for line in path.read_text().splitlines():
                    metrics = json.loads(line)
                    curves.setdefault(metrics["step"], []).append(metrics["test_bpd"])
        steps = sorted(curves)
        marker, style = LINE_STYLES[i % len(LINE_STYLES)]
        ax.plot(
            steps,
            [statistics.fmean(curves[s]) for s in steps],
            marker=marker,
            linestyle=style,
            fillstyle="none",
            label=mixing,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("test bits/dim (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out) / "curves.png", dpi=100)
    return fig


def write_comparison(out, config, mixings, seeds, device, match_budget, runs):
    """Write OUT/results.md, OUT/results.json and OUT/curves.png; return the markdown."""
    rows = summarize(runs)
    text = markdown_header(config, seeds, device, match_budget) + markdown_table(rows)
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in PER_RUN_FIELDS}
    Path(out, "results.md").write_text(text)
    Path(out, "results.json").write_text(
        json.dumps(
            {
                "config": shared,
                "mixings": list(mixings),
                "seeds": list(seeds),
                "flows_per_level": config.flows_per_level,
                "match_budget": match_budget,
                "baseline": BASELINE,
                "device": device,
                "machine": machine_info(),
                "rows": rows,
                "runs": runs,
            },
            indent=2,
            allow_nan=False,
        )
    )
    plot_curves(
        out, runs, f"Test bits/dim during training: {config.dataset}, {_plural(len(seeds), 'seed')}"
    )
    return text


def sweep_depths(
    config,
    depths,
    mixings,
    seeds,
    out,
    device="cpu",
    naive_timing=False,
    progress=True,
    match_budget=True,
    overwrite=False,
):
    """The comparison at each number of steps per level (the shape of the paper's Table 4).

    Each depth gets its own comparison in ``out/depth-<d>`` (see :func:`write_comparison`);
    then OUT/depths.md tabulates the gain of each mixing over 1x1 (1x1 minus the mixing's
    bits/dim, positive: the mixing is better) with its 95% interval against the 1x1 model's
    degrees of freedom, and OUT/depths.png plots it.

    Returns:
      the markdown of OUT/depths.md
    """
    results = []
    for depth in depths:
        depth_config = dataclasses.replace(config, flows_per_level=depth)
        depth_out = Path(out) / f"depth-{depth}"
        runs = compare_mixings(
            depth_config,
            mixings,
            seeds,
            depth_out,
            device,
            naive_timing,
            progress,
            match_budget,
            overwrite,
            label=f"depth {depth} ({len(results) + 1} of {len(depths)}): ",
        )
        write_comparison(depth_out, depth_config, mixings, seeds, device, match_budget, runs)
        results.append((depth, summarize(runs)))
    text = markdown_header(
        config, seeds, device, match_budget, "/".join(map(str, depths))
    ) + depth_table(results)
    Path(out, "depths.md").write_text(text)
    plot_depths(
        out,
        results,
        f"{config.dataset}: gain over {BASELINE} against model size, {_plural(len(seeds), 'seed')}",
    )
    return text


def depth_table(results):
    """Markdown table of (depth, rows) pairs: each mixing's gain over 1x1."""
    header = (
        "| steps per level | mixing | hidden | degrees of freedom | test bits/dim | "
        f"gain over {BASELINE} [95% CI] | verdict |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for depth, rows in results:
        for row in rows:
            gain = ""
            if "difference" in row:
                d = row["difference"]
                gain = f"{-d['mean']:+.3f}"
                if d["seeds"] > 1:
                    gain += f" [{-d['high']:+.3f}, {-d['low']:+.3f}]"
            lines.append(
                f"| {depth} | {row['mixing']} | {row['hidden_channels']} | "
                f"{row['degrees_of_freedom']:,} | {row['test_bpd_mean']:.3f} | {gain} "
                f"| {row.get('verdict', 'baseline')} |"
            )
    return "\n".join(lines) + "\n"


def plot_depths(out, results, title):
    """OUT/depths.png: gain over 1x1 (with its interval) against the 1x1 model's parameters."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    mixings = [row["mixing"] for row in results[0][1] if "difference" in row]
    for i, mixing in enumerate(mixings):
        sizes, gains, errors = [], [], []
        for depth, rows in results:
            by_name = {row["mixing"]: row for row in rows}
            d = by_name[mixing]["difference"]
            sizes.append(by_name[BASELINE]["degrees_of_freedom"])
            gains.append(-d["mean"])
            errors.append(
                [0.0, 0.0] if d["seeds"] < 2 else [d["high"] - d["mean"], d["mean"] - d["low"]]
            )
            ax.annotate(
                f"{depth}/level",
                (sizes[-1], gains[-1]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        marker, style = LINE_STYLES[i % len(LINE_STYLES)]
        ax.errorbar(
            sizes,
            gains,
            yerr=list(zip(*errors)),
            marker=marker,
            linestyle=style,
            capsize=3,
            label=mixing,
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"degrees of freedom of the {BASELINE} model")
    ax.set_ylabel(f"gain over {BASELINE} (bits/dim, 95% CI)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out) / "depths.png", dpi=100)


def _int_at_least(minimum):
    """argparse type: an int of at least ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected an integer of at least {minimum}, got {text!r}"
            )
        return value

    return parse


def build_parser(
    description, defaults, mixings, out, naive_timing=False, match_budget=True, seeds=SEEDS
):
    """Parser of a comparison script: the training flags plus the comparison's own.

    Args:
      description: help text
      defaults: ``TrainConfig`` with the default settings
      mixings: default mixing layers
      out: default output folder
      naive_timing: default of ``--naive-timing``
      match_budget: default of ``--match-budget``
      seeds: default seeds

    Returns:
      argparse.ArgumentParser
    """
    parser = example_parser(description, defaults, out, exclude=("mixing", "seed"), resume=False)
    parser.add_argument(
        "--mixings",
        nargs="+",
        choices=mixing_layers(),
        default=list(mixings),
        help=f"mixing layers to compare (default: {' '.join(mixings)})",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=_int_at_least(0),
        default=list(seeds),
        help=f"seeds; each mixing is trained once per seed (default: {' '.join(map(str, seeds))})",
    )
    parser.add_argument(
        "--match-budget",
        action=argparse.BooleanOptionalAction,
        default=match_budget,
        help=f"shrink each mixing's --hidden-channels to the {BASELINE} model's "
        f"degrees of freedom (default: {match_budget})",
    )
    parser.add_argument(
        "--depths",
        nargs="+",
        type=_int_at_least(1),
        default=None,
        metavar="STEPS",
        help="repeat the comparison with each number of steps per level "
        "(replaces --flows-per-level) and write OUT/depths.md and "
        f"OUT/depths.png: the gain over {BASELINE} against model size",
    )
    parser.add_argument(
        "--naive-timing",
        action=argparse.BooleanOptionalAction,
        default=naive_timing,
        help="also time sampling with the naive solve backend of the "
        f"autoregressive convolutions (default: {naive_timing})",
    )
    return parser


def run(
    argv=None,
    description=__doc__,
    defaults=DEFAULTS,
    mixings=MIXINGS,
    out="runs/compare",
    naive_timing=False,
    match_budget=True,
    seeds=SEEDS,
):
    """Parse the arguments, train and evaluate every mixing and seed, write and print the table.

    Args:
      argv: command-line arguments (None: ``sys.argv[1:]``)
      description, defaults, mixings, out, naive_timing, match_budget, seeds: see
        :func:`build_parser`

    Returns:
      the markdown written to OUT/results.md (with ``--depths``: OUT/depths.md)
    """
    parser = build_parser(description, defaults, mixings, out, naive_timing, match_budget, seeds)
    args, config = parse_config(parser, defaults, argv)
    for flag, values in (("--mixings", args.mixings), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            parser.error(f"{flag} lists a value twice: {' '.join(map(str, values))}")
    if args.depths and BASELINE not in args.mixings:
        parser.error(f"--depths measures the gain over {BASELINE}: add it to --mixings")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        if args.depths:
            text = sweep_depths(
                config,
                args.depths,
                args.mixings,
                args.seeds,
                args.out,
                args.device,
                args.naive_timing,
                not args.no_progress,
                args.match_budget,
                args.overwrite,
            )
        else:
            runs = compare_mixings(
                config,
                args.mixings,
                args.seeds,
                args.out,
                args.device,
                args.naive_timing,
                not args.no_progress,
                args.match_budget,
                args.overwrite,
            )
            text = write_comparison(
                args.out, config, args.mixings, args.seeds, args.device, args.match_budget, runs
            )
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(text)
    out = Path(args.out)
    if args.depths:
        print(
            f"Written: {out / 'depths.md'}, {out / 'depths.png'} and one comparison per depth in "
            f"{out / 'depth-*'}/"
        )
    else:
        print(
            f"Written: {out / 'results.md'} (this table), {out / 'results.json'}, "
            f"{out / 'curves.png'}"
        )
    return text


if __name__ == "__main__":
    run()
