"""Import of the optional packages that some datasets need."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError
from ..extras import install_command


def import_optional(module: str, package: str, needed_by: str) -> ModuleType:
    """Import ``module``, or say in one line which package to install.

    Args:
      module: module to import, e.g. ``"sklearn.datasets"``
      package: the pip package that provides it, e.g. ``"scikit-learn"``
      needed_by: what needs it, for the message, e.g. ``"the digits dataset"``

    Returns:
      the imported module

    Raises:
      MissingDependencyError: when the module cannot be imported: not installed, or installed
        but failing to import (a RuntimeError: e.g. a torchvision built for another torch)
    """
    try:
        return importlib.import_module(module)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise MissingDependencyError(
            f"{needed_by} needs {package}, which is installed but fails to import "
            f"(RuntimeError: {first}); reinstall a {package} built for the torch installed "
            f"here ({_torch_version()})"
        ) from err
    except ImportError as err:
        raise MissingDependencyError(
            f"{needed_by} needs {package}, which is not installed: pip install {package} "
            f"(or, for every dataset: {install_command('data')})"
        ) from err


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__}"
