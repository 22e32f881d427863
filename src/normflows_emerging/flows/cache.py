"""Results derived from parameters, reused while the parameters stay unchanged."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..solve import device
from ..solve.transforms import under_transform
from .optimizer_steps import optimizer_steps


class ValueKeyedCache:
    """Results computed from tensors, dropped as soon as the tensors may have changed.

    :meth:`get` returns the results for a key, computing them when the cache holds none that is
    fresh. Freshness is decided without reading device values, so a lookup never synchronises
    with a GPU. Each watched tensor is remembered by a detached alias that the cache holds (so
    its storage stays allocated and no new tensor can take its address; CPU and CUDA memory
    share one address space), its data pointer, shape, strides and dtype, and its version
    counter (shared with the alias). The results are dropped after:

    * in-place changes of a tensor (``p.copy_``, ``p.lerp_``, plain and ``foreach`` optimizer
      steps, ``load_state_dict``, in-place changes of a constant buffer), which bump its version;
    * replacement (``p.data = t``, ``vector_to_parameters``, ``module.to()``, a new buffer),
      which changes the data pointer, never back to the old one while the alias is held;
    * any optimizer step in the process (torch's global step hooks, see
      :mod:`~normflows_emerging.flows.optimizer_steps`): ``fused=True`` optimizers write the
      parameters without bumping their versions;
    * ``train()`` and ``eval()`` of the layer (:class:`DropsCacheOnModeChange`).

    A parameter that does not own its storage (a view into a larger buffer, as
    ``vector_to_parameters`` and flattened-parameter optimizers leave it: writes to that buffer
    bump no counter the parameter shares) is never cached on an accelerator. Writes through
    ``.data`` (``p.data.copy_(t)``, ``p.data.add_(t)``) also bump no counter the parameter
    shares: CPU tensors of the ``tensors`` argument are therefore also compared value by value,
    as bytes (a memory read, about 3x faster than ``torch.equal`` on float tensors). On an
    accelerator (see :func:`normflows_emerging.solve.device.on_accelerator`) values are not
    compared: there a write through ``.data``, or an in-place change of an inference tensor
    (which has no version counter) inside ``torch.inference_mode``, is NOT seen; call the
    layer's ``train()`` or ``eval()`` after one.

    Constant buffers (``constants``: masks that follow from the constructor's arguments) are
    watched by identity and version only, also on the CPU (nothing should write to a constant
    through ``.data``); inference tensors among them are compared by value on the CPU.

    Threads sharing a layer share its cache: the freshness check and the lookup are one step
    under the cache's lock, and a caller uses either results it found fresh or results it
    computed itself, which are stored only if the tensors did not change meanwhile.

    Pickling or copying a cache gives an empty one (identities mean nothing in another
    process, and cached results do not belong in a saved model).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._state = None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._state = None

    def get(
        self,
        tensors: Sequence[torch.Tensor],
        key: Any,
        compute: Callable[[], dict],
        constants: Sequence[torch.Tensor] = (),
    ) -> dict:
        """The results for ``key``: cached ones computed from the current ``tensors``, else
        ``compute()``, stored for later calls.

        Args:
          tensors: tensors the results are computed from (parameters)
          key: hashable description of everything else the results depend on
          compute: returns the results as a dictionary, computed from the current tensors
          constants: tensors the results depend on that are never meant to change (see above)

        Returns:
          the results; never change the dictionary or its tensors (other callers share them)
        """
        watched = (*tensors, *constants)
        with self._lock:
            state = self._state
            if state is None or not state.holds(watched):
                state = self._state = _State(watched, len(tensors))
            found = state.entries.get(key)
        if found is not None:
            return found
        results = compute()
        with self._lock:
            if self._state is state and state.holds(watched):
                state.entries.setdefault(key, results)
        return results


class _State:
    """The watched tensors, the optimizer-step count and the entries computed from them."""

    __slots__ = ("watches", "steps", "entries")

    def __init__(self, watched, num_by_value):
        self.steps = optimizer_steps()
        self.watches = [_Watch(t, i < num_by_value) for i, t in enumerate(watched)]
        self.entries = {}

    def holds(self, watched) -> bool:
        if self.steps != optimizer_steps() or len(self.watches) != len(watched):
            return False
        return all(watch.sees_unchanged(t) for watch, t in zip(self.watches, watched))


class _Watch:
    """What a cache remembers of one tensor; see :class:`ValueKeyedCache`."""

    __slots__ = ("alias", "pointer", "layout", "version", "view", "values", "verifiable")

    def __init__(self, tensor: torch.Tensor, by_value: bool):
        alias = tensor.detach()  # shares storage and version counter; held: the address stays
        self.alias = alias
        self.pointer = alias.data_ptr()
        self.layout = (alias.shape, alias.stride(), alias.dtype)
        inference = alias.is_inference()
        self.version = None if inference else alias._version
        self.view = self.values = None
        on_accelerator = device.on_accelerator(alias)
        by_value = (by_value or inference) and alias.dtype in _NUMPY_DTYPES
        if by_value and not on_accelerator:
            self.view = alias.numpy()  # a view of the same memory as the tensor
            self.values = self.view.tobytes()
        # Writes to a storage shared with a larger buffer bump no counter this tensor shares.
        self.verifiable = self.values is not None or _owns_storage(alias)

    def sees_unchanged(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is the remembered tensor, unchanged (reads no device value)."""
        if not self.verifiable or tensor.data_ptr() != self.pointer:
            return False
        if (tensor.shape, tensor.stride(), tensor.dtype) != self.layout:
            return False
        if self.version is not None and tensor._version != self.version:
            return False
        # same memory as the alias, so its numpy view reads the tensor's current values
        return self.values is None or self.view.tobytes() == self.values


def _owns_storage(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` spans its whole storage (no other tensor can write there unseen)."""
    return tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


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
    return not under_transform(*tensors)


def cached(
    module: torch.nn.Module,
    tensors: Sequence[torch.Tensor],
    key: Any,
    compute: Callable[[], dict],
    constants: Sequence[torch.Tensor] = (),
) -> dict:
    """``compute()``, through the module's ``_cache`` when :func:`reusable` allows it.

    The key also holds whether inference mode is on (results made there are inference tensors,
    which autograd refuses outside it).
    """
    if not reusable(module, tensors):
        return compute()
    key = (torch.is_inference_mode_enabled(), key)
    return module._cache.get(tensors, key, compute, constants)


class DropsCacheOnModeChange:
    """Mixin for a module that holds a :class:`ValueKeyedCache` as ``_cache``: ``train()`` and
    ``eval()`` drop it (the way to refresh it after a write the cache cannot see, see there)."""

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)
