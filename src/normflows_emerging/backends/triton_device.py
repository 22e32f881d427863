"""Block sizes of the triton backend's kernels, from what a device allows one program (block).

A program of the kernels solves one image; its block sizes decide how many values each thread
holds in registers and how much shared memory Triton's layout conversions take. They follow two
budgets of the device: the 32-bit registers and the bytes of shared memory one block may use.
On a CUDA device both are queried from the driver (through Triton, as Triton checks them itself
before a launch); :data:`LIMITS` holds NVIDIA's published values per compute capability, used for
a device whose query fails, by the ahead-of-time compile tests and, as sm_80, for the kernels in
Triton's interpreter. The same block sizes come out for every capability in the table: the
kernels use at most 8 KiB of shared memory (well under the 48 KiB every device gives a block
without opting in) and, with ``maxnreg`` = registers per block / threads, spill no registers at
any C <= :data:`MAX_CHANNELS` in float32 or float64 on sm_80, sm_86, sm_89 and sm_90 (the compile
tests check it; ``benchmarks/triton_offline.py`` writes the counts).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

# Channel counts above this run the torch wavefront solve: the compile tests cover C <= 128.
MAX_CHANNELS = 128
# Registers a thread keeps at least: fewer would spill the (pixels, channels) accumulators.
_MIN_REGISTERS_PER_THREAD = 128


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What one block (program) may use on a device.

    Attributes:
      name: the device's name, or ``sm_<capability>`` for a row of :data:`LIMITS`
      shared_memory: bytes of shared memory per block, the opt-in maximum
        (``cudaDevAttrMaxSharedMemoryPerBlockOptin``; Triton opts in above 48 KiB)
      registers: 32-bit registers per block (``cudaDevAttrMaxRegistersPerBlock``)
      registers_per_thread: 32-bit registers one thread may use
      threads: threads per block
    """

    name: str
    shared_memory: int
    registers: int = 64 * 1024
    registers_per_thread: int = 255
    threads: int = 1024


# NVIDIA's published limits (CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability"; the same values in CCCL's cuda/__device/arch_traits.h): per block, shared memory
# is the multiprocessor's minus the 1 KiB the driver reserves from sm_80 on; 64 Ki registers,
# 255 per thread and 1024 threads everywhere.
LIMITS = {
    (7, 5): DeviceLimits("sm_75", 64 * 1024),  # T4, RTX 20xx
    (8, 0): DeviceLimits("sm_80", 163 * 1024),  # A100, A30
    (8, 6): DeviceLimits("sm_86", 99 * 1024),  # RTX 30xx, A10, A40, RTX A6000
    (8, 7): DeviceLimits("sm_87", 163 * 1024),  # Jetson Orin
    (8, 9): DeviceLimits("sm_89", 99 * 1024),  # RTX 40xx, L4, L40S, RTX 6000 Ada
    (9, 0): DeviceLimits("sm_90", 227 * 1024),  # H100, H200, GH200
    (10, 0): DeviceLimits("sm_100", 227 * 1024),  # B200, GB200
    (12, 0): DeviceLimits("sm_120", 99 * 1024),  # RTX 50xx, RTX PRO 6000 Blackwell
}
# The kernels in Triton's interpreter (CPU tensors) run the block sizes of an A100.
INTERPRETER_LIMITS = LIMITS[8, 0]


@functools.cache
def _cuda_limits(index: int) -> DeviceLimits:
    capability = torch.cuda.get_device_capability(index)
    name = f"{torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]})"
    try:
        from triton.runtime import driver

        properties = driver.active.utils.get_device_properties(index)
        return DeviceLimits(name, properties["max_shared_mem"], properties["max_num_regs"])
    except Exception:  # a driver Triton cannot query: NVIDIA's table, or its smallest row
        row = LIMITS.get(capability, min(LIMITS.values(), key=lambda r: r.shared_memory))
        return dataclasses.replace(row, name=name)


def device_limits(device: torch.device) -> DeviceLimits:
    """The budgets of one block on ``device``: queried once per CUDA device (no host sync),
    :data:`INTERPRETER_LIMITS` for CPU tensors (the kernels in Triton's interpreter)."""
    if device.type == "cuda":
        return _cuda_limits(device.index if device.index is not None else 0)
    return INTERPRETER_LIMITS


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _ceil_power_of_2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def shared_memory_bytes(blocks: dict, itemsize: int) -> int:
    """An upper bound of the shared memory Triton allocates for the kernels with ``blocks``:
    its layout conversions of the (BLOCK_P, BLOCK_C) accumulator, the (BLOCK_Q, BLOCK_C) 1x1
    tile, the (BLOCK_C, CHUNK) weight tiles and the (BLOCK_C, BLOCK_J) inverse block, all
    alive at once (the compile tests check it against Triton's own count)."""
    channels = blocks["BLOCK_C"]
    tiles = blocks["BLOCK_P"] + blocks["BLOCK_Q"] + blocks["CHUNK"] + blocks["BLOCK_J"]
    return itemsize * channels * tiles


def block_sizes(
    channels: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    limits: DeviceLimits,
    wide: bool = False,
) -> dict | None:
    """Block sizes and launch options of the kernels for a (B, channels, height, width) input of
    ``dtype`` on a device with ``limits``, or None when no configuration fits its budgets (or
    channels > :data:`MAX_CHANNELS`): the solve then runs the torch wavefront.

    Per program: BLOCK_P pixels of a diagonal x BLOCK_C channels per step, input channels CHUNK
    at a time, BLOCK_Q pixels per step of the 1x1 pass, the corner's inverse BLOCK_J columns at
    a time; ``num_warps`` warps of 32 threads, ``maxnreg`` registers each (all of the block's
    registers for the one program: ptxas otherwise keeps room for two programs and spills).
    Per thread, with 255 registers: 4 float32 (2 float64) values of a (pixels, channels)
    accumulator, 4 times as many of a (pixels, channels, CHUNK) product (CHUNK <= 16) and of the
    inverse's block; with 128 registers (16 warps, C > 64) the float32 counts halve. With ``wide``
    (64-bit offsets, see ``triton_solve.needs_wide_indices``: an offset then takes two
    registers) the accumulator halves, the product and the inverse's block quarter.
    """
    max_warps = min(limits.threads, limits.registers // _MIN_REGISTERS_PER_THREAD) // 32
    if channels > MAX_CHANNELS or max_warps < 1:
        return None
    block_c = _ceil_power_of_2(channels)
    num_warps = min(max(4, min(16, block_c * block_c // (32 * 16))), _floor_power_of_2(max_warps))
    threads = 32 * num_warps
    maxnreg = min(limits.registers_per_thread, limits.registers // threads)
    # values per thread of a (pixels, channels) tile, and of the products and the inverse's
    # block as many times that
    tile = (4 if dtype.itemsize <= 4 and maxnreg >= 255 else 2) // (2 if wide else 1)
    depth = 2 if wide else 4
    diagonal = _ceil_power_of_2(min(height, width))
    block_p = max(1, min(diagonal, tile * threads // block_c))
    blocks = dict(
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        CHUNK=max(1, min(block_c, 16, depth * tile * threads // (block_p * block_c))),
        BLOCK_Q=max(1, min(_ceil_power_of_2(height * width), tile * threads // block_c)),
        BLOCK_J=max(1, min(block_c, depth * tile * threads // block_c)),
    )
    # Smaller tiles until the shared memory fits (only a device with a small budget needs it).
    tiles = ("BLOCK_P", "BLOCK_Q", "BLOCK_J")
    while shared_memory_bytes(blocks, dtype.itemsize) > limits.shared_memory:
        if all(blocks[name] == 1 for name in tiles):
            return None
        blocks.update({name: max(1, blocks[name] // 2) for name in tiles})
    return dict(blocks, num_warps=num_warps, maxnreg=maxnreg)
