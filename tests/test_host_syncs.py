"""Sampling reads no device value on the host along the GPU code path (issue 17, item 2).

Counted on CPU tensors made to take the GPU path (``accelerator_path`` of
benchmarks/dispatch_count.py): a sync is an aten op that hands a device value to the host
(``.item()``, ``bool(t)``, ``torch.equal``, ``nonzero``, ``lift_fresh``).
"""

import pytest
import torch

from brute_force import perturb_
from dispatch_count import DispatchCount, accelerator_path
from normflows_emerging import (
    Chain,
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_glow,
    build_mixing,
    use_backend,
)
from normflows_emerging.errors import NonFiniteError
from normflows_emerging.glow import glow_coupling
from test_value_cache import ROUTES, by_data_copy, fresh_outputs, other_values

LAYERS = {
    "autoregressive": lambda: SquareAutoregressiveConv2d(4, 2, flip=True),
    "emerging": lambda: EmergingConv2d(4, 3),
    "emerging without 1x1": lambda: EmergingConv2d(4, 3, one_by_one="none"),
    "emerging plu": lambda: EmergingConv2d(4, 3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(4, 3),
    "qr": lambda: QR1x1(4),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(4, 8),
}


def make(name):
    return perturb_(LAYERS[name]().double(), std=0.05)


def sampling_syncs(layer, z, calls=3):
    """Syncs of ``calls`` sampling calls on the GPU path, the first one filling the caches."""
    with accelerator_path(), use_backend("torch"), DispatchCount() as counter:
        for _ in range(calls):
            layer(z)
    return counter


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("mode", ["eval, no_grad", "eval, grad", "train"])
def test_layer_sampling_reads_no_device_value(name, mode):
    layer = make(name).train(mode == "train")
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.set_grad_enabled(mode == "eval, grad"):
        counter = sampling_syncs(layer, z)
    assert counter.aten_ops > 0
    assert counter.total_syncs == 0, counter.syncs


def test_the_cpu_path_still_checks_and_reads():
    """Outside the GPU path the per-layer checks run (they read values): the counter sees them."""
    layer = make("emerging").eval()
    with use_backend("torch"), DispatchCount() as counter:
        layer(torch.randn(1, 4, 5, 6, dtype=torch.float64))
    assert counter.total_syncs > 0


def model(mixing, **kwargs):
    """A two-level model of coupling + mixing steps (no ActNorm: its "initialised?" check is not
    this package's), sampled once so that every cache is filled."""

    def make_step(channels):
        return Chain([glow_coupling(channels, 8), build_mixing(mixing, channels, **kwargs)])

    torch.manual_seed(0)
    flow = build_glow((3, 16, 16), 2, 2, make_step).double().eval()
    perturb_(flow, std=0.02)
    return flow


@pytest.mark.parametrize(
    "mixing, kwargs",
    [("emerging", {}), ("periodic", {}), ("qr", {}), ("maf", {"maf_hidden_channels": 8})],
    ids=["emerging", "periodic", "qr", "maf"],
)
def test_model_sample_syncs_once(mixing, kwargs):
    """One finiteness check per ImageMultiscaleFlow.sample call, nothing per layer."""
    flow = model(mixing, **kwargs)
    with torch.no_grad(), accelerator_path(), use_backend("torch"):
        flow.sample(2)
        with DispatchCount() as counter:
            x, log_p = flow.sample(2)
    assert counter.total_syncs == 1, counter.syncs
    assert torch.isfinite(x).all() and torch.isfinite(log_p).all()


def test_model_reports_a_non_finite_sample_with_its_one_check():
    """A zero reflection vector: the GPU path skips the layer's check (a read), the sample comes
    out NaN and the model's one check reports it."""
    flow = model("qr")
    qr = next(m for m in flow.modules() if isinstance(m, QR1x1))
    with torch.no_grad():
        qr.reflections[0] = 0.0
    with accelerator_path(), DispatchCount() as counter, pytest.raises(NonFiniteError):
        flow.sample(1)
    assert counter.total_syncs == 1, counter.syncs
    with pytest.raises(torch.linalg.LinAlgError, match="reflection vector 0"):
        flow.sample(1)  # the CPU path names the cause


@pytest.mark.parametrize("name", ["autoregressive", "emerging", "periodic", "qr"])
@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r is not by_data_copy], ids=lambda route: route.__name__
)
def test_gpu_path_cache_follows_every_route_but_writes_through_data(name, route):
    layer = make(name).eval()
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with accelerator_path(), use_backend("torch"), torch.no_grad():
        before = layer(z), layer.inverse(z)
        route(layer, other_values(layer, seed=1))
        after = layer(z), layer.inverse(z)
        torch.testing.assert_close(after, fresh_outputs(layer, z, z))
    assert not torch.allclose(after[0][0], before[0][0])


@pytest.mark.parametrize("name", ["autoregressive", "emerging", "periodic", "qr"])
def test_gpu_path_cache_misses_writes_through_data_until_the_mode_is_set(name):
    """Documented limit: ``p.data.copy_`` bumps no version counter the parameter shares, and the
    GPU path compares no values; ``eval()`` (or ``train()``) drops the cache."""
    layer = make(name).eval()
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with accelerator_path(), use_backend("torch"), torch.no_grad():
        layer(z)  # fills the cache
        by_data_copy(layer, other_values(layer, seed=1))
        fresh = fresh_outputs(layer, z, z)[0]
        assert not torch.allclose(layer(z)[0], fresh[0])  # served from the stale cache
        layer.eval()
        torch.testing.assert_close(layer(z), fresh)


def test_class_conditional_sample_reads_the_labels_once():
    """Given labels are range-checked with one read, then the samples' one finiteness check."""

    def make_step(channels):
        return Chain([glow_coupling(channels, 8), build_mixing("emerging", channels)])

    flow = build_glow((3, 16, 16), 2, 1, make_step, num_classes=3).eval()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad(), accelerator_path(), use_backend("torch"):
        flow.sample(2)
        with DispatchCount() as drawn:
            flow.sample(2)
        with DispatchCount() as given:
            flow.sample(y=labels)
    assert drawn.total_syncs == 1, drawn.syncs
    assert given.total_syncs == 2, given.syncs
