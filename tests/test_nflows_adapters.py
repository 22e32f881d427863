"""nflows adapters: directions flipped, same log-dets as the normflows layers, nflows composites."""

import importlib
import subprocess
import sys

import normflows as nf
import pytest
import torch

pytest.importorskip("nflows")
from nflows.distributions import StandardNormal  # noqa: E402
from nflows.flows import Flow  # noqa: E402
from nflows.transforms import (  # noqa: E402
    CompositeTransform,
    MultiscaleCompositeTransform,
    SqueezeTransform,
)

from normflows_emerging.nflows import (  # noqa: E402
    EmergingConv2dTransform,
    FlowTransform,
    PeriodicConv2dTransform,
    QR1x1Transform,
)

ADAPTERS = [EmergingConv2dTransform, PeriodicConv2dTransform, QR1x1Transform]


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def randomize(module):
    """Move every parameter away from its (often identity) initialisation."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_same_log_dets_as_the_normflows_layer(adapter):
    transform = randomize(adapter(2).double())
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    z, log_det = transform(x)
    z_ref, log_det_ref = transform.flow.inverse(x)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(log_det, log_det_ref)
    x_back, log_det_back = transform.inverse(z)
    x_ref, log_det_back_ref = transform.flow(z)
    torch.testing.assert_close(x_back, x_ref)
    torch.testing.assert_close(log_det_back, log_det_back_ref)
    torch.testing.assert_close(x_back, x)

    def flat_map(v):
        return transform(v.view(1, 2, 3, 4))[0].view(-1)

    jacobian = torch.autograd.functional.jacobian(flat_map, x[0].reshape(-1))
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jacobian)[1])


def test_composite_round_trip():
    transform = randomize(
        CompositeTransform(
            [EmergingConv2dTransform(4), PeriodicConv2dTransform(4), QR1x1Transform(4)]
        ).double()
    )
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    z, log_det = transform(x)
    h, expected = x, 0
    for part in transform._transforms:
        h, part_log_det = part.flow.inverse(h)
        expected = expected + part_log_det
    torch.testing.assert_close(z, h)
    torch.testing.assert_close(log_det, expected)
    x_back, log_det_back = transform.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det_back, -log_det)


def multiscale_transform():
    """Two levels: emerging + QR on (4, 6, 6); half of it squeezed to (8, 3, 3) + periodic."""
    transform = MultiscaleCompositeTransform(2)
    hidden_shape = transform.add_transform(
        CompositeTransform([EmergingConv2dTransform(4), QR1x1Transform(4)]), (4, 6, 6)
    )
    assert hidden_shape == (2, 6, 6)
    transform.add_transform(
        CompositeTransform([SqueezeTransform(), PeriodicConv2dTransform(8)]), (8, 3, 3)
    )
    return randomize(transform)


def test_multiscale_round_trip():
    transform = multiscale_transform().double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    z, log_det = transform(x)
    assert z.shape == (2, 144)
    x_back, log_det_back = transform.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det_back, -log_det)


def test_nflows_flow_sample_and_log_prob():
    flow = Flow(multiscale_transform(), StandardNormal([144]))  # nflows samples in float32
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(3)
        assert x.shape == (3, 4, 6, 6)
        torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-3, rtol=1e-4)


def test_flow_transform_broadcasts_scalar_log_det():
    transform = FlowTransform(nf.flows.Invertible1x1Conv(3))
    x = torch.randn(4, 3, 2, 2)
    z, log_det = transform(x)
    assert log_det.shape == (4,)
    x_back, log_det_back = transform.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det_back, -log_det)


def test_clear_import_error_without_nflows(monkeypatch):
    monkeypatch.setitem(sys.modules, "nflows", None)
    monkeypatch.setitem(sys.modules, "nflows.transforms", None)
    monkeypatch.delitem(sys.modules, "normflows_emerging.nflows")
    with pytest.raises(ImportError, match="pip install nflows"):
        importlib.import_module("normflows_emerging.nflows")


def test_core_package_imports_without_nflows():
    code = (
        "import sys; sys.modules['nflows'] = None; "
        "import normflows_emerging, normflows_emerging.mixing, "
        "normflows_emerging.glow, normflows_emerging.multiscale, normflows_emerging.likelihood"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flow_transform_refuses_what_is_not_a_flow():
    with pytest.raises(TypeError, match="normflows.flows.Flow, got Conv2d"):
        FlowTransform(torch.nn.Conv2d(3, 3, 1))


class PerPixelLogDet(nf.flows.Flow):
    """A faulty flow: its log_det has shape (batch, 1) instead of (batch,)."""

    def forward(self, z):
        return z, z.new_zeros(len(z), 1)

    def inverse(self, x):
        return x, x.new_ones(len(x), 1)


def test_flow_transform_refuses_log_dets_that_broadcast_to_a_matrix():
    transform = FlowTransform(PerPixelLogDet())
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"log_det of shape \(4, 1\).*\(4,\)"):
        transform(x)
    with pytest.raises(ValueError, match=r"log_det of shape \(4, 1\)"):
        transform.inverse(x)


def test_named_adapters_pass_their_arguments_on():
    assert EmergingConv2dTransform(4, 5).flow.kernel_size == 5
    assert PeriodicConv2dTransform(4, kernel_size=5).flow.kernel_size == 5
    assert QR1x1Transform(4, num_reflections=2).flow.num_reflections == 2
    with pytest.raises(ValueError):
        EmergingConv2dTransform(4, 4)  # even kernel: the layer's own error comes through


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_refuse_a_context_they_cannot_use(adapter):
    """nflows passes a context to every transform when log_prob or sample get one; the
    unconditional layers must say so instead of returning what they return without it."""
    transform = adapter(4)
    x = torch.randn(2, 4, 6, 6)
    for direction in (transform, transform.inverse):
        with pytest.raises(ValueError, match=f"{adapter.__name__} is unconditional"):
            direction(x, context=torch.zeros(2, 3))
        assert direction(x, context=None)[0].shape == x.shape


def test_adapters_have_the_layers_signatures():
    """Explicit constructor arguments (not ``*args, **kwargs``): help() and editors show them,
    and a misspelt one is refused by the adapter itself."""
    import inspect

    assert list(inspect.signature(EmergingConv2dTransform).parameters) == [
        "num_channels",
        "kernel_size",
        "one_by_one",
        "solver",
    ]
    assert list(inspect.signature(PeriodicConv2dTransform).parameters) == [
        "num_channels",
        "kernel_size",
        "bias",
    ]
    assert list(inspect.signature(QR1x1Transform).parameters) == ["num_channels", "num_reflections"]
    with pytest.raises(TypeError, match="kernel_sise"):
        EmergingConv2dTransform(4, kernel_sise=5)
