"""The triton backend's kernels compiled ahead of time, without a GPU, for sm_80 (A100), sm_86
(RTX 30xx, A10, A40), sm_89 (RTX 40xx, L4, L40S) and sm_90 (H100, H200) with the block sizes the
backend picks from NVIDIA's limits for each: no register spills, shared memory within the budget
(and within the bound the backend estimates it by), and a barrier between every pair of dependent
memory accesses (``barrier_check``). ``python benchmarks/triton_offline.py`` writes the counts of
every channel block to ``results/triton_registers.json``.

Each distinct compile runs once (C = 96 and C = 128 compile alike); ptxas's log comes from
triton's knob where it has one (3.5 on) and from running triton's ptxas on the PTX before.
"""

import importlib.util

import pytest
import torch

pytest.importorskip("triton")

from barrier_check import access_count, offset_types, races  # noqa: E402
from normflows_emerging.backends.triton_device import LIMITS, shared_memory_bytes  # noqa: E402
from triton_offline import (  # noqa: E402
    CAPABILITIES,
    KERNELS,
    compile_launch,
    kernel_report,
    kernels_source,
)

KERNEL_NAMES = ("solve_kernel", "emerging_step_kernel")


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("channels", [64, 65, 96, 128])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernels_fit_the_device(kernel, channels, dtype, capability):
    compiled, log, constexprs, options = compile_launch(
        kernel, channels, 32, 32, 3, dtype, capability
    )
    report = kernel_report(kernel, channels, 32, 32, 3, dtype, capability)
    assert report["spill_stores"] == report["spill_loads"] == report["stack_frame"] == 0, report
    assert 0 < report["registers"] <= options["maxnreg"]
    limits = LIMITS[divmod(capability, 10)]
    assert options["num_warps"] * 32 * options["maxnreg"] <= limits.registers
    blocks = dict(constexprs, BLOCK_Q=constexprs.get("BLOCK_Q", 1))
    estimate = shared_memory_bytes(blocks, getattr(torch, dtype).itemsize)
    assert report["shared"] <= estimate <= limits.shared_memory
    source = kernels_source()
    path = importlib.util.find_spec(KERNELS).origin
    assert races(compiled.asm["ttgir"], kernel, source, path) == []


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_wide_indices_compile_to_64_bit_offsets(kernel):
    """With ``WIDE`` every offset into an image, a kernel, the 1x1 matrix or the workspace is
    int64 (the biases' offsets stay below C); without, the kernels use int32. No spills with
    ``WIDE`` at the most channels either."""
    types = {}
    for wide in (False, True):
        compiled, _, _, _ = compile_launch(kernel, 128, 32, 32, 3, "float64", 80, wide=wide)
        types[wide] = offset_types(compiled.asm["ttgir"], kernel, kernels_source())
    biases = {"anticausal_bias", "causal_bias"}
    assert types[True].keys() - biases == types[False].keys() - biases
    assert all(types[True][buffer] == {"i64"} for buffer in types[True].keys() - biases)
    assert all("i32" in types[False][buffer] for buffer in types[False].keys() - biases)
    report = kernel_report(kernel, 128, 32, 32, 3, "float64", 80, wide=True)
    assert report["spill_stores"] == report["spill_loads"] == 0, report


def test_the_barrier_check_reads_the_kernels():
    compiled, _, _, _ = compile_launch("emerging_step_kernel", 12, 8, 8, 2, "float32", 90)
    path = importlib.util.find_spec(KERNELS).origin
    # two solves (source, neighbours, weights, r, its chunks, the inverse, the corner's
    # diagonal and column, the inverse stored) and the 1x1 pass (input, weights, output)
    ttgir, source = compiled.asm["ttgir"], kernels_source()
    assert access_count(ttgir, "emerging_step_kernel", source, path) >= 2 * 10 + 3
