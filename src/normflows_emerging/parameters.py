"""Trainable-parameter counts (stored, used, degrees of freedom) and width matching to a budget.

Several layers store more numbers than they use: ``QR1x1`` keeps a full ``upper`` matrix of which
only the strict upper triangle enters ``W`` (``upper.triu(1)``), ``SquareAutoregressiveConv2d``
and the MAF layers multiply their weights by a fixed ``mask``, and normflows' LU-parametrised
``Invertible1x1Conv`` reads only ``L.tril(-1)`` and ``U.triu(1)``. The discarded entries get no
gradient and are not degrees of freedom, so comparing models by their total count penalises
those layers. Some of the entries a layer uses are still not degrees of freedom: ``QR1x1``'s
Householder vectors are scale-invariant (``W = QR`` has C² degrees of freedom, not the
C² + C(C+1)/2 entries it reads), and in ``EmergingConv2d`` an invertible channel mixing can move
between the 1x1 convolution and the first autoregressive convolution (C(C+1)/2 directions) and
between the two autoregressive convolutions (C(C+1)/2 with a 1x1 convolution, C without). A
network with a positively homogeneous activation (``(Leaky)ReLU``) can scale each hidden unit's
input by a > 0 and its output by 1/a. :func:`count_parameters` reports the stored entries, the
used ones and the *degrees of freedom*: the rank of the Jacobian of a layer's outputs (and
log-determinant) with respect to its parameters at generic parameter values (the tests check it by
brute force). The degrees of freedom are what the paper's "correcting for the increase in
parameters" compares. Redundancy across layers (e.g. an ActNorm's scale next to a
1x1 convolution that could absorb it) is not removed: each layer is counted on its own. The MAF
layers are counted by their used entries, an upper bound: their ReLU networks' rescalings and
the channel mixing their first layer can absorb from the 1x1 convolution before it have no rule
yet (their Jacobian rank depends on which ReLUs are active, so no test pins it down).

Which entries of a module's parameters are free is found, in this order, by

* a rule registered for its class (or a base class) with :func:`register_free_entries`, or
* the mask convention: a module with a ``weight`` parameter and a ``mask`` buffer that the
  forward pass applies to it (``weight * mask``, or ``where(mask != 0, weight, 0)`` as this
  package's layers do) uses the entries where ``mask != 0``;
* otherwise every entry is free;

and how many directions in the used entries leave a module (with its submodules) unchanged by a
rule registered with :func:`register_redundancy` (none where no rule is registered).
"""

import dataclasses
import warnings
from typing import Callable

import normflows as nf
import torch
from torch import nn

from .flows.emerging import EmergingConv2d
from .flows.qr import QR1x1

FreeEntriesRule = Callable[[nn.Module], dict[str, torch.Tensor]]
RedundancyRule = Callable[[nn.Module], int]
_RULES: dict[type, FreeEntriesRule] = {}
_REDUNDANCY: dict[type, RedundancyRule] = {}


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters of a model.

    Args:
      total: number of entries of all trainable parameters (each shared tensor once)
      degrees_of_freedom: ``used`` minus the directions in them that leave a layer's function
        unchanged (see the module docstring)
      used: entries the model reads: ``total`` minus the entries that a mask or a triangular part
        discards
    """

    total: int
    degrees_of_freedom: int
    used: int

    @property
    def effective(self) -> int:
        """Deprecated alias of :attr:`degrees_of_freedom` (removed in 0.3)."""
        warnings.warn(
            "ParameterCount.effective is deprecated and will be removed in normflows-emerging "
            "0.3; use ParameterCount.degrees_of_freedom (the same number)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.degrees_of_freedom


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


def register_redundancy(cls: type, rule: RedundancyRule) -> None:
    """Say how many directions in a layer class's used entries leave the layer unchanged.

    Args:
      cls: module class; the rule also applies to its subclasses
      rule: ``rule(module)`` returning an int >= 0: the number of used entries of the module's
        parameters, its submodules' included, that are not degrees of freedom (the used count
        minus the rank of the Jacobian of the module's outputs with respect to them at generic
        values). Rules of the submodules' own classes are applied too: count only what they
        miss.

    Raises:
      TypeError: if ``cls`` is not a class or ``rule`` is not callable
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {type(cls).__name__}")
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {type(rule).__name__}")
    _REDUNDANCY[cls] = rule


def redundancy(module: nn.Module) -> int:
    """Directions in the used entries that leave ``module`` unchanged beyond its submodules'
    own (0 where no rule is registered for its class or a base class)."""
    for cls in type(module).__mro__:
        if cls in _REDUNDANCY:
            return int(_REDUNDANCY[cls](module))
    return 0


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
    """Stored and used trainable parameters of a model, and its degrees of freedom.

    Args:
      model: any ``nn.Module``; parameters with ``requires_grad=False`` are not counted, a
        parameter shared by several modules is counted once

    Returns:
      :class:`ParameterCount`

    Raises:
      TypeError: if ``model`` is not an ``nn.Module``
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters expects an nn.Module, got {type(model).__name__}")
    seen = set()
    total = used = redundant = 0
    for module in model.modules():
        masks = free_entries(module)
        redundant += redundancy(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            total += param.numel()
            used += int(masks[name].sum()) if name in masks else param.numel()
    return ParameterCount(total, used - redundant, used)


def widest_within_budget(build: Callable[[int], nn.Module], budget: int, max_width: int) -> int:
    """The largest width whose model has at most ``budget`` degrees of freedom.

    Binary search over ``1 .. max_width``, assuming the degrees of freedom grow with the width
    (true of coupling widths).

    Args:
      build: ``build(width)`` returning a model
      budget: largest allowed number of degrees of freedom
      max_width: largest width to consider

    Returns:
      int in ``1 .. max_width``

    Raises:
      ValueError: if even width 1 exceeds the budget
    """
    if count_parameters(build(1)).degrees_of_freedom > budget:
        raise ValueError(f"even width 1 has more than {budget:,} degrees of freedom")
    low, high = 1, max_width  # low fits the budget; the answer lies in low .. high
    while low < high:
        middle = (low + high + 1) // 2
        if count_parameters(build(middle)).degrees_of_freedom <= budget:
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


def _qr_redundancy(layer: QR1x1) -> int:
    # Q, a product of n Householder reflections (k = min(n, C)), ranges over orthogonal matrices
    # Q with rank(Q - I) <= k: a k-dimensional subspace (k (C - k)) and a rotation inside it
    # (k (k - 1) / 2); R adds C (C + 1) / 2. Each vector's length is one unused direction.
    c, n = layer.num_channels, layer.num_reflections
    k = min(n, c)
    used = n * c + c * (c - 1) // 2 + c
    return used - (k * (c - k) + k * (k - 1) // 2 + c * (c + 1) // 2)


def _emerging_redundancy(layer: EmergingConv2d) -> int:
    # A lower-triangular M between the 1x1 convolution (W -> M W, any invertible W stays one)
    # and the causal convolution (taps K -> K M^-1, its corner tap stays lower-triangular), and
    # one between the two autoregressive convolutions (lower-triangular in the causal one's
    # channel order and upper-triangular in the mirrored one's: diagonal without a 1x1 ahead,
    # whose freedom otherwise lets the causal corner tap take any invertible M).
    c = layer.num_channels
    return c * (c + 1) if layer.one_by_one is not None else c


def _homogeneous_hidden_units(net: nn.Module) -> int:
    # Each hidden channel between two convolutions and a positively homogeneous activation can
    # be scaled by a > 0 on its way in and 1/a on its way out.
    layers = list(net.modules())
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    if not all(
        isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Conv2d, nn.Sequential)) for m in layers[1:]
    ):
        return 0
    return sum(conv.out_channels for conv in convs[:-1])


register_redundancy(QR1x1, _qr_redundancy)
register_redundancy(EmergingConv2d, _emerging_redundancy)
register_redundancy(nf.nets.ConvNet2d, _homogeneous_hidden_units)
