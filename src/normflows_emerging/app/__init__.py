"""The training application: command line, datasets, checkpoints, run folders, evaluation.

Installed with ``pip install "normflows-emerging[train]"`` (it needs tqdm and matplotlib beside
the library's torch, normflows and numpy). The library (:mod:`normflows_emerging`) never imports
this package. ``main`` is the ``normflows-emerging`` console script and ``python -m
normflows_emerging``.
"""

import importlib.util
import sys

TRAIN_EXTRA_MODULES = ("tqdm", "matplotlib")


def missing_train_modules() -> list[str]:
    """The modules of the ``train`` extra that cannot be imported here."""
    return [name for name in TRAIN_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def main(argv=None) -> int:
    """Run the command line; without the ``train`` extra, say what to install in one line.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``)

    Returns:
      the exit status (2 for the user's errors, printed as one line on stderr)
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments == ["--version"]:  # answered without the train extra
        from .. import __version__

        print(f"normflows-emerging {__version__}")
        return 0
    missing = missing_train_modules()
    if missing:
        print(
            f"normflows-emerging: error: the command line needs {', '.join(missing)}: "
            'pip install "normflows-emerging[train]"',
            file=sys.stderr,
        )
        return 2
    from .cli import main as cli_main

    return cli_main(arguments)
