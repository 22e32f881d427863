"""README.md's code works as written: every ```python block runs, every ```bash flag exists.

The Python blocks run in order in one namespace (a later block may use names an earlier one
defined, as a reader pasting them in order would), in a fresh interpreter whose tracebacks point at
README.md's own line numbers. In the bash blocks, each command of this package's command line
(``normflows-emerging``, ``python -m normflows_emerging``, ``torchrun ... -m normflows_emerging``)
or of a script in this repository (``python examples/compare.py ...``) may only use flags that its
``--help`` lists. The speed tables of README.md are the JSON results in ``benchmarks/results/``,
formatted by :func:`speed_tables` (``python tests/test_readme.py`` prints them for pasting).
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
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
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_BLOCKS = """
import json, sys
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    # Blank lines in front, so that tracebacks give README.md's line numbers.
    exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
"""


def readme_blocks(language):
    """(first line number, code) of every fenced block of ``language`` in README.md."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start(2)) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def cell(value):
    """A table cell: 3 significant digits, thousands separated, empty for a missing value."""
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_tables():
    """{results file name: markdown table of its rows}, plus ``"table5"``: the paper's Table 5
    (ms per sample) beside this project's batch-1 sampling times from ``sampling.json``."""
    tables = {}
    for name, (keep, columns) in SPEED_TABLES.items():
        rows = json.loads((RESULTS / name).read_text())["rows"]
        tables[name] = markdown_table(
            columns, [[row.get(c) for c in columns] for row in rows if keep is None or keep(row)]
        )
    sampling = json.loads((RESULTS / "sampling.json").read_text())
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


def checkout_env():
    """Imports come from this checkout, wherever the interpreter starts."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, MPLBACKEND="Agg")


def test_readme_has_python_and_bash_blocks():
    assert readme_blocks("python") and readme_blocks("bash")


def test_speed_tables_are_the_benchmark_results():
    text = README.read_text()
    stale = [name for name, table in speed_tables().items() if table not in text]
    assert not stale, (
        f"README.md's tables differ from benchmarks/results/ for {stale}: paste "
        "the output of `python tests/test_readme.py`"
    )


def test_markdown_table_cells():
    assert markdown_table(["a", "b"], [[63124.99, None], [0.072051, "x"], [3000, 4.8e-07]]) == (
        "| a | b |\n|---|---|\n| 63,125 |  |\n| 0.0721 | x |\n| 3,000 | 4.8e-07 |"
    )


def test_python_blocks_run(tmp_path):
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(readme_blocks("python")))
    script = tmp_path / "run_blocks.py"
    script.write_text(RUN_BLOCKS)
    done = subprocess.run(
        [sys.executable, str(script), str(blocks)],
        cwd=tmp_path,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]


def shell_commands(block):
    """The simple commands of a bash block, as token lists (comments and ``...`` dropped)."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        command = []
        for token in tokens + ["&&"]:
            if token in ("&&", "||", ";", "|"):
                if command:
                    commands.append(command)
                command = []
            elif token != "...":
                command.append(token)
    return commands


def program_and_flags(command):
    """(``python`` arguments that start this repository's program, its flags), or None.

    ``normflows-emerging train --steps 5`` gives (["-m", "normflows_emerging", "train"],
    ["--steps"]); ``.venv/bin/python examples/compare.py --seeds 0 1`` gives
    (["examples/compare.py"], ["--seeds"]); any other program (pip, pytest, ruff) gives None.
    """
    if command[0].endswith("normflows-emerging"):
        program, rest = ["-m", "normflows_emerging"], command[1:]
    elif "-m" in command and command[command.index("-m") + 1 :][:1] == ["normflows_emerging"]:
        start = command.index("-m") + 2
        program, rest = ["-m", "normflows_emerging"], command[start:]
    elif (
        Path(command[0]).name.startswith("python")
        and len(command) > 1
        and command[1].endswith(".py")
        and (ROOT / command[1]).is_file()
    ):
        program, rest = [command[1]], command[2:]
    else:
        return None
    if program[0] == "-m" and rest and not rest[0].startswith("-"):
        program, rest = program + [rest[0]], rest[1:]
    return program, [token.split("=")[0] for token in rest if token.startswith("--")]


def test_bash_blocks_use_only_flags_that_exist():
    flags_by_program = {}
    for _, block in readme_blocks("bash"):
        for command in shell_commands(block):
            found = program_and_flags(command)
            if found is not None:
                program, flags = found
                flags_by_program.setdefault(tuple(program), set()).update(flags)
    assert ("-m", "normflows_emerging", "train") in flags_by_program  # the parsing found them
    unknown = []
    for program, flags in flags_by_program.items():
        done = subprocess.run(
            [sys.executable, *program, "--help"],
            cwd=ROOT,
            env=checkout_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{' '.join(program)} --help: {done.stderr[-2000:]}"
        unknown += [
            f"{' '.join(program)} {flag}"
            for flag in sorted(flags)
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout)
        ]
    assert not unknown, f"README.md uses flags the programs do not have: {unknown}"


def test_command_parsing_finds_programs_and_flags():
    """The helpers above on the README's kinds of command lines (so a README test cannot pass
    by finding nothing)."""
    block = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && '
        ".venv/bin/python examples/compare.py --seeds 0 1\n"
        "normflows-emerging train --dataset digits \\\n    --steps 5  # a comment --no\n"
        "torchrun --nproc-per-node 2 -m normflows_emerging train ... --lr=1e-3\n"
    )
    found = [program_and_flags(command) for command in shell_commands(block)]
    assert found == [
        None,
        None,
        (["examples/compare.py"], ["--seeds"]),
        (["-m", "normflows_emerging", "train"], ["--dataset", "--steps"]),
        (["-m", "normflows_emerging", "train"], ["--lr"]),
    ]


if __name__ == "__main__":
    for name, table in speed_tables().items():
        print(f"{name}:\n{table}\n")
