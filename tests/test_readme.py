"""README.md's code works as written, its numbers are a results file's, and it stays short.

Every ```python block runs, in order in one namespace (a later block may use names an earlier one
defined, as a reader pasting them in order would), in a fresh interpreter whose tracebacks point at
README.md's own line numbers. In the bash blocks, each command of this package's command line
(``normflows-emerging``, ``python -m normflows_emerging``, ``torchrun ... -m normflows_emerging``)
or of a script in this repository (``python examples/compare.py ...``) may only use flags that its
``--help`` lists. The headline comparison is ``benchmarks/results/compare.json`` formatted by
``benchmarks/tables.py`` (``python benchmarks/tables.py`` prints it for pasting). The README is at
most 8 KB and holds no dates: the rest lives in the docs.
"""

import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

MAX_README_BYTES = 8 * 1024
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_BLOCKS = """
import json, sys
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    # Blank lines in front, so that tracebacks give README.md's line numbers.
    exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
"""


def readme_blocks(language, path=README):
    """(first line number, code) of every fenced block of ``language`` in README.md (or in
    another markdown file)."""
    text = path.read_text()
    return [
        (text.count("\n", 0, match.start(2)) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def checkout_env():
    """Imports come from this checkout, wherever the interpreter starts."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, MPLBACKEND="Agg")


def test_readme_has_python_and_bash_blocks():
    assert readme_blocks("python") and readme_blocks("bash")


def test_headline_comparison_is_the_results_file():
    assert tables.comparison_table() in README.read_text(), (
        "README.md's comparison differs from benchmarks/results/compare.json: paste the output "
        "of `python benchmarks/tables.py`"
    )


def test_readme_is_short_and_undated():
    text = README.read_text()
    assert len(text.encode()) <= MAX_README_BYTES, f"README.md is {len(text.encode())} bytes"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dates belong in CHANGELOG.md"


def test_markdown_table_cells():
    assert tables.markdown_table(
        ["a", "b"], [[63124.99, None], [0.072051, "x"], [3000, 4.8e-07]]
    ) == ("| a | b |\n|---|---|\n| 63,125 |  |\n| 0.0721 | x |\n| 3,000 | 4.80e-07 |")


@pytest.mark.parametrize(
    "value, text",
    [
        (2.9012, "2.90"),
        (2.9213, "2.92"),
        (3.0, "3.00"),
        (123.4, "123"),
        (999.96, "1,000"),
        (16, "16"),
        (5000, "5,000"),
        (True, "True"),
        (0.0, "0.00"),
    ],
)
def test_cells_keep_three_significant_digits(value, text):
    """The long-run table showed 2.9 beside 2.92 (issue 24): a float keeps its trailing zeros."""
    assert tables.cell(value) == text


def test_machine_line_says_what_is_not_recorded(tmp_path, monkeypatch):
    """maf.json's line read "? logical CPUs" (issue 24); a file whose rows record their thread
    count is named by it, not by the writing process's count."""
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    machine = {
        "cpu_model": None,
        "instruction_set": None,
        "logical_cpus": None,
        "torch": "2.14.1",
        "torch_threads": 2,
        "note": "not recorded by this run",
    }
    rows = [{"threads": 1}, {"threads": 1}]
    (tmp_path / "a.json").write_text(json.dumps({"machine": machine, "rows": rows}))
    line = tables.machine_line("a.json")
    assert "?" not in line and "logical CPUs not recorded" in line
    assert "torch 2.14.1 with 1 thread;" in line
    (tmp_path / "b.json").write_text(json.dumps({"machine": machine, "rows": [{"x": 1}]}))
    assert "torch 2.14.1 with 2 threads;" in tables.machine_line("b.json")


def test_every_results_file_records_the_machine():
    """Each results file says on which CPU it was measured (or that this was not recorded)."""
    for path in sorted(tables.RESULTS.glob("*.json")):
        machine = json.loads(path.read_text())["machine"]
        assert {"cpu_model", "instruction_set", "torch_threads"} <= set(machine), path.name
        if machine["cpu_model"] is None or machine["instruction_set"] is None:
            assert "not recorded" in machine["note"], path.name
        assert tables.machine_line(path.name)


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
    """In README.md and the docs' pages."""
    flags_by_program = {}
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    for _, block in [block for page in pages for block in readme_blocks("bash", page)]:
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
    assert not unknown, f"README.md or docs/ use flags the programs do not have: {unknown}"


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


def ci_module(name):
    """A module of ``.ci/`` (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU_TORCH = (
    "python3 -m venv .venv && .venv/bin/pip install torch torchvision "
    "--index-url https://download.pytorch.org/whl/cpu"
)


def test_two_commands_install_what_they_run_with_the_cpu_torch_first():
    """Issue 24: the one command installed the whole CI tool set (6.2 GB with PyPI's CUDA torch)
    for a main job that needs the examples extra; nothing said how to get the CPU-only torch.
    CI runs these blocks as written (.ci/run_readme.py)."""
    main_job, tests = ci_module("run_readme").readme_commands()
    for block in (main_job, tests):
        assert block.splitlines()[0] == CPU_TORCH
    assert main_job.splitlines()[1] == (
        '.venv/bin/pip install -e ".[examples]" && .venv/bin/python examples/compare.py'
    )
    assert tests.splitlines()[1] == '.venv/bin/pip install -e ".[test]" && .venv/bin/pytest -q'
    text = README.read_text()
    section = text[text.index("## Run the main job and the tests") :]
    assert re.search(r"about \d+ minutes on 2 cores", section.split("```bash")[1]), (
        "the README states how long the tests take"
    )


def test_readme_names_the_files_the_main_job_writes():
    """Issue 24: the README called benchmarks/results/compare.json "that command's results
    file"; examples/compare.py writes OUT/results.json (OUT = runs/compare)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import compare
    finally:
        sys.path.remove(str(ROOT / "examples"))
    out = inspect.signature(compare.run).parameters["out"].default
    text = README.read_text()
    for name in ("results.md", "results.json"):
        assert f"{out}/{name}" in text or f"`{name}`" in text
    assert f"{out}/results.json" in text
    assert "that command's results file" not in text


def test_ci_runs_the_readme_and_every_extra_alone():
    """CI runs the README's commands, builds the docs from the docs extra alone and checks every
    other extra in a fresh environment of its own."""
    tomllib = pytest.importorskip("tomllib")
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    check_extras = ci_module("check_extras")
    assert set(check_extras.CHECKS) | set(check_extras.ELSEWHERE) == extras
    assert not set(check_extras.CHECKS) & set(check_extras.ELSEWHERE)
    script = (ROOT / ".ci" / "run").read_text()
    assert "python3 .ci/run_readme.py" in script and ".ci/check_extras.py" in script
    assert 'pip install --quiet -e ".[docs]"' in script and "mkdocs build --strict" in script
