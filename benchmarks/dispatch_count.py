"""Kernel launches and host syncs of one call, counted on the CPU along the CUDA code path.

A GPU's cost at these sizes is launches and syncs, not arithmetic. Without a GPU they can still be
counted: a ``TorchDispatchMode`` sees every aten operation a call makes (each one kernel launch
on a GPU, except views, metadata-only and allocation operations), and Triton launches are counted
by wrapping ``KernelInterface.__getitem__`` (the ``kernel[grid](...)`` launch). Syncs are the
operations that read a device value on the host: ``_local_scalar_dense`` (``.item()``, ``float()``,
``bool()``), ``nonzero``, ``equal``, ``is_nonzero``.

The CUDA code path on the CPU: the ``"triton"`` solve backend runs its kernels in Triton's
interpreter (the aten operations inside an interpreted launch are the interpreter's, not
counted), and the eval caches compare values as they do for CUDA tensors (``torch.equal``, not
bytes), unless asked not to.

    from dispatch_count import count_launches
    counts = count_launches(lambda: model.sample(1))  # {"launches", "syncs", "triton", ...}

    python benchmarks/dispatch_count.py [--paper] [--batch 1 16] [--cpu-caches] [--only NAME..]

writes ``benchmarks/results/dispatch_count[_paper][_cpu_caches].json``: per mixing layer,
launches and syncs of ``sample(n)`` (eval mode, no gradients, the caches filled by a first call).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SYNC_OPS = frozenset(("_local_scalar_dense", "nonzero", "equal", "is_nonzero"))
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
    ``triton`` launches when used through :func:`count_launches`."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.launches = 0
        self.syncs = 0
        self.triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs += 1
        if not func.is_view and name not in NO_LAUNCH_OPS:
            self.launches += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        """``aten_ops`` (all), ``launches`` (aten launches + Triton launches), ``triton``,
        ``syncs`` and the ten most frequent operations."""
        return {
            "aten_ops": sum(self.ops.values()),
            "launches": self.launches + self.triton,
            "triton": self.triton,
            "syncs": self.syncs,
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
def cuda_cache_path():
    """Make the eval caches fingerprint CPU tensors as they do CUDA ones (copies compared with
    ``torch.equal``, a sync each): the CPU shortcut (values as bytes) reads no device."""
    from normflows_emerging.flows import cache

    saved = getattr(cache, "_NUMPY_DTYPES", None)
    if saved is not None:
        cache._NUMPY_DTYPES = frozenset()
    try:
        yield
    finally:
        if saved is not None:
            cache._NUMPY_DTYPES = saved


def count_launches(fn, cuda_caches: bool = True, warmup: bool = True) -> dict:
    """Run ``fn()`` under a :class:`DispatchCount` and return its ``summary()``.

    Args:
      fn: the call to count
      cuda_caches: take the eval caches' CUDA path (see :func:`cuda_cache_path`)
      warmup: run ``fn()`` once uncounted first (on the same cache path, whose fingerprints
        differ from the CPU one's), as a user's second call would find the caches filled
    """
    counter = DispatchCount()
    with cuda_cache_path() if cuda_caches else contextlib.nullcontext():
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


def sample_counts(model, batch, backend=None, cuda_caches=True) -> dict:
    """Counts of ``model.sample(batch)`` without gradients, after one uncounted call, with the
    solve ``backend`` (None: the default), the caches on their CUDA path or not."""
    from normflows_emerging import use_backend

    def run():
        with torch.no_grad(), use_backend(backend) if backend else contextlib.nullcontext():
            model.sample(batch)

    return count_launches(run, cuda_caches)


def _cpu_model() -> dict:
    info = {"processor": platform.processor(), "machine": platform.machine()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["model"] = value.strip()
            if key.strip() == "flags":
                flags = value.split()
                info["simd"] = [f for f in flags if f.startswith(("avx", "sse4", "fma", "amx"))]
                break
    return info


def main():
    from timing import print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help="3 x 32 steps, 512 hidden")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--cpu-caches",
        action="store_true",
        help="the eval caches' CPU path (values compared as bytes on the host: no clone or "
        "torch.equal), what caches that read no device values would launch",
    )
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
            counts = sample_counts(model, batch, backend, cuda_caches=not args.cpu_caches)
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
                    top_ops=counts["top_ops"],
                )
            )
            print(rows[-1], flush=True)
    print_table(rows, ["contender", "batch", "launches", "ratio_to_1x1", "triton", "syncs"])
    name = "dispatch_count_paper" if args.paper else "dispatch_count"
    name += "_cpu_caches.json" if args.cpu_caches else ".json"
    write_json(
        os.path.join(RESULTS, name),
        rows,
        caches="CPU path (bytes)" if args.cpu_caches else "CUDA path (clone + torch.equal)",
        what="kernel launches and host syncs of model.sample(batch), counted on the CPU along "
        "the CUDA code path (benchmarks/dispatch_count.py); no GPU was used",
        model=dict(shape=shape, levels=levels, flows_per_level=steps, hidden_channels=hidden),
        cpu=_cpu_model(),
    )


if __name__ == "__main__":
    main()
