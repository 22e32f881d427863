"""Imports of optional packages for tests that need them."""

import pytest

from normflows_emerging.app.data.optional import import_optional
from normflows_emerging.app.errors import MissingDependencyError


def import_or_skip(module, package):
    """``module`` imported, or the test skipped with the reason.

    ``pytest.importorskip`` skips only where the module is missing; a package that is installed
    but fails to import (PyPI's CUDA torchvision beside PyTorch's CPU-only torch raises
    ``RuntimeError: operator torchvision::nms does not exist``) ended the whole collection. Here
    both skip, with the package's own message (:func:`import_optional`).
    """
    try:
        return import_optional(module, package, "this test")
    except MissingDependencyError as err:
        pytest.skip(str(err), allow_module_level=True)
