"""The patch files of the normflows series, read without applying them (check, docs).

Library lines are the non-blank lines a patch adds to Python files other than ``*_test.py``
(normflows keeps its unittest files beside the modules); the series may add at most
``LIBRARY_LINE_BUDGET`` of them.
"""

import email
import email.policy
import re
from pathlib import Path

PATCHES = Path(__file__).resolve().parent / "normflows"
LIBRARY_LINE_BUDGET = 700


def is_library(path):
    """Whether ``path`` (in the normflows tree) is library code, not a test."""
    return path.endswith(".py") and not path.endswith("_test.py")


def added_lines(patch_text):
    """{file path: lines the patch adds to it}, from the text of one patch."""
    added = {}
    current = None
    for line in patch_text.splitlines():
        header = re.match(r"diff --git a/(\S+) b/(\S+)$", line)
        if header:
            current = added.setdefault(header.group(2), [])
        elif current is not None and line.startswith("+") and not line.startswith("+++ "):
            current.append(line[1:])
    return added


def read(path):
    """Number, subject and line counts of one patch file."""
    text = Path(path).read_text()
    headers = email.message_from_string(text, policy=email.policy.default)
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", str(headers["Subject"]))
    added = added_lines(text)

    def count(paths):
        return sum(1 for p in paths for line in added[p] if line.strip())

    return {
        "number": Path(path).name[:4],
        "subject": subject,
        "added": added,
        "library_lines": count([p for p in added if is_library(p)]),
        "test_lines": count([p for p in added if p.endswith("_test.py")]),
    }


def series():
    """Every patch of ``upstream/normflows/``, in order."""
    return [read(path) for path in sorted(PATCHES.glob("*.patch"))]


def markdown_table():
    """The series as a markdown table (for the docs), with the total against the budget."""
    rows = series()
    lines = ["| patch | subject | library lines | test lines |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['number']} | {row['subject']} | {row['library_lines']} | {row['test_lines']} |"
        )
    total = sum(row["library_lines"] for row in rows)
    tests = sum(row["test_lines"] for row in rows)
    lines.append(f"| | **total** (budget {LIBRARY_LINE_BUDGET}) | **{total}** | {tests} |")
    return "\n".join(lines)
