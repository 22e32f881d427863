"""The normflows patch series (upstream/): what can be checked without the network.

``upstream/check`` (run by CI) applies the series to the sdist and runs normflows' suite; these
tests read the patch files only, and run the check's argument handling.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "upstream"))
import series  # noqa: E402


def test_added_lines_follow_the_file_headers():
    text = (
        "Subject: [PATCH 1/1] x\n\n---\n"
        "diff --git a/normflows/a.py b/normflows/a.py\n--- a/normflows/a.py\n+++ b/normflows/a.py\n"
        "@@ -1 +1,2 @@\n-old\n+new\n+\n"
        "diff --git a/normflows/a_test.py b/normflows/a_test.py\n"
        "+++ b/normflows/a_test.py\n@@ -0,0 +1 @@\n+test\n"
    )
    assert series.added_lines(text) == {
        "normflows/a.py": ["new", ""],
        "normflows/a_test.py": ["test"],
    }


def test_series_in_order_within_budget_and_python37():
    patches = series.series()
    assert [p["number"] for p in patches] == [f"{n:04d}" for n in range(1, len(patches) + 1)]
    assert 0 < sum(p["library_lines"] for p in patches) <= series.LIBRARY_LINE_BUDGET
    new_files = {}
    for patch in patches:
        for path, lines in patch["added"].items():
            assert not any("normflows_emerging" in line for line in lines), path
            new_files.setdefault(path, lines)
    # The modules the series creates parse as Python 3.7 (the check parses every touched file)
    for path in ["normflows/flows/emerging.py", "normflows/flows/periodic_conv.py"]:
        ast.parse("\n".join(new_files[path]), filename=path, feature_version=(3, 7))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--retries", "0"], "--retries must be at least 1"),
        (["--sdist", "no-such.tar.gz"], "no such file"),
        (["--sdist", str(ROOT / "LICENSE")], "is not the normflows 1.7.3 sdist"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_check_usage_errors_are_one_line(arguments, message):
    done = subprocess.run(
        [sys.executable, str(ROOT / "upstream" / "check"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
