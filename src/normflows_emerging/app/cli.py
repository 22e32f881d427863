"""Command line: ``python -m normflows_emerging train|evaluate|sample`` (or ``normflows-emerging``).

    normflows-emerging train --dataset digits --mixing emerging --steps 500 --out runs/digits
    normflows-emerging train --out runs/digits --steps 1000 --resume
    normflows-emerging train ... --out runs/digits --overwrite
    normflows-emerging evaluate --checkpoint runs/digits
    normflows-emerging sample --checkpoint runs/digits/checkpoint.pt --num 64 --out samples.png
    normflows-emerging --version

``--resume`` continues the run in ``--out`` with the settings of its checkpoint: the flags given
may change only :data:`~normflows_emerging.app.config.RESUMABLE_CHANGES` (``--steps``,
``--eval-every``, ...); a model or data flag given with another value than the checkpoint's is
refused, naming each. ``--checkpoint`` takes the file or the run folder holding it.

Started with ``torchrun --nproc-per-node N -m normflows_emerging train ...`` the training runs
in N processes with DistributedDataParallel (``--batch-size`` is per process).

Errors that are the user's to fix (bad flag values, missing data or optional packages, unusable
checkpoints or run folders) are printed as one line on stderr with exit status 2; any other
exception is a bug and keeps its traceback.
"""

import argparse
import ast
import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch

from .. import __version__
from ..mixing import build_mixing, mixing_layers
from . import extras
from .checkpoint import CHECKPOINT, read_checkpoint
from .commands import MAX_SAMPLE_IMAGES, evaluate_checkpoint, sample_checkpoint
from .config import MAX_BITS, MAX_SEED, RESUMABLE_CHANGES, TrainConfig
from .data import dataset_names
from .errors import IncompatibleResumeError, MissingDependencyError
from .train import train

# Exceptions that are the user's to fix: bad values (the project's ValueErrors, including
# CheckpointError, RunFolderError and IncompatibleResumeError), missing or unreadable files,
# missing optional packages.
USER_ERRORS = (ValueError, OSError, MissingDependencyError)


def _positive_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _int_in(low, high):
    """Argument type: an integer in ``low .. high``."""

    def parse(text):
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer in {low} .. {high}, got {text!r}"
            )
        return value

    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _key_value(text):
    """Parse ``NAME=VALUE``; VALUE is a Python literal (5, 0.5, True, 'qr') or else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def add_config_arguments(parser, defaults=None, exclude=()):
    """Add the flags of the :class:`~normflows_emerging.app.config.TrainConfig` fields to a parser.

    A flag left out leaves no attribute in the parsed namespace (``argparse.SUPPRESS``), so
    :func:`config_from_args` knows which settings were given: a new run takes the others from
    ``defaults``, a resumed one from its checkpoint. The help shows the defaults.

    Args:
      parser: ``argparse.ArgumentParser`` (or argument group)
      defaults: ``TrainConfig`` whose values are the defaults (None: ``TrainConfig()``)
      exclude: field names to leave out (they keep the value in ``defaults``)
    """
    defaults = defaults or TrainConfig()

    def add(flag, helptext, **kwargs):
        dest = flag[2:].replace("-", "_")
        if dest in exclude:
            return
        default = getattr(defaults, dest)
        if default is None:
            default_text = {
                "image_size": "the dataset's",
                "data_root": "data/<dataset>",
                "num_classes": "unconditional",
                "bits": "the dataset's native depth",
            }[dest]
        else:
            default_text = default
        parser.add_argument(
            flag, default=argparse.SUPPRESS, help=f"{helptext} (default: {default_text})", **kwargs
        )

    add("--dataset", "dataset", choices=dataset_names())
    add("--mixing", "invertible mixing layer of each step", choices=mixing_layers())
    add("--levels", "levels of the multiscale model", type=_positive_int)
    add("--flows-per-level", "Glow steps per level", type=_positive_int)
    add("--hidden-channels", "hidden channels of the coupling networks", type=_positive_int)
    add("--image-size", "side length of the images", type=_positive_int)
    add(
        "--bits",
        f"intensity resolution: quantise the images to 2**BITS levels (1 .. {MAX_BITS})",
        type=_int_in(1, MAX_BITS),
    )
    add("--batch-size", "examples per step (per process under torchrun)", type=_positive_int)
    add("--steps", "total optimisation steps (with --resume: the new total)", type=_positive_int)
    add("--lr", "Adamax learning rate after the warm-up", type=_positive_float)
    add("--warmup", "steps of linear learning-rate warm-up", type=_non_negative_int)
    add(
        "--seed",
        "seed of initialisation, data order, noise and samples",
        type=_int_in(0, MAX_SEED),
    )
    add(
        "--num-classes",
        "train a class-conditional model with this many classes",
        type=_positive_int,
    )
    add("--eval-every", "steps between test evaluations and checkpoints", type=_positive_int)
    add("--eval-batch-size", "batch size of the evaluations", type=_positive_int)
    add("--workers", "data-loading worker processes", type=_non_negative_int)
    add("--data-root", "folder of the dataset files")
    if "download" not in exclude:
        parser.add_argument(
            "--download",
            action="store_true",
            default=argparse.SUPPRESS,
            help="let torchvision download cifar10/mnist into the data folder if missing",
        )
    if "mixing_kwargs" not in exclude:
        parser.add_argument(
            "--mixing-arg",
            type=_key_value,
            action="append",
            default=argparse.SUPPRESS,
            metavar="NAME=VALUE",
            help="keyword argument of the mixing layer, e.g. kernel_size=5 "
            f"(repeatable; default: {defaults.mixing_kwargs or 'none'})",
        )


def config_from_args(args, parser, defaults=None, resume_from=None):
    """The ``TrainConfig`` of parsed :func:`add_config_arguments` flags.

    Args:
      args: ``argparse.Namespace``
      parser: the (sub)parser that defined the flags, used to report a bad ``--mixing-arg``
      defaults: the ``TrainConfig`` given to :func:`add_config_arguments`: the settings of a new
        run that no flag gives
      resume_from: checkpoint of the run to continue (``--resume``), or None for a new run. The
        run keeps the checkpoint's settings; the flags given replace those of
        ``RESUMABLE_CHANGES`` and must repeat the others' values

    Returns:
      ``TrainConfig``

    Raises:
      IncompatibleResumeError: naming each flag given with another value than the checkpoint's
        setting that it may not change
      FileNotFoundError, CheckpointError: for a missing or unusable ``resume_from``
    """
    given = given_settings(args, parser)
    if resume_from is not None:
        saved = read_checkpoint(resume_from)["config"]
        changed = [
            name
            for name, value in given.items()
            if name not in RESUMABLE_CHANGES and value != getattr(saved, name)
        ]
        if changed:
            details = ", ".join(
                f"{_flag(name)} {_shown(given[name])} (the checkpoint's: "
                f"{_shown(getattr(saved, name))})"
                for name in changed
            )
            may_change = ", ".join(_flag(name) for name in RESUMABLE_CHANGES)
            raise IncompatibleResumeError(
                f"cannot resume {resume_from} with other settings: {details}; a resumed run "
                f"keeps its checkpoint's settings, so leave these flags out (only {may_change} "
                f"may change), or start afresh with --overwrite"
            )
        return dataclasses.replace(saved, **given)
    values = {**dataclasses.asdict(defaults or TrainConfig()), **given}
    mixings = getattr(args, "mixings", [values["mixing"]])
    for mixing in mixings:
        try:
            build_mixing(mixing, 4, **values["mixing_kwargs"])
        except (TypeError, ValueError) as err:
            parser.error(f"bad --mixing-arg for mixing {mixing!r}: {err}")
    return TrainConfig(**values)


def given_settings(args, parser) -> dict:
    """The ``TrainConfig`` settings that flags gave: {field name: value}.

    Args:
      args: ``argparse.Namespace`` of :func:`add_config_arguments` flags
      parser: the (sub)parser that defined them, used to report a bad ``--mixing-arg``
    """
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "mixing_kwargs" and hasattr(args, f.name)
    }
    if hasattr(args, "mixing_arg"):
        names = [name for name, _ in args.mixing_arg]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            parser.error(f"--mixing-arg {repeated[0]} is given more than once; give it once")
        if "num_channels" in names:
            parser.error(
                "--mixing-arg num_channels cannot be given: the model sets the number of "
                "channels of each mixing layer"
            )
        given["mixing_kwargs"] = dict(args.mixing_arg)
    return given


def _flag(name):
    """The command-line flag of a ``TrainConfig`` field."""
    return "--mixing-arg" if name == "mixing_kwargs" else "--" + name.replace("_", "-")


def _shown(value):
    """A setting's value as a user would type it (a mixing-arg dict as NAME=VALUE pairs)."""
    if isinstance(value, dict):
        return " ".join(f"{key}={item!r}" for key, item in value.items()) or "none"
    return str(value)


def add_device_argument(parser):
    """Add ``--device cpu|cuda`` to a parser."""
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="device to run on (default: cpu)"
    )


# CPU threads of torch and the compiled solve unless --threads says otherwise: the small models
# this command line trains on a CPU run as fast on one thread as on two on an idle machine, and
# many times faster on a busy one (every parallel region waits for a scheduler time slice).
DEFAULT_THREADS = 1


def max_threads():
    """The largest ``--threads`` accepted: 4 times the CPU count (at least 4).

    Far larger counts crash OpenMP (torch.set_num_threads(99999) segfaults, 20000 fails in
    libgomp, 5000 hangs), and more threads than cores only wait on each other.
    """
    return 4 * max(1, os.cpu_count() or 1)


def add_threads_argument(parser):
    """Add ``--threads N`` (CPU threads of torch and the compiled solve, 1 .. 4 x CPUs)."""
    cap = max_threads()
    parser.add_argument(
        "--threads",
        type=_int_in(1, cap),
        default=DEFAULT_THREADS,
        help="CPU threads of torch and the compiled solve, 1 .. 4 x the CPU count = "
        f"{cap}; raise it for large models on an idle machine (default: {DEFAULT_THREADS})",
    )


@contextlib.contextmanager
def threads_set_to(threads):
    """Run a block with ``torch.set_num_threads(threads)`` (the compiled solve follows torch's
    thread count), restoring the previous count after it (for callers in the same process)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for the command line and the examples.

    A user error is one line on stderr, ``PROG: error: MESSAGE (see PROG --help)``, exit code 2
    (argparse prints the whole usage above it), and flags must be spelt out: argparse would take
    any unambiguous prefix, so ``--step 60`` would silently mean ``--steps 60``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    """The argument parser of the command line.

    Returns:
      argparse.ArgumentParser
    """
    parser = CommandLineParser(
        prog="normflows-emerging",
        description="Train, evaluate and sample multiscale flows with emerging, periodic and "
        "QR invertible convolutions.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser(
        "train",
        help="train a model",
        description="Train a multiscale (Glow-style) flow. Writes "
        "OUT/checkpoint.pt, OUT/metrics.jsonl (test bits/dim "
        "and round-trip error at every evaluation), "
        "OUT/samples.png and prints the last evaluation as a "
        "JSON line. A folder that already holds a run needs "
        "--resume or --overwrite. Killed at any moment, the run "
        "resumes exactly from its last checkpoint.",
    )
    add_config_arguments(tr)
    tr.add_argument("--out", required=True, help="output folder")
    existing = tr.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT/checkpoint.pt with its settings; the flags given may "
        "change only " + ", ".join(_flag(name) for name in RESUMABLE_CHANGES),
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files of a previous run in OUT and start afresh "
        "(without this or --resume, a folder holding a run is refused)",
    )
    tr.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress (a bar on a terminal, else a plain line every few steps)",
    )
    add_threads_argument(tr)
    add_device_argument(tr)
    tr.set_defaults(command_parser=tr)

    ev = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint",
        description="Print one JSON line: bits/dim over the whole split, "
        "sampling milliseconds per image (median and "
        "interquartile range over repeated timed draws), the "
        "largest round-trip error on the split's images (with "
        "a warning above 1e-3), the model's degrees of freedom and "
        "stored parameters, and the training step.",
    )
    ev.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint.pt written by train, or the run folder (--out) holding it",
    )
    ev.add_argument(
        "--dataset",
        choices=dataset_names(),
        default=None,
        help="dataset (default: the one it was trained on)",
    )
    ev.add_argument(
        "--split", choices=("train", "test"), default="test", help="split (default: test)"
    )
    ev.add_argument(
        "--data-root",
        default=None,
        help="folder of the dataset files (default: the training run's)",
    )
    ev.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download cifar10/mnist into the data folder if missing",
    )
    add_threads_argument(ev)
    add_device_argument(ev)
    ev.set_defaults(command_parser=ev)

    sa = commands.add_parser(
        "sample",
        help="save samples of a checkpoint as a PNG grid",
        description="Draw seeded samples of a checkpoint at a temperature "
        "and save them as one PNG grid; prints the file name.",
    )
    sa.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint.pt written by train, or the run folder (--out) holding it",
    )
    sa.add_argument(
        "--num",
        type=_int_in(1, MAX_SAMPLE_IMAGES),
        default=64,
        help=f"number of images, 1 .. {MAX_SAMPLE_IMAGES} (default: 64)",
    )
    sa.add_argument(
        "--temperature",
        type=_positive_float,
        default=1.0,
        help="sampling temperature (default: 1.0)",
    )
    sa.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="seed (default: 0)")
    sa.add_argument("--out", required=True, help="output file, ending in .png")
    add_threads_argument(sa)
    add_device_argument(sa)
    sa.set_defaults(command_parser=sa)
    return parser


def main(argv=None):
    """Run the command line.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``)

    Returns:
      exit status 0; errors exit with status 2 and a message
    """
    args = build_parser().parse_args(argv)  # --help and --version need no extra
    parser = args.command_parser
    missing = extras.missing_command_line_packages()
    if missing:
        parser.exit(
            2,
            f"{parser.prog}: error: this command needs {' and '.join(missing)} (the train "
            f"extra), which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{extras.install_command('train')}\n",
        )
    try:
        with threads_set_to(args.threads):
            _run(args, parser)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        parser.exit(
            2,
            f"{parser.prog}: error: not enough memory for these settings ({type(err).__name__}); "
            f"try a smaller --batch-size, model or --num-classes\n",
        )
    return 0


def _out_of_memory(err):
    """Whether ``err`` is an allocation failure: torch's (CUDA or CPU, whose allocator raises a
    plain RuntimeError) or Python's."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        "can't allocate memory" in str(err)
    )


def _run(args, parser):
    """Carry out the parsed command."""
    if args.command == "train":
        resume_from = Path(args.out) / CHECKPOINT if args.resume else None
        config = config_from_args(args, parser, resume_from=resume_from)
        result = train(
            config,
            args.out,
            args.device,
            args.resume,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
        if result is not None:  # None on ranks other than 0
            print(json.dumps(result))
    elif args.command == "evaluate":
        print(
            json.dumps(
                evaluate_checkpoint(
                    args.checkpoint,
                    args.dataset,
                    args.split,
                    args.device,
                    args.data_root,
                    download=args.download,
                )
            )
        )
    else:
        sample_checkpoint(
            args.checkpoint, args.out, args.num, args.temperature, args.seed, args.device
        )
        print(args.out)


if __name__ == "__main__":
    sys.exit(main())
