"""Bounded log-scales: diagonals that never round to 0 or overflow, in float32 or float64.

A diagonal ``exp(p)`` of a free parameter ``p`` underflows to 0 in float32 once ``p < -104``:
the layer's log-det stays finite while its inverse divides by zero. Layers here store a free
parameter ``raw`` and use the log-scale ``B * tanh(raw / B)`` (the identity near 0, slope 1 at 0),
so every diagonal lies in ``(exp(-B), exp(B))`` with ``B = LOG_SCALE_BOUND`` = 10, that is about
(4.5e-5, 2.2e4); the log-det is the sum of these log-scales, so it is exactly the log of the
diagonal the layer uses.
"""

import functools

import torch
from torch import nn

LOG_SCALE_BOUND = 10.0


def bounded_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """``B * tanh(raw / B)``, inside (-B, B) for every ``raw``; B = :data:`LOG_SCALE_BOUND`."""
    return LOG_SCALE_BOUND * torch.tanh(raw / LOG_SCALE_BOUND)


def raw_from_log_scale(log_scale: torch.Tensor, name: str) -> torch.Tensor:
    """The free parameter whose bounded log-scale is ``log_scale`` (inverse of the map above).

    Raises:
      ValueError: if some entry is outside (-B, B), which the bounded layers cannot represent
    """
    if not (log_scale.abs() < LOG_SCALE_BOUND).all():
        raise ValueError(
            f"{name} has entries outside (-{LOG_SCALE_BOUND}, {LOG_SCALE_BOUND}); layers with a "
            f"bounded diagonal cannot represent them"
        )
    return LOG_SCALE_BOUND * torch.atanh(log_scale / LOG_SCALE_BOUND)


def accept_unbounded_checkpoints(module: nn.Module, old_name: str, new_name: str) -> None:
    """Let ``module.load_state_dict`` read checkpoints that stored the log-scale as ``old_name``.

    Checkpoints written before the bound stored ``old_name`` = the log of the diagonal itself;
    it is converted to the free parameter ``new_name`` that gives the same diagonal.
    """

    # a partial of a module-level function, not a closure: the module stays picklable
    module.register_load_state_dict_pre_hook(
        functools.partial(_convert_unbounded_entry, old_name, new_name)
    )


def _convert_unbounded_entry(old_name, new_name, module, state_dict, prefix, *args):
    if prefix + old_name in state_dict:
        old = state_dict.pop(prefix + old_name)
        state_dict[prefix + new_name] = raw_from_log_scale(old, prefix + old_name)
