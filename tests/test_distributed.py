"""DistributedDataParallel training with two CPU processes (gloo) started by torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from normflows_emerging.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--dataset",
    "digits",
    "--levels",
    "2",
    "--flows-per-level",
    "1",
    "--hidden-channels",
    "8",
    "--steps",
    "3",
    "--eval-every",
    "2",
    "--warmup",
    "0",
    "--lr",
    "1e-2",
    "--no-progress",
]


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "normflows_emerging",
        "train",
        *ARGS,
        "--batch-size",
        "8",
        "--out",
        str(ddp_out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # only rank 0 reports

    # Each of the two processes reads half of every global batch of 16: the same data and
    # dequantisation noise as one process with batch size 16.
    assert main(["train", *ARGS, "--batch-size", "16", "--out", str(single_out)]) == 0

    metrics = (ddp_out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2, 3]  # written once, by rank 0
    ddp = torch.load(ddp_out / "checkpoint.pt", weights_only=False)
    single = torch.load(single_out / "checkpoint.pt", weights_only=False)
    assert ddp["step"] == single["step"] == 3
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)

    # Without synchronised gradients rank 0 would have trained on its half of each batch only.
    half_out = tmp_path / "half"
    assert main(["train", *ARGS, "--batch-size", "8", "--out", str(half_out)]) == 0
    half = torch.load(half_out / "checkpoint.pt", weights_only=False)
    gap = max(
        (half["model"][k] - v).abs().max().item()
        for k, v in ddp["model"].items()
        if v.is_floating_point()
    )
    assert gap > 1e-3
