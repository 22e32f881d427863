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
      MissingDependencyError: when the module cannot be imported
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{needed_by} needs {package}, which is not installed: pip install {package} "
            f"(or, for every dataset: {install_command('data')})"
        ) from err
