"""torch.compile: the density direction traces into one graph (issue 17, item 5)."""

import pytest
import torch
import torch._dynamo as dynamo

from brute_force import perturb_
from normflows_emerging import EmergingConv2d, PeriodicConv2d, QR1x1, build_multiscale_flow

LAYERS = {
    "emerging": lambda: EmergingConv2d(4, 3),
    "emerging 5x5": lambda: EmergingConv2d(4, 5),
    "periodic": lambda: PeriodicConv2d(4, 3),
    "periodic fft": lambda: PeriodicConv2d(4, 3, method="fft"),
    "qr": lambda: QR1x1(4),
}


@pytest.mark.parametrize("name", LAYERS)
def test_density_direction_has_no_graph_break(name):
    torch.manual_seed(0)
    layer = perturb_(LAYERS[name](), std=0.05).train()
    x = torch.randn(2, 4, 5, 6)
    dynamo.reset()
    explanation = dynamo.explain(layer.inverse)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer.inverse, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer.inverse(x))


@pytest.mark.parametrize("mixing", ["1x1", "emerging", "periodic", "qr"])
def test_training_step_of_a_built_model_has_no_graph_break(mixing):
    """A whole model's loss: the builder's input checks, its ActNorms (initialised: a host-side
    flag, no tensor read), couplings and mixing layers trace into one graph."""
    torch.manual_seed(0)
    model = build_multiscale_flow((3, 16, 16), 2, 2, 8, mixing=mixing).train()
    x = torch.rand(3, 3, 16, 16)
    model.log_prob(x, None)  # the ActNorms' data-dependent initialisation, outside the graph

    def loss(x):
        return -model.log_prob(x, None).mean()

    dynamo.reset()
    explanation = dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_many_layer_methods_compile_in_one_process():
    """Every layer method has its own compiled variants: a wrapper shared by all of them hit
    torch.compile's recompile limit (8) and the ninth compiled method failed with
    fullgraph=True (ran eagerly without it)."""
    from normflows_emerging import MaskedAffineAutoregressiveConv2d, SquareAutoregressiveConv2d

    dynamo.reset()
    layers = [
        QR1x1(4),
        SquareAutoregressiveConv2d(4),
        SquareAutoregressiveConv2d(4, flip=True),
        EmergingConv2d(4),
        PeriodicConv2d(4),
        MaskedAffineAutoregressiveConv2d(4, hidden_channels=8),
    ]
    x = torch.randn(2, 4, 6, 6)
    for mode in ("train", "eval"):
        for layer in layers:
            getattr(layer, mode)()
            compiled = torch.compile(layer.inverse, backend="eager", fullgraph=True)
            torch.testing.assert_close(compiled(x), layer.inverse(x))
