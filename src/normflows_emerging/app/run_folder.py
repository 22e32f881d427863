"""The output folder of a training run: its files, starting afresh, and the metrics file.

A run folder holds ``checkpoint.pt``, ``metrics.jsonl`` (one JSON object per evaluation) and
``samples.png``. Training into a folder that already holds a run needs a decision: continue it
(``resume``) or delete it (``overwrite``); otherwise :func:`prepare_run_folder` refuses, so that
two runs never mix in one metrics file.
"""

import json
from pathlib import Path

from .checkpoint import CHECKPOINT, atomic_write
from .errors import RunFolderError

METRICS = "metrics.jsonl"
SAMPLES = "samples.png"
RUN_FILES = (CHECKPOINT, METRICS, SAMPLES)


def prepare_run_folder(out, resume=False, overwrite=False, remove=True, resumable=True) -> None:
    """Check (and with ``overwrite`` clear) a training output folder before a run starts.

    Args:
      out: output folder (need not exist)
      resume: the run continues the checkpoint in ``out``
      overwrite: delete the files of a previous run in ``out`` (other files are kept)
      remove: this process may delete files (False on all but one process of a parallel run)
      resumable: whether the calling program can continue a run (``--resume``); the refusal
        suggests only the flags it has

    Raises:
      ValueError: if both ``resume`` and ``overwrite`` are asked for
      RunFolderError: if ``out`` is empty or not a folder, or holds a run and neither
        ``resume`` nor ``overwrite`` is given
    """
    if not str(out):
        raise RunFolderError("the output folder name is empty")
    out = Path(out)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resume or overwrite):
        what = "--resume to continue it or --overwrite" if resumable else "--overwrite"
        raise RunFolderError(
            f"{out} already holds a training run ({', '.join(found)}); pass {what} to start afresh"
        )
    if remove:
        for name in found if overwrite else ():
            (out / name).unlink()
        for name in RUN_FILES:  # temporary files of atomic_write left by a killed write
            for stray in out.glob(f".{name}.*.tmp") if out.is_dir() else ():
                stray.unlink()


def append_metrics(out, record) -> None:
    """Append one evaluation's record to ``metrics.jsonl`` as a JSON line."""
    with open(Path(out) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(out, step) -> None:
    """Drop metrics lines after ``step`` (written by a run that stopped before checkpointing).

    A last line cut short by a crash is dropped too; the file is rewritten atomically.

    Raises:
      RunFolderError: naming the file and line, for a line that is not a JSON object with an
        integer ``step``
    """
    path = Path(out) / METRICS
    if not path.is_file():
        return
    kept = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break  # cut short by a crash while appending
            raise RunFolderError(f"{path} line {number + 1} is not JSON") from None
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
            raise RunFolderError(
                f"{path} line {number + 1} is not a metrics record (a JSON "
                f'object with an integer "step")'
            )
        if record["step"] <= step:
            kept.append(line + "\n")
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
