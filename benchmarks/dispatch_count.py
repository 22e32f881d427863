"""Kernel launches and host syncs of one call, counted on the CPU along the CUDA code path.

A GPU's cost at these sizes is launches and syncs, not arithmetic. Without a GPU they can still be
counted: a ``TorchDispatchMode`` sees every aten operation a call makes (each one kernel launch
on a GPU, except views, metadata-only and allocation operations), and Triton launches are counted
by wrapping ``KernelInterface.__getitem__`` (the ``kernel[grid](...)`` launch). Syncs are the
operations that read a device value on the host: ``_local_scalar_dense`` (``.item()``, ``float()``,
``bool()``), ``nonzero``, ``equal``, ``is_nonzero``, and ``lift_fresh`` (a tensor made from host
data, ``torch.tensor(list, device=d)``: on a GPU a copy from pageable memory that the host waits
for).

The CUDA code path on the CPU: :func:`accelerator_path` makes this package treat CPU tensors as
GPU ones (the caches compare no values, the per-layer checks that read values are skipped), and
the ``"triton"`` solve backend runs its kernels in Triton's interpreter (the aten operations
inside an interpreted launch are the interpreter's, not counted).

    from dispatch_count import count_launches
    counts = count_launches(lambda: model.sample(1))  # {"launches", "syncs", "triton", ...}

    python benchmarks/dispatch_count.py [--paper] [--batch 1 16] [--only NAME..]

writes ``benchmarks/results/dispatch_count[_paper].json``: per mixing layer, launches and syncs
(by operation) of ``sample(n)`` (eval mode, no gradients, the caches filled by a first call).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SYNC_OPS = frozenset(
    ("_local_scalar_dense", "item", "nonzero", "equal", "is_nonzero", "lift_fresh")
)
# Operations that launch nothing on a GPU: allocations and metadata.
NO_LAUNCH_OPS = frozenset(
    (
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "set_",
        "resize_",
        "lift_fresh",
        "_to_copy_metadata",
    )
)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class DispatchCount(TorchDispatchMode):
    """Counts the aten operations run inside it: ``ops`` by name (all), ``launches`` (those that
    launch a kernel on a GPU: not views, not allocations), ``syncs`` (see the module), and
    ``triton`` launches when used through :func:`count_launches`; ``syncs`` counts by
    operation name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.launches = 0
        self.syncs = collections.Counter()
        self.triton = 0

    @property
    def aten_ops(self) -> int:
        """All aten operations seen."""
        return sum(self.ops.values())

    @property
    def total_syncs(self) -> int:
        """All host synchronisations seen."""
        return sum(self.syncs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        if not func.is_view and name not in NO_LAUNCH_OPS:
            self.launches += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        """``aten_ops`` (all), ``launches`` (aten launches + Triton launches), ``triton``,
        ``syncs`` (total), ``sync_ops`` (by name) and the ten most frequent operations."""
        return {
            "aten_ops": self.aten_ops,
            "launches": self.launches + self.triton,
            "triton": self.triton,
            "syncs": self.total_syncs,
            "sync_ops": dict(self.syncs),
            "top_ops": dict(self.ops.most_common(10)),
        }


@contextlib.contextmanager
def _count_triton(counter: DispatchCount):
    """Count each ``kernel[grid](...)`` launch once; what runs inside it is not counted."""
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:
        yield
        return
    original = KernelInterface.__getitem__

    def counted(self, grid):
        launch = original(self, grid)

        def run(*args, **kwargs):
            counter.triton += 1
            with _disable_current_modes():
                return launch(*args, **kwargs)

        return run

    KernelInterface.__getitem__ = counted
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original


@contextlib.contextmanager
def accelerator_path():
    """Inside, every tensor counts as living on an accelerator (a GPU) for this package, so CPU
    tensors take the code path the layers take on a GPU (the ops are the same; only the device
    differs)."""
    from normflows_emerging.solve import device

    original = device.on_accelerator
    device.on_accelerator = lambda tensor: True
    try:
        yield
    finally:
        device.on_accelerator = original


def count_launches(fn, accelerator: bool = True, warmup: bool = True) -> dict:
    """Run ``fn()`` under a :class:`DispatchCount` and return its ``summary()``.

    Args:
      fn: the call to count
      accelerator: take the GPU code path (see :func:`accelerator_path`)
      warmup: run ``fn()`` once uncounted first, on the same path, as a user's second call
        would find the caches filled
    """
    counter = DispatchCount()
    with accelerator_path() if accelerator else contextlib.nullcontext():
        if warmup:
            fn()
        with _count_triton(counter), counter:
            fn()
    return counter.summary()


def use_interpreted_triton():
    """Make the ``"triton"`` backend run an interpreted copy of its kernels (CPU tensors)."""
    from triton_offline import KERNELS, load_kernels

    sys.modules[KERNELS] = load_kernels(True)


def make_model(mixing, shape, levels, steps, hidden):
    """A builder model in eval mode, ActNorms initialised on noise images, parameters off their
    initial values by 1e-3 (as ``sampling.py`` does)."""
    from normflows_emerging import build_multiscale_flow

    torch.manual_seed(0)
    model = build_multiscale_flow(shape, levels, steps, hidden, mixing=mixing)
    with torch.no_grad():
        model.log_prob(torch.rand(4, *shape), None)
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    return model.eval()


def sample_counts(model, batch, backend=None, accelerator=True) -> dict:
    """Counts of ``model.sample(batch)`` without gradients, after one uncounted call, with the
    solve ``backend`` (None: the default), on the GPU code path or not."""
    from normflows_emerging import use_backend

    def run():
        with torch.no_grad(), use_backend(backend) if backend else contextlib.nullcontext():
            model.sample(batch)

    return count_launches(run, accelerator)


def main():
    from timing import print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help="3 x 32 steps, 512 hidden")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--only", nargs="+", help="contenders to count (1x1 always)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_interpreted_triton()
    shape = (3, 32, 32)
    levels, steps, hidden = (3, 32, 512) if args.paper else (3, 8, 256)
    contenders = [
        ("1x1", "1x1", None),
        ("periodic", "periodic", None),
        ("emerging (torch solve)", "emerging", "torch"),
        ("emerging (triton)", "emerging", "triton"),
    ]
    if args.only:
        contenders = [c for c in contenders if c[0] == "1x1" or c[0] in args.only]
    rows = []
    for batch in args.batch:
        baseline = None
        for name, mixing, backend in contenders:
            model = make_model(mixing, shape, levels, steps, hidden)
            counts = sample_counts(model, batch, backend)
            baseline = baseline or counts["launches"]
            rows.append(
                dict(
                    contender=name,
                    batch=batch,
                    launches=counts["launches"],
                    ratio_to_1x1=round(counts["launches"] / baseline, 3),
                    triton=counts["triton"],
                    aten_ops=counts["aten_ops"],
                    syncs=counts["syncs"],
                    sync_ops=counts["sync_ops"],
                    top_ops=counts["top_ops"],
                )
            )
            print(rows[-1], flush=True)
    print_table(rows, ["contender", "batch", "launches", "ratio_to_1x1", "triton", "syncs"])
    name = "dispatch_count_paper.json" if args.paper else "dispatch_count.json"
    write_json(
        os.path.join(RESULTS, name),
        rows,
        what="kernel launches and host syncs of model.sample(batch), counted on the CPU along "
        "the CUDA code path (benchmarks/dispatch_count.py); no GPU was used",
        model=dict(shape=shape, levels=levels, flows_per_level=steps, hidden_channels=hidden),
    )


if __name__ == "__main__":
    main()
