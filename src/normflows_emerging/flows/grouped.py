"""Grouped weights: the parameter-side work of a model's layers, batched per kind and shape.

In the density direction every layer of this package first turns its parameters into the
tensors it convolves with: the QR 1x1 layer's ``W = Q R`` (a compact-WY product of Householder
reflections), the masked kernels of the autoregressive convolutions with their ``exp(log_d)``
diagonals, a periodic kernel's Fourier spectrum, and the log-determinants. That work does not
depend on the batch, but it is many small operations, each one a kernel launch on a GPU, forward
and backward: eager training of an emerging model launched 2.7 times what Glow's 1x1 model does,
nearly all of it parameter-side work.

Inside ``grouped_weights(model)`` the layers of ``model`` that share a kind and shape (the steps
of one level, say) compute these tensors together, the way a multi-tensor (``foreach``)
optimizer steps many parameters at once: their parameters are stacked and the layers' own
formulas run once on the stack. The values are the layers' own (the same operations, batched)
and gradients flow to every layer's parameters as before::

    with grouped_weights(model):
        loss = model.forward_kld(x)   # one call that runs every layer once
    loss.backward()

``ImageMultiscaleFlow.log_prob`` (so ``forward_kld``) and ``inverse_and_log_det`` group their
layers themselves; wrap calls of other models (``normflows.MultiscaleFlow``,
``normflows.NormalizingFlow`` holding these layers) as above.

What is grouped: :class:`~normflows_emerging.flows.QR1x1`,
:class:`~normflows_emerging.flows.SquareAutoregressiveConv2d`,
:class:`~normflows_emerging.flows.EmergingConv2d` (with a QR or no 1x1 layer) and
:class:`~normflows_emerging.flows.PeriodicConv2d`, exactly these classes (a subclass may change
the formulas, so it computes its own), when they run their density direction (``inverse``) in a
call that records gradients or in training mode (in eval mode without gradients the layers'
caches already skip the work). Anything else computes as without the block.

A group's tensors are computed from the current parameters when the group's first layer runs and
are held by the block alone, in this thread (a context variable: other threads, and calls
outside the block, never see them). Each layer takes its entry once: when a layer runs again in
the block (a second model call, such as the next chunk of a gradient accumulation, whose
backward frees the first call's graph), its group is computed again. So it is if one of its
layer's parameters was replaced, changed in place (version counter) or had ``requires_grad``
switched, or any optimizer stepped (fused steps included) since; writes through ``.data``
inside the block are not seen, so wrap one model call, not a training loop.
Layers whose parameters a ``torch.func`` transform wraps (``vmap`` over
parameters, ``jvp``/``grad`` through ``functional_call``) compute their own, as do layers under
``torch.compile`` (a context variable cannot be set inside a graph; inductor fuses the
elementwise part of the work). If a group's layer does not run inside the block, its parameters
get a zero gradient instead of none.

A layer class takes part by defining ``_group_key()`` (:func:`group_key`, or None when the layer
cannot be grouped now), ``_grouped_parameters()`` (the tensors its derived tensors come from),
``_grouped_submodules()`` (submodules whose work its group does, which then form no group of
their own) and a static ``_derive_group(layers, *args)`` returning one entry per layer, which
the layer's ``inverse`` gets from :func:`grouped`.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from ..solve.transforms import under_transform
from .optimizer_steps import optimizer_steps

_PLAN: contextvars.ContextVar = contextvars.ContextVar("grouped_weights", default=None)


@contextlib.contextmanager
def grouped_weights(model: nn.Module):
    """Inside, the layers of ``model`` compute their parameter-side tensors in groups (see the
    module docstring). Nests: an inner block adds its model's groups to the outer ones.

    Args:
      model: any ``torch.nn.Module`` holding layers of this package

    Raises:
      TypeError: if ``model`` is not a ``torch.nn.Module``
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"grouped_weights expects a torch.nn.Module, got {type(model).__name__}")
    token = _PLAN.set(_Plan(model, _PLAN.get()))
    try:
        yield
    finally:
        _PLAN.reset(token)


def grouped(layer: nn.Module, *args):
    """``layer``'s entry of its group's batched computation (the layer class's
    ``_derive_group(layers, *args)``) inside a :func:`grouped_weights` block, else None.

    ``args`` are what the derived tensors depend on besides the parameters (the image size).
    """
    if torch.compiler.is_compiling():
        return None
    plan = _PLAN.get()
    while plan is not None:
        found = plan.lookup(layer, args)
        if found is not None:
            return found
        plan = plan.parent
    return None


def group_key(layer: nn.Module, cls: type, *extra):
    """The key of a group ``layer`` can join: its class, ``extra`` (sizes), and the shape,
    dtype and device of each of its ``_grouped_parameters()``; None unless ``layer`` is exactly
    ``cls``."""
    if type(layer) is not cls:
        return None
    return (cls, *extra, *((p.shape, p.dtype, p.device) for p in layer._grouped_parameters()))


class _Plan:
    """The groups of one :func:`grouped_weights` block and the tensors computed for them."""

    def __init__(self, model, parent):
        self.model, self.parent = model, parent
        self._group_of = None  # layer -> tuple of the layers computed with it, found lazily
        self._entries = {}

    def lookup(self, layer, args):
        if self._group_of is None:
            self._group_of = _find_groups(self.model)
        group = self._group_of.get(layer)
        if group is None:
            return None
        parameters = layer._grouped_parameters()
        if under_transform(*parameters):
            return None
        key = (group, args, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        entry = self._entries.get(key)
        if entry is None or not entry.fresh(layer, parameters) or layer in entry.used:
            entry = _Entry(group, args)
            self._entries[key] = entry
        entry.used.add(layer)
        return entry.results[layer]


class _Entry:
    """A group's derived tensors, with what decides whether they are still fresh."""

    def __init__(self, group, args):
        self.optimizer_steps = optimizer_steps()  # before: a step meanwhile makes it stale
        self.stamps = {layer: _stamps(layer._grouped_parameters()) for layer in group}
        # detached aliases keep the stamped storages allocated, so that no new tensor (a
        # replaced parameter, `p.data = t`) can take a stamped address while the entry lives
        self.held = [p.detach() for layer in group for p in layer._grouped_parameters()]
        self.results = dict(zip(group, type(group[0])._derive_group(group, *args)))
        self.used = set()  # layers that took their entry: one more lookup is another model call

    def fresh(self, layer, parameters) -> bool:
        return self.optimizer_steps == optimizer_steps() and self.stamps[layer] == _stamps(
            parameters
        )


def _stamps(parameters):
    """What tells a parameter's tensors apart: address, version and whether it records a
    gradient (results made while it did not hold no graph to it)."""
    return [(p.data_ptr(), p._version, p.requires_grad) for p in parameters]


def _find_groups(model):
    """Layer -> its group (a tuple of layers, in module order), for the groupable layers of
    ``model`` that are not part of a grouped layer (an emerging layer's sublayers)."""
    inside_grouped, members = set(), {}
    for module in model.modules():
        derive = getattr(module, "_group_key", None)
        if module in inside_grouped or derive is None:
            continue
        key = derive()
        if key is None:
            continue
        members.setdefault(key, []).append(module)
        inside_grouped.update(module._grouped_submodules())
    return {layer: tuple(group) for group in members.values() for layer in group}
