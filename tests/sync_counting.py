"""Counting the operations that synchronise a GPU with the host, on CPU tensors.

Under :class:`SyncCounter` every aten operation is seen once; those that read a device value on
the host (``.item()``, ``bool(t)``, ``int(t)``, ``torch.equal``, ``nonzero``) are counted by
name, and so is ``lift_fresh``: a tensor made from host data (``torch.tensor(list, device=d)``),
which on a GPU is a copy from pageable memory that the host waits for. :func:`accelerator_path`
makes CPU tensors take the code path the layers take on a GPU, so the count is the one a CUDA
run would have (the ops are the same; only the device differs).
"""

import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import normflows_emerging.solve.device as device_module

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense,
    aten.item,
    aten.nonzero,
    aten.equal,
    aten.is_nonzero,
    aten.lift_fresh,
}


class SyncCounter(TorchDispatchMode):
    """Counts aten operations (``ops``) and host synchronisations by op name (``syncs``)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.overloadpacket in SYNC_OPS:
            self.syncs[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())


@contextlib.contextmanager
def accelerator_path():
    """Inside, every tensor counts as living on an accelerator (a GPU) for this package."""
    original = device_module.on_accelerator
    device_module.on_accelerator = lambda tensor: True
    try:
        yield
    finally:
        device_module.on_accelerator = original
