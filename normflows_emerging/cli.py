"""Command line: ``python -m normflows_emerging train|evaluate|sample`` (or ``normflows-emerging``).

    normflows-emerging train --dataset digits --mixing emerging --steps 500 --out runs/digits
    normflows-emerging train ... --out runs/digits --steps 1000 --resume
    normflows-emerging evaluate --checkpoint runs/digits/checkpoint.pt
    normflows-emerging sample --checkpoint runs/digits/checkpoint.pt --num 64 --out samples.png

Started with ``torchrun --nproc-per-node N -m normflows_emerging train ...`` the training runs
in N processes with DistributedDataParallel (``--batch-size`` is per process).
"""

import argparse
import ast
import dataclasses
import json
import sys

from . import train as training
from .architectures import build_mixing, mixing_layers
from .data import dataset_names

_DEFAULTS = training.TrainConfig()


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


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
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


def _add_device(parser):
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device to run on (default: cpu)")


def build_parser():
    """The argument parser of the command line.

    Returns:
      argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="normflows-emerging",
        description="Train, evaluate and sample multiscale flows with emerging, periodic and "
                    "QR invertible convolutions.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser("train", help="train a model",
                             description="Train a multiscale (Glow-style) flow. Writes "
                                         "OUT/checkpoint.pt, OUT/metrics.jsonl, OUT/samples.png "
                                         "and prints the last evaluation as a JSON line.")
    tr.add_argument("--dataset", choices=dataset_names(), default=_DEFAULTS.dataset,
                    help=f"dataset (default: {_DEFAULTS.dataset})")
    tr.add_argument("--mixing", choices=mixing_layers(), default=_DEFAULTS.mixing,
                    help=f"invertible mixing layer of each step (default: {_DEFAULTS.mixing})")
    tr.add_argument("--mixing-arg", type=_key_value, action="append", default=[],
                    metavar="NAME=VALUE",
                    help="keyword argument of the mixing layer, e.g. kernel_size=5 "
                         "(repeatable)")
    for flag, kind, helptext in (
        ("--levels", _positive_int, "levels of the multiscale model"),
        ("--flows-per-level", _positive_int, "Glow steps per level"),
        ("--hidden-channels", _positive_int, "hidden channels of the coupling networks"),
        ("--batch-size", _positive_int, "examples per step (per process under torchrun)"),
        ("--steps", _positive_int, "total optimisation steps (with --resume: the new total)"),
        ("--lr", _positive_float, "Adamax learning rate after warm-up"),
        ("--warmup", _non_negative_int, "steps of linear learning-rate warm-up"),
        ("--seed", _non_negative_int, "seed of initialisation, data order, noise, samples"),
        ("--eval-every", _positive_int, "steps between test evaluations and checkpoints"),
        ("--eval-batch-size", _positive_int, "batch size of the evaluations"),
        ("--workers", _non_negative_int, "data-loading worker processes"),
    ):
        dest = flag[2:].replace("-", "_")
        tr.add_argument(flag, type=kind, default=getattr(_DEFAULTS, dest),
                        help=f"{helptext} (default: {getattr(_DEFAULTS, dest)})")
    tr.add_argument("--image-size", type=_positive_int, default=None,
                    help="side length of the images (default: the dataset's)")
    tr.add_argument("--num-classes", type=_positive_int, default=None,
                    help="train a class-conditional model with this many classes")
    tr.add_argument("--data-root", default=None,
                    help="folder of the dataset files (default: data/<dataset>)")
    tr.add_argument("--download", action="store_true",
                    help="let torchvision download cifar10/mnist")
    tr.add_argument("--out", required=True, help="output folder")
    tr.add_argument("--resume", action="store_true",
                    help="continue exactly from OUT/checkpoint.pt (same settings; --steps may "
                         "grow)")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_device(tr)

    ev = commands.add_parser("evaluate", help="evaluate a checkpoint",
                             description="Print one JSON line: bits/dim over the whole split, "
                                         "sampling milliseconds per image, the largest "
                                         "round-trip error on the split's images, parameters "
                                         "and step.")
    ev.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    ev.add_argument("--dataset", choices=dataset_names(), default=None,
                    help="dataset (default: the one it was trained on)")
    ev.add_argument("--split", choices=("train", "test"), default="test",
                    help="split (default: test)")
    ev.add_argument("--data-root", default=None,
                    help="folder of the dataset files (default: the training run's)")
    _add_device(ev)

    sa = commands.add_parser("sample", help="save samples of a checkpoint as a PNG grid")
    sa.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    sa.add_argument("--num", type=_positive_int, default=64, help="number of images (default: 64)")
    sa.add_argument("--temperature", type=_positive_float, default=1.0,
                    help="sampling temperature (default: 1.0)")
    sa.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
    sa.add_argument("--out", required=True, help="output PNG file")
    _add_device(sa)
    return parser


def _train_config(args, parser):
    """TrainConfig from the train arguments; bad mixing arguments are reported by ``parser``."""
    mixing_kwargs = dict(args.mixing_arg)
    try:
        build_mixing(args.mixing, 4, **mixing_kwargs)
    except (TypeError, ValueError) as err:
        parser.error(f"bad --mixing-arg for mixing {args.mixing!r}: {err}")
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return training.TrainConfig(**values, mixing_kwargs=mixing_kwargs)


def main(argv=None):
    """Run the command line.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``)

    Returns:
      exit status 0; errors exit with status 2 and a message
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            config = _train_config(args, parser)
            result = training.train(config, args.out, args.device, args.resume,
                                    progress=not args.no_progress)
            if result is not None:  # None on ranks other than 0
                print(json.dumps(result))
        elif args.command == "evaluate":
            print(json.dumps(training.evaluate_checkpoint(
                args.checkpoint, args.dataset, args.split, args.device, args.data_root)))
        else:
            training.sample_checkpoint(args.checkpoint, args.out, args.num, args.temperature,
                                       args.seed, args.device)
            print(args.out)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
