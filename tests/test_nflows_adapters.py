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
    AffineCouplingTransform,
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
def test_adapters_ignore_a_context_as_nflows_unconditional_transforms_do(adapter):
    """nflows' CompositeTransform passes a conditional model's context to every transform."""
    transform = randomize(adapter(4))
    x = torch.randn(2, 4, 6, 6)
    for direction in (transform, transform.inverse):
        with torch.no_grad():
            with_context = direction(x, context=torch.zeros(2, 3))
            without = direction(x, context=None)
        torch.testing.assert_close(with_context, without)


class ContextConvNet(torch.nn.Module):
    """A coupling network of nflows' interface, net(identity half, context): the context
    (batch, features) enters as constant extra channels."""

    def __init__(self, in_channels, out_channels, context_features):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels + context_features, out_channels, 3, padding=1)

    def forward(self, inputs, context):
        planes = context[:, :, None, None].expand(-1, -1, *inputs.shape[2:])
        return self.conv(torch.cat([inputs, planes], 1))


def test_conditional_nflows_flow_with_adapters():
    context_features = 3
    coupling = AffineCouplingTransform(
        torch.tensor([1, 1, -1, -1]),
        lambda c_in, c_out: ContextConvNet(c_in, c_out, context_features),
    )
    transform = CompositeTransform([coupling, QR1x1Transform(4), EmergingConv2dTransform(4)])
    flow = randomize(Flow(transform, StandardNormal([4, 6, 6])))
    x, context = torch.randn(5, 4, 6, 6), torch.randn(5, context_features)
    with torch.no_grad():
        z, log_det = transform(x, context=context)
        x_back, log_det_back = transform.inverse(z, context=context)
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(log_det_back, -log_det, atol=1e-4, rtol=1e-4)
        # the context matters (through the coupling) and log_prob is the change of variables
        other, _ = transform(x, context=context + 1)
        assert not torch.allclose(other, z)
        log_p = flow.log_prob(x, context=context)
        base = StandardNormal([4, 6, 6]).log_prob(z)
        torch.testing.assert_close(log_p, base + log_det)
        samples = flow.sample(2, context=context)
        assert samples.shape == (5, 2, 4, 6, 6)


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
