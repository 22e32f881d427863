"""The triton backend's block sizes follow a device's register and shared-memory budgets, and the
backend states the oldest triton it runs with. Pure Python: no kernel runs here."""

import pathlib
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normflows_emerging.backends.triton_solve as triton_solve
from normflows_emerging.backends.triton_device import (
    INTERPRETER_LIMITS,
    LIMITS,
    MAX_CHANNELS,
    DeviceLimits,
    block_sizes,
    device_limits,
    shared_memory_bytes,
)

DTYPES = (torch.float32, torch.float64)


def test_nvidia_limits_of_the_capabilities_users_meet():
    """Shared memory per block (opt-in) as NVIDIA publishes it: the multiprocessor's minus 1 KiB
    from sm_80 on; 64 Ki registers per block everywhere."""
    kib = {row.name: row.shared_memory // 1024 for row in LIMITS.values()}
    assert kib == {
        "sm_75": 64, "sm_80": 163, "sm_86": 99, "sm_87": 163, "sm_89": 99, "sm_90": 227,
        "sm_100": 227, "sm_120": 99,
    }  # fmt: skip
    assert {(row.registers, row.registers_per_thread, row.threads) for row in LIMITS.values()} == {
        (65536, 255, 1024)
    }
    assert device_limits(torch.device("cpu")) is INTERPRETER_LIMITS is LIMITS[8, 0]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    channels=st.integers(1, MAX_CHANNELS),
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    double=st.booleans(),
    wide=st.booleans(),
    row=st.sampled_from(sorted(LIMITS)),
)
def test_blocks_fit_every_device_in_the_table(channels, height, width, double, wide, row):
    dtype = DTYPES[double]
    limits = LIMITS[row]
    blocks = block_sizes(channels, height, width, dtype, limits, wide)
    threads = 32 * blocks["num_warps"]
    assert threads <= limits.threads
    assert blocks["maxnreg"] <= limits.registers_per_thread
    assert threads * blocks["maxnreg"] <= limits.registers
    assert shared_memory_bytes(blocks, dtype.itemsize) <= limits.shared_memory
    assert channels <= blocks["BLOCK_C"] < 2 * channels
    assert blocks["BLOCK_P"] <= max(1, 2 * min(height, width) - 1)
    # per thread, what the compile tests found to fit without spills
    values = 4 if dtype == torch.float32 and blocks["maxnreg"] >= 255 else 2
    values //= 2 if wide else 1
    depth = 2 if wide else 4
    assert blocks["BLOCK_P"] * blocks["BLOCK_C"] <= values * threads
    assert blocks["BLOCK_Q"] * blocks["BLOCK_C"] <= values * threads
    assert blocks["BLOCK_P"] * blocks["BLOCK_C"] * blocks["CHUNK"] <= depth * values * threads
    assert blocks["BLOCK_C"] * blocks["BLOCK_J"] <= depth * values * threads
    # the same blocks on every device of the table (their budgets are all far above the need)
    for other in LIMITS.values():
        assert block_sizes(channels, height, width, dtype, other, wide) == blocks


def test_smaller_budgets_get_smaller_blocks_or_none():
    dtype = torch.float64
    full = block_sizes(128, 64, 64, dtype, LIMITS[9, 0])
    need = shared_memory_bytes(full, dtype.itemsize)
    small = block_sizes(128, 64, 64, dtype, DeviceLimits("small", need // 2), False)
    assert shared_memory_bytes(small, dtype.itemsize) <= need // 2
    assert small["BLOCK_P"] < full["BLOCK_P"] and small["BLOCK_C"] == 128
    assert block_sizes(128, 64, 64, dtype, DeviceLimits("tiny", 1024)) is None
    # half the registers: half the warps, as many registers per thread
    half = block_sizes(128, 64, 64, dtype, DeviceLimits("half", need, registers=32768))
    assert half["num_warps"] == full["num_warps"] // 2 and half["maxnreg"] == full["maxnreg"]
    assert block_sizes(MAX_CHANNELS + 1, 4, 4, dtype, LIMITS[9, 0]) is None


def test_an_older_triton_is_unavailable_with_the_reason(monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", "3.3.1")
    monkeypatch.setattr(triton_solve, "_import_error", triton_solve._import_error.__wrapped__)
    reason = triton_solve.unavailable_reason()
    assert "triton 3.3.1 is older than 3.4" in reason and "'torch' backend" in reason
    monkeypatch.setattr(triton, "__version__", "3.4.0+git1234")
    assert triton_solve.unavailable_reason() is None


def test_a_missing_triton_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setattr(triton_solve, "_import_error", triton_solve._import_error.__wrapped__)
    assert "pip install triton" in triton_solve.unavailable_reason()


def test_the_floor_is_the_one_ci_tests():
    """``MIN_TRITON``, the floor of pyproject's ``triton`` extra and the triton that .ci/run
    installs for its second run of the triton tests agree."""
    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).resolve().parents[1]
    floor = ".".join(map(str, triton_solve.MIN_TRITON))
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    [requirement] = project["optional-dependencies"]["triton"]
    assert requirement.startswith(f"triton>={floor};")
    assert f"\nTRITON_FLOOR={floor}.0\n" in (root / ".ci" / "run").read_text()
