"""float16 and bfloat16 get the documented TypeError from every public entry point (issue 27,
item 5): the layers and solves compute in float32 or float64 only (torch has no triangular solve
in half precision), so a half input is refused naming the supported dtypes, never passed on to
an operation that fails with torch's own NotImplementedError."""

import pytest
import torch

from normflows_emerging import (
    Chain,
    EmergingConv2d,
    GlowStep,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    backend_names,
    bits_per_dim,
    build_multiscale_flow,
    solve_autoregressive,
)
from normflows_emerging.diagnostics import inverse_error
from normflows_emerging.flows import ActNorm

HALF = [torch.float16, torch.bfloat16]
SUPPORTED = "float32 and float64|float32 or float64"


def causal_kernel(dtype):
    kernel = torch.randn(2, 2, 2, 2)
    kernel[:, :, -1, -1] = torch.eye(2) + torch.randn(2, 2).tril(-1)
    return kernel.to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", backend_names())
def test_solve(dtype, backend):
    y = torch.randn(1, 2, 3, 3).to(dtype)
    with pytest.raises(TypeError, match=SUPPORTED):
        solve_autoregressive(y, causal_kernel(dtype), 1, backend)


def initialised_actnorm():
    layer = ActNorm((2, 1, 1))
    layer.inverse(torch.randn(4, 2, 3, 3))
    return layer


LAYERS = {
    "qr": lambda: QR1x1(2),
    "autoregressive": lambda: SquareAutoregressiveConv2d(2, 2),
    "emerging": lambda: EmergingConv2d(2, 3),
    "emerging plu": lambda: EmergingConv2d(2, 3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(2, 3),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(2, 4),
    "actnorm": initialised_actnorm,
    "chain": lambda: Chain([QR1x1(2), SquareAutoregressiveConv2d(2, 2)]),
    "glow step": lambda: GlowStep(2, 4, "emerging"),
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("layer_dtype", ["float32", "half"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_layers(dtype, name, layer_dtype, direction):
    layer = LAYERS[name]()
    if layer_dtype == "half":
        layer = layer.to(dtype)
    x = torch.randn(2, 2, 4, 4).to(dtype)
    with pytest.raises(TypeError, match=f"{SUPPORTED}|has torch.float32 parameters"):
        getattr(layer, direction)(x)


@pytest.fixture(scope="module", params=HALF, ids=str)
def half_model(request):
    """A built model, its ActNorms initialised in float32, then converted to a half dtype."""
    model = build_multiscale_flow((2, 8, 8), 2, 1, 8, mixing="emerging")
    model.log_prob(torch.rand(4, 2, 8, 8), None)
    return model.to(request.param)


MODEL_CALLS = {
    "log_prob": lambda model, x: model.log_prob(x, None),
    "forward_kld": lambda model, x: model.forward_kld(x, None),
    "inverse_and_log_det": lambda model, x: model.inverse_and_log_det(x),
    "sample": lambda model, x: model.sample(2),
    "sample at a temperature": lambda model, x: model.sample(2, temperature=0.5),
    "bits_per_dim": lambda model, x: bits_per_dim(model, x),
    "inverse_error": lambda model, x: inverse_error(model, x),
}


@pytest.mark.parametrize("call", MODEL_CALLS.values(), ids=MODEL_CALLS.keys())
def test_model_entry_points(half_model, call):
    dtype = next(half_model.parameters()).dtype
    x = (0.9 * torch.rand(2, 2, 8, 8)).to(dtype)  # below 1 after rounding too
    with pytest.raises(TypeError, match=SUPPORTED):
        call(half_model, x)
