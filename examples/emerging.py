"""Train a multiscale flow with emerging convolutions, then time sampling with each solve backend.

Emerging convolutions replace Glow's 1x1 convolutions with k x k invertible convolutions made of
two autoregressive convolutions; sampling solves them, with the compiled (Cython), torch
wavefront or naive backend. This trains the model (same training as
``python -m normflows_emerging train``), evaluates it and prints one JSON line with the test
bits/dim, the round-trip error and the sampling milliseconds per image of every backend. The
output folder has checkpoint.pt, metrics.jsonl and samples.png. The defaults took 52 s of CPU
time (user+sys, one thread: ``OMP_NUM_THREADS=1``), i.e. about a minute on a quiet CPU core;
on a 2-core machine shared with other jobs they took 7 minutes of wall time:

    python examples/emerging.py
    python examples/emerging.py --mixing-arg kernel_size=5

Paper-size (the paper's Table 3 architecture on CIFAR-10) on a GPU:

    python examples/emerging.py --dataset cifar10 --download --levels 3 --flows-per-level 32 \\
        --hidden-channels 512 --steps 500000 --eval-every 10000 --device cuda
"""

import json
from pathlib import Path

from example_cli import example_parser, parse_config
from normflows_emerging import BACKENDS
from normflows_emerging.app import evaluation
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.commands import evaluate_checkpoint
from normflows_emerging.app.config import TrainConfig
from normflows_emerging.backends.compiled import compiled_available

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
        if backend == "compiled" and (args.device == "cuda" or not compiled_available()):
            continue  # the compiled solve runs on CPU tensors only
        result[f"sample_ms_per_image_{backend}"] = evaluation.sample_ms_per_image(
            model, device=args.device, backend=backend, seed=config.seed
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
