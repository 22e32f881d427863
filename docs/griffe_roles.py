"""Griffe extension for the API reference: Sphinx roles in docstrings as code.

The docstrings use Google-style sections and a few Sphinx roles (``:func:`solve_autoregressive```,
``:class:`~normflows_emerging.app.config.TrainConfig```) that mkdocstrings does not interpret;
this shows each as inline code of its last dotted part when the role has a ``~``, as Sphinx
does, and of the whole name otherwise.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|ref):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """``:func:`~a.b``` -> ```b```, ``:mod:`a.b``` -> ```a.b```."""
    return ROLE.sub(
        lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text
    )


class SphinxRolesAsCode(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
