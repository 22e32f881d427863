"""register_backend checks its arguments; a raising availability check means unavailable."""

import pytest
import torch

from normflows_emerging import solve
from normflows_emerging.solve import inverse_backend, register_backend, solve_wavefront


@pytest.fixture
def backends(monkeypatch):
    """Register into a copy of the registry, restored after the test."""
    monkeypatch.setattr(solve, "_BACKENDS", dict(solve._BACKENDS))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"solve": None}, "solve must be callable"),
        ({"solve": 3}, "solve must be callable"),
        ({"default_for": "cpu"}, "default_for must be a tuple"),
        ({"default_for": ["cpu"]}, "default_for must be a tuple"),
        ({"default_for": (1,)}, "default_for must be a tuple"),
        ({"unavailable_reason": "no"}, "unavailable_reason must be callable"),
        ({"emerging_step": 1}, "emerging_step must be callable"),
    ],
)
def test_bad_registration_is_a_type_error(backends, kwargs, message):
    arguments = {"solve": solve_wavefront, **kwargs}
    with pytest.raises(TypeError, match=message):
        register_backend("bad", arguments.pop("solve"), **arguments)
    assert "bad" not in solve.backend_names()


def test_raising_unavailable_reason_counts_as_unavailable(backends):
    def broken():
        raise OSError("cannot load the library")

    register_backend("broken", solve_wavefront, default_for=("meta",), unavailable_reason=broken)
    with pytest.warns(RuntimeWarning, match="OSError: cannot load the library"):
        assert inverse_backend(torch.device("meta")) == "torch"


def test_available_default_is_chosen(backends):
    register_backend("fine", solve_wavefront, default_for=("meta",))
    assert inverse_backend(torch.device("meta")) == "fine"
