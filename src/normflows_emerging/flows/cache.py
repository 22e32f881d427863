"""Results derived from parameters, reused while the parameters stay unchanged."""

import torch
import torch.autograd.forward_ad as forward_ad

from ..solve import device


class ValueKeyedCache:
    """Per-key dictionaries that are dropped as soon as the watched tensors change.

    Freshness is decided without reading device values, so a lookup never synchronises with a
    GPU. Each watched tensor is remembered by a detached alias that the cache holds (so its
    storage stays allocated and no new tensor can take its address; CPU and CUDA memory share
    one address space), its data pointer, shape, strides and dtype, and its version counter
    (shared with the alias). That sees:

    * in-place changes of the tensor (``p.copy_``, ``p.lerp_``, optimiser steps,
      ``load_state_dict``, in-place changes of a constant buffer), which bump the version;
    * replacement (``p.data = t``, ``vector_to_parameters``, ``module.to()``, a new buffer),
      which changes the data pointer, never back to the old one while the alias is held.

    Writes through ``.data`` (``p.data.copy_(t)``, ``p.data.add_(t)``) bump no counter that
    the parameter shares. CPU tensors of the ``tensors`` argument are therefore also compared
    value by value, as bytes (a memory read; about 3x faster than ``torch.equal`` on float
    tensors), which catches these writes too. On an accelerator (see
    :func:`normflows_emerging.solve.device.on_accelerator`) values are not compared: there a
    write through ``.data``, or an in-place change of an inference tensor (which has no version
    counter) inside ``torch.inference_mode``, is NOT seen. After such a write call the layer's
    ``train()`` or ``eval()``: every layer with a cache drops it when its mode is set.

    Constant buffers (``constants``: masks that follow from the constructor's arguments) are
    watched by identity and version only, also on the CPU (nothing should write to a constant
    through ``.data``); inference tensors among them are compared by value on the CPU.

    Pickling or copying a cache gives an empty one (identities mean nothing in another
    process, and cached results do not belong in a saved model).
    """

    def __init__(self):
        self._watches = None
        self._entries = {}

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def clear(self) -> None:
        """Forget everything."""
        self._watches = None
        self._entries.clear()

    def entry(self, tensors, key, constants=()) -> dict:
        """The dictionary for ``key``, emptied first if ``tensors`` changed since the last call.

        Args:
          tensors: sequence of tensors the cached results are computed from (parameters)
          key: hashable description of everything else the results depend on
          constants: tensors the results depend on that are never meant to change (see above)

        Callers fill the dictionary with one ``update`` of all the keys they compute together:
        other threads sharing the layer may read it in between.
        """
        watched = list(tensors) + list(constants)
        if not self._holds(watched):
            self._entries.clear()
            by_value = [True] * len(tensors) + [False] * len(constants)
            self._watches = [_Watch(t, values) for t, values in zip(watched, by_value)]
        return self._entries.setdefault(key, {})

    def _holds(self, watched) -> bool:
        watches = self._watches
        if watches is None or len(watches) != len(watched):
            return False
        return all(watch.sees_unchanged(t) for watch, t in zip(watches, watched))


class _Watch:
    """What a cache remembers of one tensor; see :class:`ValueKeyedCache`."""

    __slots__ = ("alias", "pointer", "layout", "version", "view", "values")

    def __init__(self, tensor: torch.Tensor, by_value: bool):
        alias = tensor.detach()  # shares storage and version counter; held: the address stays
        self.alias = alias
        self.pointer = alias.data_ptr()
        self.layout = (alias.shape, alias.stride(), alias.dtype)
        inference = alias.is_inference()
        self.version = None if inference else alias._version
        self.view = self.values = None
        by_value = (by_value or inference) and alias.dtype in _NUMPY_DTYPES
        if by_value and not device.on_accelerator(alias):
            self.view = alias.numpy()  # a view of the same memory as the tensor
            self.values = self.view.tobytes()

    def sees_unchanged(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is the remembered tensor, unchanged (reads no device value)."""
        if tensor.data_ptr() != self.pointer:
            return False
        if (tensor.shape, tensor.stride(), tensor.dtype) != self.layout:
            return False
        if self.version is not None and tensor._version != self.version:
            return False
        # same memory as the alias, so its numpy view reads the tensor's current values
        return self.values is None or self.view.tobytes() == self.values


_NUMPY_DTYPES = frozenset(
    (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool)
)


def reusable(module: torch.nn.Module, tensors) -> bool:
    """Whether results computed from ``tensors`` may be cached: eval mode, no gradient to them.

    Gradients include forward-mode ones (``torch.autograd.forward_ad`` tangents) and tensors of a
    ``torch.func`` transform (``vmap`` over parameters, ``jvp``, ``grad``): a cached copy would
    drop their tangents or batch dimension, and they report ``requires_grad=False``.
    """
    if module.training:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not _carry_derivatives_or_batches(tensors)


def _carry_derivatives_or_batches(tensors) -> bool:
    """Whether a tensor carries a forward-mode tangent or is wrapped by a torch.func transform.

    Per-tensor tests only inside a dual level or a transform (about 5 us per call otherwise, a
    few percent of a batch-1 sample); torch has no public test for either, so these are the
    ones torch.func and ``forward_ad.unpack_dual`` use.
    """
    functorch = torch._C._functorch
    if functorch.peek_interpreter_stack() is not None and any(
        functorch.is_functorch_wrapped_tensor(t) for t in tensors
    ):
        return True
    return forward_ad._current_level >= 0 and any(
        forward_ad.unpack_dual(t).tangent is not None for t in tensors
    )


class DropsCacheOnModeChange:
    """Mixin for a module that holds a :class:`ValueKeyedCache` as ``_cache``: ``train()`` and
    ``eval()`` drop it (the way to refresh it after a write the cache cannot see, see there)."""

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)
