"""Train a multiscale flow with emerging convolutions, then time sampling with each solve backend.

Emerging convolutions replace Glow's 1x1 convolutions with k x k invertible convolutions made of
two autoregressive convolutions; sampling solves them, with the compiled (Cython), torch
wavefront or naive backend. This trains the model (same training as
``python -m normflows_emerging train``), evaluates it and prints one JSON line with the test
bits/dim, the round-trip error and the sampling milliseconds per image of every backend
(``--no-naive-timing`` leaves out the slow element-by-element solve). The output folder has
checkpoint.pt, metrics.jsonl and samples.png. The defaults take about a minute on one CPU thread:

    python examples/emerging.py
    python examples/emerging.py --mixing-arg kernel_size=5 --no-naive-timing

Paper-size (the paper's Table 3 architecture on CIFAR-10) on a GPU:

    python examples/emerging.py --dataset cifar10 --download --levels 3 --flows-per-level 32 \\
        --hidden-channels 512 --steps 500000 --eval-every 10000 --device cuda
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from example_cli import example_parser, parse_config, run_example
from normflows_emerging import BACKENDS, solve_autoregressive
from normflows_emerging.app import evaluation
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.commands import evaluate_checkpoint
from normflows_emerging.app.config import TrainConfig

DEFAULTS = TrainConfig(
    dataset="hubble",
    image_size=16,
    mixing="emerging",
    levels=2,
    flows_per_level=4,
    hidden_channels=32,
    batch_size=32,
    steps=500,
    warmup=50,
    eval_every=100,
)


def main(argv=None):
    """Train, evaluate and time the sampling backends."""
    parser = example_parser(__doc__, DEFAULTS, "runs/emerging", exclude=("mixing",))
    parser.add_argument(
        "--naive-timing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the naive element-by-element solve, the slowest by far (default: True)",
    )
    args, config = parse_config(parser, DEFAULTS, argv)

    training.train(
        config,
        args.out,
        args.device,
        args.resume,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    checkpoint = Path(args.out) / CHECKPOINT
    result = evaluate_checkpoint(checkpoint, device=args.device)
    model, _ = load_checkpoint(checkpoint, args.device)
    for backend in BACKENDS:
        if backend == "naive" and not args.naive_timing:
            continue
        reason = why_not_here(backend, args.device)
        if reason is not None:
            print(f"{backend} backend not timed: {reason}", file=sys.stderr)
            continue
        result[f"sample_ms_per_image_{backend}"] = evaluation.sample_ms_per_image(
            model, device=args.device, backend=backend, seed=config.seed
        )
    print(json.dumps(result))


def why_not_here(backend, device):
    """None if the solve ``backend`` runs on ``device`` (it solves a 1 x 1 x 2 x 2 problem),
    else its one-line reason (the compiled solve takes CPU tensors only, triton CUDA ones)."""
    y = torch.ones(1, 1, 2, 2, device=device)
    kernel = torch.ones(1, 1, 1, 1, device=device)
    try:
        solve_autoregressive(y, kernel, backend=backend)
    except (RuntimeError, ValueError, TypeError) as err:
        return " ".join(str(err).split())
    return None


if __name__ == "__main__":
    sys.exit(run_example(main))
