"""Asking for the triton backend where it cannot run gives one clear error saying what to do."""

import sys

import pytest
import torch

import normflows_emerging.backends.triton_solve as triton_solve
from normflows_emerging import SquareAutoregressiveConv2d
from normflows_emerging.solve import solve_autoregressive
from solve_cases import random_causal_kernel

KERNELS = "normflows_emerging.backends.triton_kernels"


def test_cpu_tensor_outside_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delitem(sys.modules, KERNELS, raising=False)  # not loaded yet: the env decides
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernel = random_causal_kernel(2, 2, torch.float32)
    with pytest.raises(ValueError, match="runs on CUDA tensors.*'compiled' or 'torch'.*TRITON_INT"):
        solve_autoregressive(torch.randn(1, 2, 3, 3), kernel, 1, "triton")
    assert KERNELS not in sys.modules  # refused before Triton defined any kernel


def test_triton_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.setattr(triton_solve, "_import_error", triton_solve._import_error.__wrapped__)
    layer = SquareAutoregressiveConv2d(2, solver="triton").eval()
    with pytest.raises(RuntimeError, match="triton solve is not available.*pip install triton"):
        layer(torch.randn(1, 2, 3, 3))


def test_other_dtypes(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delitem(sys.modules, KERNELS, raising=False)
    with pytest.raises(TypeError, match="float32 or float64, got torch.float16"):
        triton_solve.solve_triton(torch.randn(1, 2, 3, 3).half(), torch.randn(2, 2, 2, 2).half())
