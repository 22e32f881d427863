import os
import sys

import pytest
import torch

import normflows_emerging.flows.autoregressive as autoregressive_module

# Test helpers (brute_force, solve_cases) and the benchmarks' tools the tests share
# (dispatch_count, triton_offline) import by name.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def solve_spy(monkeypatch):
    """List of the ``backend`` argument of every autoregressive solve a layer makes (None: default).

    The solves still run: the spy wraps :func:`normflows_emerging.solve.solve_autoregressive`
    where the layers call it.
    """
    calls = []
    solve = autoregressive_module.solve_autoregressive

    def spy(rhs, kernel, dilation, backend):
        calls.append(backend)
        return solve(rhs, kernel, dilation, backend)

    monkeypatch.setattr(autoregressive_module, "solve_autoregressive", spy)
    return calls


@pytest.fixture
def interpreted_triton(monkeypatch):
    """The ``"triton"`` backend runs its kernels in Triton's interpreter (CPU tensors) in this
    test, whatever the environment and whichever test ran before (a fresh interpreted copy of
    the kernels module, see ``benchmarks/triton_offline.py``)."""
    pytest.importorskip("triton")
    from triton_offline import KERNELS, load_kernels

    monkeypatch.setitem(sys.modules, KERNELS, load_kernels(True))


@pytest.fixture(autouse=True)
def _triton_backend_in_interpreter(request):
    """Tests parametrized over the backends run the triton one in the interpreter."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "triton":
        request.getfixturevalue("interpreted_triton")
