"""Eval-mode caches follow every way of changing a parameter's values (issue 9, item 5)."""

import copy

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from brute_force import perturb_
from normflows_emerging import EmergingConv2d, PeriodicConv2d, QR1x1, SquareAutoregressiveConv2d


def make_periodic():
    return perturb_(PeriodicConv2d(4, 3).double(), std=0.1)


def make_qr():
    return perturb_(QR1x1(4).double())


def make_autoregressive():
    return perturb_(SquareAutoregressiveConv2d(4, 2, flip=True).double(), std=0.1)


def make_emerging():
    return perturb_(EmergingConv2d(4, 3).double(), std=0.1)


def make_emerging_without_1x1():
    return perturb_(EmergingConv2d(4, 3, one_by_one="none").double(), std=0.1)


LAYERS = {"periodic": make_periodic, "qr": make_qr, "autoregressive": make_autoregressive,
          "emerging": make_emerging, "emerging without 1x1": make_emerging_without_1x1}


def fresh_outputs(layer, z, x):
    """Sampling and density outputs computed from scratch (training mode never caches)."""
    reference = copy.deepcopy(layer).train()
    with torch.no_grad():
        return reference(z), reference.inverse(x)


def other_values(layer, seed):
    """A state with different values for every parameter."""
    generator = torch.Generator().manual_seed(seed)
    return {name: p + 0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
            for name, p in layer.named_parameters()}


def by_inplace_no_grad(layer, new):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(new[name])


def by_data_assignment(layer, new):
    for name, p in layer.named_parameters():
        p.data = new[name].clone()


def by_data_copy(layer, new):
    for name, p in layer.named_parameters():
        p.data.copy_(new[name])


def by_load_state_dict(layer, new):
    layer.load_state_dict({**layer.state_dict(), **new})


def by_vector_to_parameters(layer, new):
    vector_to_parameters(parameters_to_vector([new[n] for n, _ in layer.named_parameters()]),
                         layer.parameters())


def by_ema_lerp(layer, new):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.lerp_(new[name], 0.5)


ROUTES = [by_inplace_no_grad, by_data_assignment, by_data_copy, by_load_state_dict,
          by_vector_to_parameters, by_ema_lerp]


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.__name__)
def test_cache_follows_every_route(make, route):
    layer = make().eval()
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        before = layer(z), layer.inverse(x)  # fills the cache
        torch.testing.assert_close((layer(z), layer.inverse(x)), before)  # served from it
    route(layer, other_values(layer, seed=1))
    with torch.no_grad():
        after = layer(z), layer.inverse(x)
    torch.testing.assert_close(after, fresh_outputs(layer, z, x))
    assert not torch.allclose(after[0][0], before[0][0])


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_cache_follows_replaced_tensors_when_addresses_are_reused(make):
    """Each new weight may reuse the freed storage of the previous one (same address)."""
    layer = make().eval()
    z = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for _ in range(6):
        with torch.no_grad():
            layer(z)
        for p in layer.parameters():
            new = p.detach() + 0.1 * torch.randn_like(p)
            p.data = torch.empty(0)  # frees the old storage: the copy below may land there
            p.data = new.clone()
        with torch.no_grad():
            torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])


def test_qr_cache_is_used_in_eval_mode_only(monkeypatch):
    layer = make_qr().eval()
    calls = []
    original = QR1x1.orthogonal
    monkeypatch.setattr(QR1x1, "orthogonal", lambda self: calls.append(1) or original(self))
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            layer(z)
    assert len(calls) == 1
    layer.train()
    with torch.no_grad():
        layer(z)
    assert len(calls) == 2
    layer.eval()
    layer(z)  # gradients recorded: nothing cached, so gradients reach the parameters
    assert len(calls) == 3


def count_kernel_assemblies(monkeypatch):
    """A list that grows by one with every autoregressive kernel assembly."""
    calls = []
    original = SquareAutoregressiveConv2d._assemble  # every kernel assembly goes through it
    monkeypatch.setattr(SquareAutoregressiveConv2d, "_assemble",
                        lambda self, log_d: calls.append(1) or original(self, log_d))
    return calls


def test_autoregressive_kernel_is_assembled_once_in_eval_mode(monkeypatch):
    layer = make_autoregressive().eval()
    calls = count_kernel_assemblies(monkeypatch)
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            layer(z)
            layer.inverse(z)
    assert len(calls) == 1
    layer(z)  # gradients recorded: assembled again, so they reach the parameters
    assert len(calls) == 2


@pytest.mark.parametrize("make", [make_autoregressive, make_emerging],
                         ids=["autoregressive", "emerging"])
def test_cache_follows_in_place_changes_of_constant_buffers(make):
    """Masks are watched by identity and version (cheaper than values): an in-place change or a
    replacement of a buffer is still seen."""
    layer = make().eval()
    z = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for buffer_name in ("mask", "corner_diagonal"):
        with torch.no_grad():
            layer(z)  # fills the cache
            for module in layer.modules():
                if isinstance(module, SquareAutoregressiveConv2d):
                    getattr(module, buffer_name)[0, 0, 0, 0] += 0.5
            torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])
    for module in layer.modules():
        if isinstance(module, SquareAutoregressiveConv2d):
            module.mask = module.mask * 0.5
    with torch.no_grad():
        torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])


def test_emerging_plan_is_built_once_in_eval_mode(monkeypatch):
    """Both directions of EmergingConv2d share one plan per parameter values in eval mode."""
    layer = make_emerging().eval()
    calls = count_kernel_assemblies(monkeypatch)
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        first = layer(z), layer.inverse(z)
        for _ in range(3):
            torch.testing.assert_close((layer(z), layer.inverse(z)), first)
    assert len(calls) == 2  # one kernel per autoregressive layer, once
    layer(z)  # gradients recorded: the plan is bypassed, so gradients reach the parameters
    assert len(calls) == 4
    with torch.no_grad():
        torch.testing.assert_close(first, fresh_outputs(layer, z, z))
