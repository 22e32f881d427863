"""The training application: command line, datasets, checkpoints, run folders, evaluation.

Installed with the ``train`` extra (``pip install ".[train]"`` from a clone, or its packages by
name: ``pip install tqdm matplotlib scikit-learn``; see :mod:`.extras`). The library
(:mod:`normflows_emerging`) never imports this package. ``main`` is the ``normflows-emerging``
console script and ``python -m normflows_emerging``.
"""


def main(argv=None) -> int:
    """Run the command line (see :func:`.cli.main`).

    ``--help`` and ``--version`` work without the ``train`` extra; a command run without it
    says in one line what to install.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``)

    Returns:
      the exit status (2 for the user's errors, printed as one line on stderr)
    """
    from .cli import main as cli_main

    return cli_main(argv)
