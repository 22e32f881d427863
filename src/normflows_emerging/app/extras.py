"""The optional packages of the application's extras, and a pip command that installs them.

normflows-emerging is not on a package index, so ``pip install "normflows-emerging[train]"``
fails; the packages of an extra, named one by one, install from a clone, an sdist or a wheel
alike. These lists are pyproject.toml's extras (a test keeps them equal).
"""

from __future__ import annotations

import importlib.util

# extra -> its requirements, as pyproject.toml lists them
EXTRAS = {
    # the command line: progress bars, sample grids, and the default dataset (digits)
    "train": ("tqdm", "matplotlib", "scikit-learn"),
    # every dataset's reader
    "data": ("torchvision", "scikit-learn", "scikit-image", "pillow"),
}
# What the command line needs for every command (a dataset's own package is checked when it
# loads, see ``data.optional``); requirement -> module.
COMMAND_LINE_MODULES = {"tqdm": "tqdm", "matplotlib": "matplotlib"}


def install_command(extra: str) -> str:
    """``pip install PACKAGE ...`` for the packages of ``extra`` (a key of :data:`EXTRAS`)."""
    return "pip install " + " ".join(EXTRAS[extra])


def missing_command_line_packages() -> list[str]:
    """The packages the command line needs that cannot be imported here."""
    return [
        package
        for package, module in COMMAND_LINE_MODULES.items()
        if importlib.util.find_spec(module) is None
    ]
