import os
import sys

import pytest
import torch

import normflows_emerging.flows.autoregressive as autoregressive_module

sys.path.insert(0, os.path.dirname(__file__))


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
