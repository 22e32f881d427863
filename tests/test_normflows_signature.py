"""Every layer has normflows' signatures, forward(z, context=None) and inverse(x, context=None),
and passes normflows' own FlowTest checks (issue 20, item 6)."""

import inspect

import normflows as nf
import pytest
import torch
from normflows.flows.flow_test import FlowTest

from brute_force import perturb_
from normflows_emerging import (
    Chain,
    EmergingConv2d,
    GlowStep,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)
from normflows_emerging.mixing import MAFMixing


def glow_step():
    step = GlowStep(4, 8, mixing="emerging").double()
    step.inverse(torch.randn(5, 4, 5, 6, dtype=torch.float64))  # initialises its ActNorm
    return step


LAYERS = {
    "autoregressive": lambda: SquareAutoregressiveConv2d(4, 2).double(),
    "autoregressive flipped": lambda: SquareAutoregressiveConv2d(4, 3, flip=True).double(),
    "emerging": lambda: EmergingConv2d(4, 3).double(),
    "emerging plu": lambda: EmergingConv2d(4, 5, one_by_one="plu").double(),
    "periodic": lambda: PeriodicConv2d(4, 3).double(),
    "periodic fft": lambda: PeriodicConv2d(4, 3, method="fft").double(),
    "qr": lambda: QR1x1(4).double(),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(4, 8).double(),
    "maf reverse naive": lambda: MaskedAffineAutoregressiveConv2d(
        4, 8, reverse=True, solver="naive"
    ).double(),
    "maf mixing": lambda: MAFMixing(4, 8).double(),
    "chain": lambda: Chain([QR1x1(4), SquareAutoregressiveConv2d(4)]).double(),
    "glow step": glow_step,
}


def make(name):
    torch.manual_seed(0)
    return perturb_(LAYERS[name](), std=0.05)


class LayerFlowTest(FlowTest):
    """normflows' FlowTest over every layer: shapes and dtypes kept, round trip, log-dets cancel."""

    def test_forward_inverse_with_context_none(self):
        x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
        for name in LAYERS:
            for training in (True, False):
                with self.subTest(name, training=training):
                    layer = make(name).train(training)
                    self.checkForwardInverse(layer, x, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", LAYERS)
def test_signatures_are_normflows(name):
    layer = make(name)
    for method, first in ((layer.forward, "z"), (layer.inverse, "x")):
        parameters = list(inspect.signature(method).parameters.values())
        assert [p.name for p in parameters] == [first, "context"]
        assert parameters[1].default is None


@pytest.mark.parametrize("name", LAYERS)
def test_context_is_ignored(name):
    """A context, positional or by keyword, changes nothing (as normflows' unconditional flows)."""
    layer = make(name).eval()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    context = torch.randn(2, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, context), layer(x))
        torch.testing.assert_close(layer(x, context=None), layer(x))
        torch.testing.assert_close(layer.inverse(x, context), layer.inverse(x))
        torch.testing.assert_close(layer.inverse(x, context=None), layer.inverse(x))


@pytest.mark.parametrize(
    "name", ["autoregressive", "emerging", "maf", "periodic"], ids=lambda name: name
)
def test_no_per_call_solver_argument(name):
    """The solve is chosen by the layer's option or use_backend only: no backend=/method= call."""
    layer = make(name)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    with pytest.raises(TypeError):
        layer(x, backend="naive")
    with pytest.raises(TypeError):
        layer.inverse(x, method="fft")


def test_layers_inside_a_conditional_normflows_model():
    """A ConditionalNormalizingFlow passes context to every flow: the layers take and ignore it."""
    flows = [QR1x1(2), EmergingConv2d(2), PeriodicConv2d(2), SquareAutoregressiveConv2d(2)]
    q0 = nf.distributions.DiagGaussian((2, 4, 4))
    model = nf.ConditionalNormalizingFlow(q0, flows).double()
    perturb_(model, std=0.05)
    context = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    z, log_det = model.inverse_and_log_det(x, context)
    x_back, log_det_back = model.forward_and_log_det(z, context)
    torch.testing.assert_close(x_back, x)
    # normflows sums the log-dets in a float32 tensor of its own
    torch.testing.assert_close(log_det + log_det_back, torch.zeros_like(log_det), atol=1e-5, rtol=0)
