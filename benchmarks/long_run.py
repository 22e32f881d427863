"""Long float32 training runs stay healthy (issue 10.5): finite parameters, exact round trip.

Trains one small multiscale model per mixing layer on ``digits`` for thousands of steps (the
usual training command, float32, CPU) and reports, per mixing: final test bits/dim, whether
every parameter is finite, the largest round-trip error data -> latents -> data on test images
(data units; :data:`normflows_emerging.diagnostics.INVERSE_ERROR_THRESHOLD` is 1e-3), the worst
flow, the round-trip error over the run (``metrics.jsonl``) and skipped steps. The free-W ``1x1``
layer is included as the paper's example of a layer that can become singular.

    python benchmarks/long_run.py --steps 3000 --out runs/long_run

Writes ``benchmarks/results/long_run.json`` (not a test: minutes of CPU time).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.config import TrainConfig, load_datasets
from normflows_emerging.app.evaluation import probe_batch
from normflows_emerging.app.run_folder import METRICS
from normflows_emerging.app.train import train
from normflows_emerging.diagnostics import INVERSE_ERROR_THRESHOLD, inverse_error
from timing import print_table, write_json

MIXINGS = ("qr", "emerging", "periodic", "1x1")


def long_run(mixing, steps, out, probe_images=256):
    """Train one mixing for ``steps`` steps and check the result (see the module docstring)."""
    config = TrainConfig(
        dataset="digits",
        mixing=mixing,
        levels=1,
        flows_per_level=2,
        hidden_channels=16,
        batch_size=32,
        steps=steps,
        lr=1e-3,
        warmup=100,
        eval_every=max(1, steps // 10),
        eval_batch_size=512,
    )
    last = train(config, out, progress=False, overwrite=True)
    model, _ = load_checkpoint(Path(out) / CHECKPOINT)
    _, test_set = load_datasets(config)
    errors = inverse_error(model, probe_batch(test_set, probe_images, config.seed))
    history = [
        json.loads(line)["inverse_error"] for line in (Path(out) / METRICS).read_text().splitlines()
    ]
    return {
        "mixing": mixing,
        "steps": steps,
        "test_bpd": last["test_bpd"],
        "finite_parameters": all(torch.isfinite(p).all().item() for p in model.parameters()),
        "inverse_error": errors["model"],
        "worst_flow": errors["worst_flow"],
        "max_inverse_error_during_run": max(history),
        "below_threshold": errors["model"] < INVERSE_ERROR_THRESHOLD
        and not math.isnan(errors["model"]),
        "skipped_steps": last["skipped"],
        "train_seconds": last["seconds"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per run (default 3000)")
    parser.add_argument("--mixings", nargs="+", default=list(MIXINGS), choices=MIXINGS)
    parser.add_argument("--out", default="runs/long_run", help="folder of the runs")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "long_run.json"))
    args = parser.parse_args(argv)
    rows = [long_run(m, args.steps, Path(args.out) / m) for m in args.mixings]
    print_table(
        rows,
        [
            "mixing",
            "steps",
            "test_bpd",
            "finite_parameters",
            "inverse_error",
            "max_inverse_error_during_run",
            "worst_flow",
            "skipped_steps",
            "train_seconds",
        ],
    )
    write_json(
        args.json,
        rows,
        command=" ".join(["python", "benchmarks/long_run.py", *(argv or sys.argv[1:])]),
    )


if __name__ == "__main__":
    main()
