"""Which solve a layer's sampling direction uses: per block of code, or per layer."""

from __future__ import annotations

from ..solve import backend_names, selected_backend


def autoregressive_solvers() -> tuple[str, ...]:
    """Values a layer's ``solver`` takes: ``"auto"`` or a registered backend's name."""
    return ("auto",) + backend_names()


def check_solver(solver: str, choices) -> str:
    """Return ``solver`` if it is one of ``choices``, else raise a ``ValueError`` naming them."""
    if solver not in choices:
        raise ValueError(f"solver must be one of {tuple(choices)}, got {solver!r}")
    return solver


def chosen_backend(solver: str) -> str | None:
    """Backend name for one solve: the one chosen with :func:`normflows_emerging.use_backend`
    around the call, else the layer's ``solver`` unless it is ``"auto"``; None means the default
    of :func:`normflows_emerging.inverse_backend`."""
    selected = selected_backend()
    if selected is not None:
        return selected
    return None if solver == "auto" else solver
