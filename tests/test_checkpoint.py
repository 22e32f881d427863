"""Checkpoints: crash safety under SIGKILL, exact resumption, one-line errors for bad files."""

import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from normflows_emerging.app.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    read_checkpoint,
)
from normflows_emerging.app.cli import main
from normflows_emerging.app.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "train",
    "--dataset",
    "digits",
    "--levels",
    "1",
    "--flows-per-level",
    "1",
    "--hidden-channels",
    "4",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "512",
    "--eval-every",
    "1",
    "--warmup",
    "3",
    "--no-progress",
]
STEPS = 5

# Runs the command line in a subprocess that SIGKILLs itself at a chosen moment:
#   write N: half-way through writing the N-th checkpoint (after flushing the half to disk)
#   evaluate N: during the N-th evaluation (after training step N, before its outputs)
KILLER = """
import io, os, signal, sys
import torch
import normflows_emerging.app.train as train
from normflows_emerging.app.cli import main

mode, n = sys.argv[1], int(sys.argv[2])
real_save, real_evaluate, saves, evaluations = torch.save, train.evaluate_bpd, [], []

def save(obj, f):
    saves.append(None)
    if mode == "write" and len(saves) == n:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f)

def evaluate(*args):
    evaluations.append(None)
    if mode == "evaluate" and len(evaluations) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_evaluate(*args)

torch.save = save
train.evaluate_bpd = evaluate
main(sys.argv[3:])
"""


def environment():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )


def killed_run(tmp_path, out, mode, n):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    done = subprocess.run(
        [sys.executable, str(script), mode, str(n), *RUN, "--steps", str(STEPS), "--out", str(out)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def assert_same_run(a, b):
    """Two run folders hold bit-identical final parameters, optimizer state and metrics."""
    first, second = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (a, b))
    assert first["step"] == second["step"] == STEPS
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    for key, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][key][name]), (key, name)
    assert first["scheduler"] == second["scheduler"]
    metrics = [
        [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (p / "metrics.jsonl").read_text().splitlines()
        ]
        for p in (a, b)
    ]
    assert [m["step"] for m in metrics[1]] == list(range(1, STEPS + 1))
    assert metrics[0] == metrics[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit-identical results need the same number of threads as the subprocesses (sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*RUN, "--steps", str(STEPS), "--out", str(out)]) == 0
    return out


def test_kill_during_a_checkpoint_write_keeps_the_last_one_and_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    killed_run(tmp_path, out, "write", 3)  # the 3rd checkpoint (step 3) is half written
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1  # the half-written file
    assert main([*RUN, "--steps", str(STEPS), "--out", str(out), "--resume"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
        "samples.png",
    ]
    assert_same_run(reference, out)


def test_kill_at_a_random_moment_leaves_a_loadable_checkpoint_and_resume_is_exact(
    tmp_path, reference
):
    out = tmp_path / "run"
    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0, 1.5)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "normflows_emerging",
            *RUN,
            "--steps",
            str(STEPS),
            "--out",
            str(out),
        ],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    step = read_checkpoint(out / "checkpoint.pt")["step"]
    assert 1 <= step <= STEPS, f"seed {seed}"
    if step < STEPS:
        assert main([*RUN, "--steps", str(STEPS), "--out", str(out), "--resume"]) == 0
    assert_same_run(reference, out)


def test_kill_during_an_evaluation_loses_no_metrics_line(tmp_path, reference):
    out = tmp_path / "run"
    killed_run(tmp_path, out, "evaluate", 4)  # step 4 trained, its evaluation cut short
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert main([*RUN, "--steps", str(STEPS), "--out", str(out), "--resume"]) == 0
    assert_same_run(reference, out)


def largest_entry_data_offset(path, header=False):
    """Offset of the stored data (or ``header``) of the largest entry of the zip at ``path``."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.compress_size)
    if header:
        return entry.header_offset
    with open(path, "rb") as file:
        file.seek(entry.header_offset + 26)  # local header: name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    return entry.header_offset + 30 + name_length + extra_length


# Damage to one entry of a checkpoint: name -> (entry, value written into it).
ENTRY_DAMAGE = {
    "model None": ("model", None),
    "model entry None": ("model entry", None),
    "optimizer a list": ("optimizer", []),
    "config None": ("config", None),
    "negative step": ("step", -1),
    "step a float": ("step", 2.5),
    "no bins": ("num_bins", 0),
    "NaN bins": ("num_bins", float("nan")),
    "input shape None": ("input_shape", None),
}


def damaged(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        # Flip bytes inside the largest tensor's stored data, so the archive's directory and
        # headers stay readable and only the CRC check can notice (a fixed offset sometimes hit
        # a header, which fails differently depending on the checkpoint's size).
        start = largest_entry_data_offset(path)
        path.write_bytes(
            data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]
        )
    elif how == "header corrupted":  # the signature of the largest entry's local header
        start = largest_entry_data_offset(path, header=True)
        path.write_bytes(
            data[:start] + bytes(b ^ 0xFF for b in data[start : start + 4]) + data[start + 4 :]
        )
    elif how == "not a checkpoint":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    else:
        checkpoint = torch.load(path, weights_only=True)
        if how == "newer format":
            checkpoint["format_version"] = FORMAT_VERSION + 1
        elif how == "other architecture":
            checkpoint["config"]["mixing"] = "periodic"
        elif how == "plain dict":
            checkpoint = {"weights": torch.zeros(3)}
        elif how in ENTRY_DAMAGE:
            key, value = ENTRY_DAMAGE[how]
            if key == "model entry":
                checkpoint["model"][next(iter(checkpoint["model"]))] = value
            else:
                checkpoint[key] = value
        torch.save(checkpoint, path)


@pytest.mark.parametrize(
    "how, problem",
    [
        ("truncated", "cannot be read as a checkpoint"),
        ("corrupted", "is corrupted: its entry"),
        ("header corrupted", "is corrupted: its entry"),
        ("not a checkpoint", "cannot be read as a checkpoint"),
        ("plain dict", "is not a checkpoint written by normflows_emerging"),
        (
            "newer format",
            (f"format version {FORMAT_VERSION + 1}, newer than the version {FORMAT_VERSION}"),
        ),
        ("other architecture", "does not fit the model built from its settings"),
        *(
            (
                how,
                "is not a checkpoint written by normflows_emerging (damaged?): its "
                + ("model entry" if entry == "model entry" else f"entry {entry!r}"),
            )
            for how, (entry, _) in ENTRY_DAMAGE.items()
        ),
    ],
)
def test_bad_checkpoint_is_one_line_naming_the_file(how, problem, reference, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes((reference / "checkpoint.pt").read_bytes())
    damaged(path, how)
    for command in (
        ["evaluate", "--checkpoint", str(path)],
        ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "s.png")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(command)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert str(path) in err and problem in err, err
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        load_checkpoint(path)


def test_resume_from_a_bad_checkpoint_is_one_line(reference, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((reference / "checkpoint.pt").read_bytes())
    damaged(out / "checkpoint.pt", "truncated")
    with pytest.raises(SystemExit) as exc:
        main([*RUN, "--steps", str(STEPS + 1), "--out", str(out), "--resume"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot be read as a checkpoint" in err
