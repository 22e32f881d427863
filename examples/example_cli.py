"""The argument-parser scaffolding the training examples share.

Every example takes the training flags of ``TrainConfig`` (with its own defaults), ``--out``,
``--overwrite``, ``--threads``, ``--no-progress`` and ``--device``; single-model examples also
take ``--resume``. The examples' models are small: one CPU thread trains them as fast as two on
an idle 2-core machine, and many times faster on a busy one (each parallel region waits for a
scheduler time slice there), hence ``--threads 1`` by default. The user's errors (a refused run
folder, ``--device cuda`` without CUDA, missing data) are one line on stderr with exit status 2,
as on the command line: run an example's ``main`` with :func:`run_example`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from normflows_emerging.app.checkpoint import CHECKPOINT
from normflows_emerging.app.cli import (
    USER_ERRORS,
    CommandLineParser,
    add_config_arguments,
    add_device_argument,
    add_threads_argument,
    config_from_args,
)
from normflows_emerging.app.config import TrainConfig
from normflows_emerging.app.train import check_device


def example_parser(
    description: str, defaults: TrainConfig, out: str, exclude: tuple = (), resume: bool = True
) -> argparse.ArgumentParser:
    """Parser with the training flags, ``--out``, ``--overwrite``, ``--resume``, ``--threads``,
    ``--no-progress`` and ``--device``.

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
            "--resume",
            action="store_true",
            help="continue from OUT/checkpoint.pt with its settings (the training flags given "
            "may change only --steps, --eval-every, --eval-batch-size, --workers, --data-root "
            "and --download)",
        )
    parser.set_defaults(resume=False)
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_device_argument(parser)
    return parser


def parse_config(
    parser: argparse.ArgumentParser, defaults: TrainConfig, argv: list | None = None
) -> tuple[argparse.Namespace, TrainConfig]:
    """Parse the arguments of an :func:`example_parser` and set torch's thread count.

    Args:
      parser: the parser
      defaults: the ``TrainConfig`` given to :func:`example_parser`
      argv: command-line arguments (None: ``sys.argv[1:]``)

    Returns:
      (parsed arguments, ``TrainConfig``: with ``--resume`` the settings of OUT/checkpoint.pt,
      changed by the flags given, see :func:`~normflows_emerging.app.cli.config_from_args`); a
      bad flag, or ``--device cuda`` where CUDA is not available, exits with status 2 and a
      one-line message

    Raises:
      IncompatibleResumeError, FileNotFoundError, CheckpointError: with ``--resume``, for a
        flag that changes a setting of the run or a missing or unusable checkpoint
    """
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except ValueError as err:
        parser.error(f"--device {args.device}: {err}")
    torch.set_num_threads(args.threads)
    resume_from = Path(args.out) / CHECKPOINT if args.resume else None
    return args, config_from_args(args, parser, defaults, resume_from=resume_from)


def run_example(main: Callable, argv: list | None = None) -> int:
    """Run an example's ``main(argv)``; the user's errors become one line on stderr.

    Args:
      main: the example's main function
      argv: command-line arguments (None: ``sys.argv[1:]``)

    Returns:
      0, or 2 after printing ``PROG: error: MESSAGE`` for a refused run folder, missing data, a
      missing optional package or another of the user's errors (a bug keeps its traceback)
    """
    try:
        main(argv)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        return 2
    return 0
