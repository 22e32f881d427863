"""Parameter counts: hand counts, a gradient brute force, and width matching."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from brute_force import perturb_
from normflows_emerging import EmergingConv2d, QR1x1, SquareAutoregressiveConv2d
from normflows_emerging.glow import glow_coupling
from normflows_emerging.mixing import build_mixing, mixing_layers
from normflows_emerging.multiscale import build_multiscale_flow
from normflows_emerging.parameters import (
    ParameterCount,
    count_parameters,
    free_entries,
    register_free_entries,
    register_redundancy,
    widest_within_budget,
)


def gradient_used_entries(module, loss, trials=8):
    """Brute force: entries of the trainable parameters whose gradient is non-zero for some trial.

    Each trial perturbs the parameters away from their initial values (zero-initialised layers
    otherwise hide their inputs' gradients) and draws a fresh loss; small perturbations keep
    the MAF layers' tanh from saturating (float64 tanh is exactly 1 beyond about 19).
    """
    used = {id(p): torch.zeros(p.shape, dtype=torch.bool) for p in module.parameters()}
    for trial in range(trials):
        perturb_(module, std=0.05, generator=torch.Generator().manual_seed(trial))
        module.zero_grad()
        loss(module).backward()
        for p in module.parameters():
            if p.grad is not None:
                used[id(p)] |= p.grad != 0
    return sum(int(mask.sum()) for mask in used.values())


def layer_loss(channels, size=5):
    """Random scalar of a layer's density pass: random projection of the output plus log-det."""

    def loss(layer):
        x = torch.randn(4, channels, size, size + 1, dtype=torch.float64)
        z, log_det = layer.inverse(x)
        return (z * torch.randn_like(z)).sum() + log_det.sum()

    return loss


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 6), size=st.integers(1, 3))
def test_autoregressive_conv_counts_match_hand_counts(channels, size):
    count = count_parameters(SquareAutoregressiveConv2d(channels, size=size))
    # weight C*C*m*m (the corner tap's diagonal and upper triangle are masked out), bias, log_d
    assert count.total == channels * channels * size * size + 2 * channels
    assert count.degrees_of_freedom == count.used == count.total - channels * (channels + 1) // 2


@settings(max_examples=10, deadline=None)
@given(channels=st.integers(1, 6))
def test_qr_and_emerging_counts_match_hand_counts(channels):
    # W = QR has C^2 degrees of freedom: the Householder vectors' lengths are not free
    qr_used = channels * channels + channels * (channels - 1) // 2 + channels
    assert count_parameters(QR1x1(channels)) == ParameterCount(
        2 * channels * channels + channels, channels * channels, qr_used
    )
    autoregressive = 4 * channels * channels - channels * (channels + 1) // 2 + 2 * channels
    # a lower-triangular channel mixing moves between the 1x1 and the causal convolution, and
    # another between the two autoregressive ones: C (C + 1) directions in all
    count = count_parameters(EmergingConv2d(channels, kernel_size=3))
    assert count.used == qr_used + 2 * autoregressive
    assert count.degrees_of_freedom == channels * channels + 2 * autoregressive - channels * (
        channels + 1
    )


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_plu_and_plain_1x1_have_channels_squared_effective_parameters(channels):
    plu = count_parameters(build_mixing("plu", channels))
    assert plu == ParameterCount(2 * channels * channels + channels, *[channels * channels] * 2)
    assert count_parameters(build_mixing("1x1", channels)) == ParameterCount(
        *[channels * channels] * 3
    )


@pytest.mark.parametrize("mixing", mixing_layers())
def test_used_count_equals_gradient_brute_force_for_each_mixing(mixing):
    layer = build_mixing(mixing, 3).double()
    assert count_parameters(layer).used == gradient_used_entries(layer, layer_loss(3))


def jacobian_rank(layer, channels, size=(5, 6), batch=2, seed=0):
    """Brute force of the degrees of freedom: rank of d(output, log-det)/d(parameters) of the
    density pass, float64, at random parameters away from their initial values."""
    layer = perturb_(layer.double().train(), 0.3, torch.Generator().manual_seed(seed))
    names = [name for name, p in layer.named_parameters() if p.requires_grad]
    values = {name: p.detach().clone() for name, p in layer.named_parameters()}
    x = torch.randn(batch, channels, *size, dtype=torch.float64)

    class Density(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer.inverse(x)

    def outputs(flat):
        params, start = dict(values), 0
        for name in names:
            params[name] = flat[start : start + values[name].numel()].view_as(values[name])
            start += values[name].numel()
        out, log_det = torch.func.functional_call(
            Density(), {f"layer.{k}": v for k, v in params.items()}, (x,)
        )
        return torch.cat([out.reshape(-1), log_det.reshape(-1)])

    flat = torch.cat([values[name].reshape(-1) for name in names])
    jacobian = torch.autograd.functional.jacobian(outputs, flat)
    assert jacobian.shape[0] > jacobian.shape[1], "too few outputs to measure the rank"
    return int(torch.linalg.matrix_rank(jacobian))


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("mixing", [m for m in mixing_layers() if m != "maf"])
def test_effective_count_equals_jacobian_rank_for_each_mixing(mixing, channels):
    layer = build_mixing(mixing, channels)
    assert count_parameters(layer).degrees_of_freedom == jacobian_rank(layer, channels)


@pytest.mark.parametrize("channels, reflections", [(1, 0), (3, 1), (4, 2), (4, 3), (3, 5)])
def test_qr_degrees_of_freedom_for_any_number_of_reflections(channels, reflections):
    layer = QR1x1(channels, reflections)
    assert count_parameters(layer).degrees_of_freedom == jacobian_rank(layer, channels)


@pytest.mark.parametrize("one_by_one", ["qr", "plu", "none"])
@pytest.mark.parametrize("channels, kernel_size", [(2, 3), (3, 5)])
def test_emerging_degrees_of_freedom(one_by_one, channels, kernel_size):
    layer = EmergingConv2d(channels, kernel_size, one_by_one=one_by_one)
    assert count_parameters(layer).degrees_of_freedom == jacobian_rank(layer, channels, (6, 7))


@pytest.mark.parametrize("channels, hidden", [(2, 3), (4, 3)])
def test_coupling_degrees_of_freedom_drop_one_per_hidden_unit(channels, hidden):
    coupling = glow_coupling(channels, hidden, leaky=0.1)  # no dead units on the probe data
    count = count_parameters(coupling)
    assert count.degrees_of_freedom == count.used - 2 * hidden
    assert count.degrees_of_freedom == jacobian_rank(coupling, channels, batch=4)


@pytest.mark.parametrize("mixing", ["plu", "emerging"])
def test_effective_count_equals_gradient_brute_force_for_a_whole_model(mixing):
    model = build_multiscale_flow((1, 8, 8), 1, 1, 6, mixing=mixing).double()
    for module in model.modules():  # no dead ReLU units in the couplings: every weight matters
        if isinstance(module, nn.LeakyReLU):
            module.negative_slope = 0.1

    def loss(model):
        x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
        return -model.log_prob(x, None).sum()

    count = count_parameters(model)
    assert count.used == gradient_used_entries(model, loss)
    assert count.total > count.used > count.degrees_of_freedom


def test_shared_and_frozen_parameters():
    shared = nn.Linear(3, 2)
    model = nn.Sequential(shared, shared, nn.Linear(2, 2))
    model[2].bias.requires_grad_(False)
    assert count_parameters(model) == ParameterCount(8 + 4, 8 + 4, 8 + 4)


def test_registered_rule_and_mask_convention_apply_to_user_layers():
    class Diagonal(nn.Module):
        def __init__(self):
            super().__init__()
            self.matrix = nn.Parameter(torch.ones(4, 4))

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 3))
            self.register_buffer("mask", torch.tensor([[1.0], [0.0]]))  # broadcasts to (2, 3)

    register_free_entries(Diagonal, lambda layer: {"matrix": torch.eye(4)})
    assert count_parameters(Diagonal()) == ParameterCount(16, 4, 4)
    assert free_entries(Masked())["weight"].tolist() == [[True] * 3, [False] * 3]
    assert count_parameters(Masked()) == ParameterCount(6, 3, 3)
    register_redundancy(Masked, lambda layer: 1)
    assert count_parameters(Masked()) == ParameterCount(6, 2, 3)
    with pytest.raises(TypeError, match="must be a class"):
        register_free_entries("Diagonal", lambda layer: {})
    with pytest.raises(TypeError, match="must be callable"):
        register_redundancy(Masked, 1)


def test_widest_within_budget_equals_a_linear_scan():
    def build(width):
        return build_multiscale_flow((1, 8, 8), 1, 1, width, mixing="emerging")

    budget = count_parameters(
        build_multiscale_flow((1, 8, 8), 1, 1, 12, mixing="1x1")
    ).degrees_of_freedom
    scan = max(w for w in range(1, 13) if count_parameters(build(w)).degrees_of_freedom <= budget)
    assert widest_within_budget(build, budget, 12) == scan < 12
    assert widest_within_budget(build, 10**9, 12) == 12
    with pytest.raises(ValueError, match="even width 1"):
        widest_within_budget(build, 10, 16)


@pytest.mark.parametrize("model", [None, [nn.Linear(2, 2)], torch.zeros(3)])
def test_count_parameters_of_a_non_module_is_a_type_error(model):
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters(model)


def test_the_count_is_named_degrees_of_freedom_and_effective_is_deprecated():
    """Issue 24: one number had three names (effective, degrees of freedom, parameters)."""
    count = count_parameters(QR1x1(4))
    assert repr(count) == "ParameterCount(total=36, degrees_of_freedom=16, used=26)"
    with pytest.warns(DeprecationWarning, match="degrees_of_freedom"):
        assert count.effective == count.degrees_of_freedom == 16
