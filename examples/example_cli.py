"""The argument-parser scaffolding the training examples share.

Every example takes the training flags of ``TrainConfig`` (with its own defaults), ``--out``,
``--overwrite``, ``--threads``, ``--no-progress`` and ``--device``; single-model examples also
take ``--resume``. The examples' models are small: one CPU thread trains them as fast as two on
an idle 2-core machine, and many times faster on a busy one (each parallel region waits for a
scheduler time slice there), hence ``--threads 1`` by default.
"""

from __future__ import annotations

import argparse

import torch

from normflows_emerging.app.cli import (
    CommandLineParser,
    add_config_arguments,
    add_device_argument,
    config_from_args,
)
from normflows_emerging.app.config import TrainConfig


def example_parser(
    description: str, defaults: TrainConfig, out: str, exclude: tuple = (), resume: bool = True
) -> argparse.ArgumentParser:
    """Parser with the training flags, ``--out``, ``--overwrite``, ``--resume``, ``--no-progress``
    and ``--device``.

    Args:
      description: help text (the example's module docstring)
      defaults: ``TrainConfig`` whose values are the flags' defaults
      out: default output folder
      exclude: ``TrainConfig`` fields that get no flag (they keep the value in ``defaults``)
      resume: add ``--resume`` (continue from OUT/checkpoint.pt)

    Returns:
      ``argparse.ArgumentParser``; add the example's own flags, then call :func:`parse_config`
    """
    parser = CommandLineParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, defaults, exclude=exclude)
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files of earlier runs in OUT and start afresh "
        "(without it, a folder holding a run is refused)",
    )
    if resume:
        existing.add_argument(
            "--resume", action="store_true", help="continue from OUT/checkpoint.pt"
        )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of torch and the compiled solve (default: 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_device_argument(parser)
    return parser


def parse_config(
    parser: argparse.ArgumentParser, defaults: TrainConfig, argv: list | None = None
) -> tuple[argparse.Namespace, TrainConfig]:
    """Parse the arguments of an :func:`example_parser`.

    Args:
      parser: the parser
      defaults: the ``TrainConfig`` given to :func:`example_parser`
      argv: command-line arguments (None: ``sys.argv[1:]``)

    Returns:
      (parsed arguments, ``TrainConfig``); a bad flag exits with status 2 and a one-line message
    """
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return args, config_from_args(args, parser, defaults)
