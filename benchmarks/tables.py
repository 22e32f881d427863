"""Markdown tables of the results files in ``benchmarks/results`` (the README and the docs).

The README's headline comparison and the docs' speed tables are these tables, generated from the
JSON the benchmark scripts and ``examples/compare.py`` write; ``tests/test_readme.py`` keeps the
README equal to them, and the docs build runs them. ``python benchmarks/tables.py`` prints all.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLING_COLUMNS = [
    "model",
    "sample_b1 ms",
    "sample_b1 ratio",
    "sample_b1 ratio range",
    "sample_b16 ms",
    "sample_b16 ratio",
    "sample_b16 ratio range",
    "train_step ms",
    "train_step ratio",
    "train_step ratio range",
]
# results file: (rows shown: None for all, columns) as each benchmark script names them
SPEED_TABLES = {
    "inverse.json": (
        lambda row: row["threads"] == 1,
        [
            "C",
            "HxW",
            "m",
            "batch",
            "conv_ms",
            "compiled_ms",
            "solve_ms",
            "torch_ms",
            "compiled/conv",
            "solve/conv",
            "torch/conv",
        ],
    ),
    "mixing_layers.json": (
        None,
        [
            "shape",
            "layer",
            "density ms",
            "density ratio",
            "sampling ms",
            "sampling ratio",
            "training ms",
            "training ratio",
        ],
    ),
    "sampling.json": (None, SAMPLING_COLUMNS),
    "sampling_small.json": (None, SAMPLING_COLUMNS),
    "sampling_paper.json": (None, SAMPLING_COLUMNS),
    "long_run.json": (
        None,
        [
            "mixing",
            "steps",
            "test_bpd",
            "finite_parameters",
            "inverse_error",
            "max_inverse_error_during_run",
            "skipped_steps",
            "train_seconds",
        ],
    ),
    "maf.json": (
        None,
        ["what", "backend", "batch", "ms_per_image", "speedup", "params", "max_abs_diff"],
    ),
    "revisions_issue27.json": (
        None,
        [
            "mixing",
            "task",
            "base ratio",
            "base range",
            "this tree ratio",
            "this tree range",
            "change",
        ],
    ),
}
# the paper's Table 5 row (key of paper_ms_per_sample in sampling.json: naive, accelerated) and
# the models of benchmarks/sampling.py that stand for it
PAPER_TABLE5 = [
    ("Glow (1x1)", ("glow", "glow"), ("1x1", "1x1")),
    (
        "Emerging",
        ("emerging_naive", "emerging_accelerated"),
        ("emerging (naive)", "emerging (compiled)"),
    ),
    ("MAF", ("maf_naive", "maf_accelerated"), ("maf (naive)", "maf (fast)")),
]


def load(name: str) -> dict:
    """The results file ``name`` of ``benchmarks/results``."""
    return json.loads((RESULTS / name).read_text())


def cell(value) -> str:
    """A table cell: an int in full, a float to 3 significant digits (trailing zeros kept, so
    2.90 stands beside 2.92), thousands separated, empty for a missing value."""
    if value is None:
        return ""
    if isinstance(value, (bool, str)):
        return str(value)
    text = f"{value:#.3g}"  # "#" keeps trailing zeros (and a point: "123.")
    if isinstance(value, int) or "e+" in text:  # ints, and 999.96 (3 digits: 1.00e+03)
        return f"{value:,.0f}"
    return text.rstrip(".")


def markdown_table(columns: list, rows: list) -> str:
    """A markdown table: a header of ``columns`` and one line per row (a list of values)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_tables() -> dict:
    """{results file name: markdown table of its rows}, plus ``"table5"``: the paper's Table 5
    (ms per sample) beside this project's batch-1 sampling times from ``sampling.json``."""
    tables = {}
    for name, (keep, columns) in SPEED_TABLES.items():
        rows = load(name)["rows"]
        tables[name] = markdown_table(
            columns, [[row.get(c) for c in columns] for row in rows if keep is None or keep(row)]
        )
    sampling = load("sampling.json")
    here = {row["model"]: row["sample_b1 ms"] for row in sampling["rows"]}
    paper = sampling["paper_ms_per_sample"]
    tables["table5"] = markdown_table(
        ["model", "paper naive", "paper accelerated", "here naive", "here accelerated"],
        [
            [model, paper[naive], paper[fast], here.get(ours_naive), here.get(ours_fast)]
            for model, (naive, fast), (ours_naive, ours_fast) in PAPER_TABLE5
        ],
    )
    return tables


def machine_line(name: str) -> str:
    """Where the results of ``name`` were measured: CPU model, instruction set, logical CPUs,
    torch and its threads (the rows' own ``threads`` where they record them, else the thread
    count of the process that wrote the file); what a file does not record is said to be so."""
    results = load(name)
    machine = results["machine"]
    isa = machine.get("instruction_set")
    cpus = machine.get("logical_cpus")
    rows = results.get("rows", [])
    threads = sorted({row["threads"] for row in rows if isinstance(row, dict) and "threads" in row})
    threads = threads or [machine.get("torch_threads")]
    parts = [
        f"CPU: {machine.get('cpu_model') or 'not recorded'}",
        "vector instructions: " + (", ".join(isa) if isa else "not recorded"),
        f"{cpus} logical CPUs" if cpus else "logical CPUs not recorded",
        f"torch {machine.get('torch')} with {' and '.join(map(str, threads))} "
        f"thread{'' if threads == [1] else 's'}",
    ]
    if machine.get("note"):
        parts.append(machine["note"])
    return "; ".join(parts) + "."


def comparison_table(name: str = "compare.json") -> str:
    """The headline comparison of ``examples/compare.py`` (its results.json, saved as
    ``benchmarks/results/compare.json``): test bits/dim per mixing and the paired difference to
    the baseline with its 95% interval. Sampling and training times are left out: they depend on
    the machine (the docs' speed tables measure them properly)."""
    results = load(name)
    baseline = results["baseline"]
    columns = [
        "mixing",
        "degrees of freedom",
        "test bits/dim (mean ± sd)",
        f"Δ vs {baseline} [95% CI]",
        "verdict",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in results["rows"]:
        difference = ""
        if "difference" in row:
            d = row["difference"]
            difference = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        cells = [
            row["mixing"],
            f"{row['degrees_of_freedom']:,}",
            f"{row['test_bpd_mean']:.3f} ± {row['test_bpd_std']:.3f}",
            difference,
            row.get("verdict", "baseline"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_setting(name: str = "compare.json") -> str:
    """One sentence: what the comparison in ``name`` trained."""
    results = load(name)
    config = results["config"]
    budget = (
        f"coupling widths matched to the {results['baseline']} model's degrees of freedom"
        if results["match_budget"]
        else "the same coupling width for all"
    )
    return (
        f"{config['dataset']}, {config['levels']} level(s) of {results['flows_per_level']} "
        f"steps, {config['steps']} training steps of batch {config['batch_size']}, "
        f"{len(results['seeds'])} seeds, {budget}"
    )


if __name__ == "__main__":
    print(f"compare.json:\n{comparison_table()}\n")
    for name, table in speed_tables().items():
        print(f"{name}:\n{table}\n")
