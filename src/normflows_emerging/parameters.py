"""Trainable-parameter counts, total and effective, and width matching to a parameter budget.

Several layers store more numbers than they use: ``QR1x1`` keeps a full ``upper`` matrix of which
only the strict upper triangle enters ``W`` (``upper.triu(1)``), ``SquareAutoregressiveConv2d``
and the MAF layers multiply their weights by a fixed ``mask``, and normflows' LU-parametrised
``Invertible1x1Conv`` reads only ``L.tril(-1)`` and ``U.triu(1)``. The discarded entries get no
gradient and are not degrees of freedom, so comparing models by their total count penalises
those layers. :func:`count_parameters` reports both numbers; the *effective* count is what the
paper's "correcting for the increase in parameters" compares.

Which entries of a module's parameters are free is found, in this order, by

* a rule registered for its class (or a base class) with :func:`register_free_entries`, or
* the mask convention: a module with a ``weight`` parameter and a ``mask`` buffer that the
  forward pass multiplies into it (``weight * mask``) uses the entries where ``mask != 0``;
* otherwise every entry is free.
"""

import dataclasses
from typing import Callable

import normflows as nf
import torch
from torch import nn

from .flows.qr import QR1x1

FreeEntriesRule = Callable[[nn.Module], dict[str, torch.Tensor]]
_RULES: dict[type, FreeEntriesRule] = {}


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters of a model.

    Args:
      total: number of entries of all trainable parameters (each shared tensor once)
      effective: entries the model actually uses (degrees of freedom): ``total`` minus the
        entries that a mask or a triangular part discards
    """

    total: int
    effective: int


def register_free_entries(cls: type, rule: FreeEntriesRule) -> None:
    """Say which parameter entries of a layer class are used.

    Args:
      cls: module class; the rule also applies to its subclasses
      rule: ``rule(module)`` returning ``{parameter name: bool tensor}`` for the module's own
        parameters (``named_parameters(recurse=False)``) that have unused entries; each tensor is
        True where an entry is used and broadcasts to the parameter's shape. Parameters left out
        are fully used.

    Raises:
      TypeError: if ``cls`` is not a class or ``rule`` is not callable
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {type(cls).__name__}")
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {type(rule).__name__}")
    _RULES[cls] = rule


def free_entries(module: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean masks of the used entries of a module's own parameters (see the module docstring).

    Args:
      module: any ``nn.Module``; only its own parameters are considered, not its children's

    Returns:
      ``{parameter name: bool tensor of the parameter's shape}`` for the parameters with unused
      entries; parameters not in the dict are fully used
    """
    for cls in type(module).__mro__:
        if cls in _RULES:
            masks = _RULES[cls](module)
            break
    else:
        masks = _mask_buffer_rule(module)
    params = dict(module.named_parameters(recurse=False))
    return {name: mask.to(torch.bool).expand_as(params[name]) for name, mask in masks.items()}


def _mask_buffer_rule(module: nn.Module) -> dict[str, torch.Tensor]:
    """The mask convention: ``weight`` is used where the ``mask`` buffer is non-zero."""
    buffers = dict(module.named_buffers(recurse=False))
    params = dict(module.named_parameters(recurse=False))
    if "mask" in buffers and "weight" in params:
        return {"weight": buffers["mask"] != 0}
    return {}


def count_parameters(model: nn.Module) -> ParameterCount:
    """Total and effective number of trainable parameters of a model.

    Args:
      model: any ``nn.Module``; parameters with ``requires_grad=False`` are not counted, a
        parameter shared by several modules is counted once

    Returns:
      :class:`ParameterCount`
    """
    seen = set()
    total = effective = 0
    for module in model.modules():
        masks = free_entries(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            total += param.numel()
            effective += int(masks[name].sum()) if name in masks else param.numel()
    return ParameterCount(total, effective)


def widest_within_budget(build: Callable[[int], nn.Module], budget: int, max_width: int) -> int:
    """The largest width whose model has at most ``budget`` effective parameters.

    Binary search over ``1 .. max_width``, assuming the effective count grows with the width
    (true of coupling widths).

    Args:
      build: ``build(width)`` returning a model
      budget: largest allowed effective parameter count
      max_width: largest width to consider

    Returns:
      int in ``1 .. max_width``

    Raises:
      ValueError: if even width 1 exceeds the budget
    """
    if count_parameters(build(1)).effective > budget:
        raise ValueError(f"even width 1 has more than {budget:,} effective parameters")
    low, high = 1, max_width  # low fits the budget; the answer lies in low .. high
    while low < high:
        middle = (low + high + 1) // 2
        if count_parameters(build(middle)).effective <= budget:
            low = middle
        else:
            high = middle - 1
    return low


register_free_entries(QR1x1, lambda layer: {"upper": torch.ones_like(layer.upper).triu(1)})


def _lu_1x1_free_entries(layer: nf.flows.Invertible1x1Conv) -> dict[str, torch.Tensor]:
    # normflows' _assemble_W reads only tril(L, -1) and triu(U, 1).
    if not layer.use_lu:
        return {}
    return {"L": torch.ones_like(layer.L).tril(-1), "U": torch.ones_like(layer.U).triu(1)}


register_free_entries(nf.flows.Invertible1x1Conv, _lu_1x1_free_entries)
