"""Glow built from normflows' own GlowBlocks, trained and evaluated with this package.

The baseline of the paper: a normflows multiscale Glow (affine couplings, PLU 1x1 convolutions),
laid out as in normflows' Glow example. ``--swap-mixing`` replaces the 1x1 convolutions of that
same model with another mixing layer (``replace_mixing``), e.g. emerging convolutions, which is
how an existing normflows model adopts them. Prints the evaluation as a JSON line; the output
folder has checkpoint.pt, metrics.jsonl and samples.png, and the checkpoint also works with
``python -m normflows_emerging evaluate|sample``. The defaults take about half a minute on one
CPU thread:

    python examples/glow.py
    python examples/glow.py --swap-mixing emerging --out runs/glow-emerging

Paper-size (the paper's Table 3 architecture on CIFAR-10) on a GPU:

    python examples/glow.py --dataset cifar10 --download --levels 3 --flows-per-level 32 \\
        --hidden-channels 512 --steps 500000 --eval-every 10000 --device cuda
"""

import dataclasses
import json
import sys
from pathlib import Path

import normflows as nf
import torch

from example_cli import example_parser, parse_config, run_example
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import CHECKPOINT
from normflows_emerging.app.commands import evaluate_checkpoint
from normflows_emerging.app.config import TrainConfig, load_datasets
from normflows_emerging.glow import replace_mixing
from normflows_emerging.mixing import mixing_layers
from normflows_emerging.multiscale import build_glow
from normflows_emerging.parameters import count_parameters

DEFAULTS = TrainConfig(
    dataset="hubble",
    image_size=16,
    mixing="plu",
    levels=2,
    flows_per_level=4,
    hidden_channels=32,
    batch_size=32,
    steps=500,
    warmup=50,
    eval_every=100,
)


def normflows_glow(input_shape, levels, flows_per_level, hidden_channels):
    """A multiscale Glow made of ``normflows.flows.GlowBlock``\\ s, as in normflows' example.

    The package's Glow layout (``build_glow``) around normflows' own GlowBlocks.

    Args:
      input_shape: (channels, height, width), sides divisible by 2**levels
      levels: number of levels
      flows_per_level: GlowBlocks per level
      hidden_channels: hidden channels of the coupling networks

    Returns:
      ``normflows_emerging.multiscale.ImageMultiscaleFlow`` (a ``normflows.MultiscaleFlow``)
    """
    return build_glow(
        input_shape,
        levels,
        flows_per_level,
        lambda channels: nf.flows.GlowBlock(channels, hidden_channels),
    )


def main(argv=None):
    """Train the normflows Glow (optionally with swapped mixing layers) and evaluate it."""
    parser = example_parser(
        __doc__, DEFAULTS, "runs/glow", exclude=("mixing", "mixing_kwargs", "num_classes")
    )
    parser.add_argument(
        "--swap-mixing",
        choices=mixing_layers(),
        default=None,
        help="replace the GlowBlocks' 1x1 convolutions with this mixing layer",
    )
    args, config = parse_config(parser, DEFAULTS, argv)
    # the mixing swapped in: the flag's, or on --resume the checkpoint's (its config.mixing)
    swap = args.swap_mixing or (config.mixing if config.mixing != DEFAULTS.mixing else None)
    config = dataclasses.replace(config, mixing=swap or DEFAULTS.mixing)

    train_set, test_set = load_datasets(config)
    torch.manual_seed(config.seed)
    model = normflows_glow(
        tuple(train_set[0][0].shape), config.levels, config.flows_per_level, config.hidden_channels
    )
    if swap:
        replace_mixing(model, swap)
    count = count_parameters(model)
    print(
        f"{count.degrees_of_freedom:,} degrees of freedom ({count.total:,} parameters stored), "
        f"mixing {config.mixing}"
    )
    training.fit(
        model,
        train_set,
        test_set,
        config,
        args.out,
        args.device,
        args.resume,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    result = evaluate_checkpoint(Path(args.out) / CHECKPOINT, device=args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_example(main))
