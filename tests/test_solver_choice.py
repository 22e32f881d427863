"""Per-layer solve setting, reachable inside normflows containers (issue 12, item 4)."""

import normflows as nf
import pytest
import torch

from normflows_emerging import (
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    SquareAutoregressiveConv2d,
    use_backend,
)


def two_level_model(solver, maf_solver="auto"):
    """A normflows MultiscaleFlow for 1 x 8 x 8 images built from normflows' own classes."""
    q0, flows, merges = [], [], []
    for level, (channels, side) in enumerate([(8, 2), (4, 4)]):
        flows.append(
            [
                EmergingConv2d(channels, 3, solver=solver),
                MaskedAffineAutoregressiveConv2d(channels, 4, solver=maf_solver),
                nf.flows.Squeeze(),
            ]
        )
        latent_channels = channels if level == 0 else channels // 2
        q0.append(nf.distributions.DiagGaussian((latent_channels, side, side)))
        if level > 0:
            merges.append(nf.flows.Merge())
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("solver", ["compiled", "torch", "naive"])
def test_layer_solver_reaches_every_solve_of_a_multiscale_flow(solver, solve_spy):
    model = two_level_model(solver)
    torch.manual_seed(1)
    x, _ = model.sample(2)
    assert solve_spy == [solver] * 4  # two emerging layers, two solves each
    torch.manual_seed(1)
    with use_backend("naive"):
        reference, _ = model.sample(2)
    torch.testing.assert_close(x, reference)


def test_use_backend_overrides_the_layer_solver(solve_spy):
    model = two_level_model("compiled")
    with use_backend("torch"):
        model.sample(1)
    assert solve_spy == ["torch"] * 4


def test_solver_attribute_can_be_changed_on_a_built_model(solve_spy):
    model = two_level_model("auto")
    model.sample(1)
    assert solve_spy == [None] * 4  # "auto": the solve picks its default
    for module in model.modules():
        if isinstance(module, EmergingConv2d):
            module.solver = "naive"
    solve_spy.clear()
    model.sample(1)
    assert solve_spy == ["naive"] * 4


def test_maf_solver_and_use_backend_inside_a_model(monkeypatch):
    calls = []
    for name in ("_solve_fast", "_solve_naive"):
        original = getattr(MaskedAffineAutoregressiveConv2d, name)
        monkeypatch.setattr(
            MaskedAffineAutoregressiveConv2d,
            name,
            lambda self, z, name=name, original=original: calls.append(name) or original(self, z),
        )
    model = two_level_model("auto", maf_solver="naive")
    model.sample(1)
    assert calls == ["_solve_naive"] * 2
    calls.clear()
    with use_backend("compiled"):  # a non-naive global choice means the fast MAF solve
        model.sample(1)
    assert calls == ["_solve_fast"] * 2


@pytest.mark.parametrize(
    "make",
    [
        lambda solver: SquareAutoregressiveConv2d(2, solver=solver),
        lambda solver: EmergingConv2d(2, solver=solver),
        lambda solver: MaskedAffineAutoregressiveConv2d(2, solver=solver),
    ],
)
def test_unknown_solver_is_rejected_in_constructor_and_attribute(make):
    with pytest.raises(ValueError, match="solver must be one of"):
        make("fortran")
    layer = make("auto")
    with pytest.raises(ValueError, match="solver must be one of"):
        layer.solver = "fortran"
    assert layer.solver == "auto" and "solver='auto'" in repr(layer)
