"""Run the README's two commands as written: the bash blocks of its section "Run the main job
and the tests", in order, each by a fresh ``bash`` in the repository's root.

A block's lines run one after the other as a reader's shell runs pasted lines: a failing line
(e.g. the CPU-only torch from download.pytorch.org, where that index cannot be reached) does not
stop the next, and the block's exit status is that of its last line. The first block that fails
ends the run with its exit status.

    python3 .ci/run_readme.py [--list]    # --list: print the commands only
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Run the main job and the tests"


def readme_commands(text=None):
    """The bash blocks of the README's section :data:`SECTION`, in order."""
    text = (ROOT / "README.md").read_text() if text is None else text
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def main(argv):
    for number, block in enumerate(readme_commands(), 1):
        print(f"CI: README command {number}:\n{block}", flush=True)
        if "--list" in argv:
            continue
        status = subprocess.run(["bash", "-c", block], cwd=ROOT).returncode
        if status:
            print(f"CI: README command {number} failed with exit status {status}", flush=True)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
