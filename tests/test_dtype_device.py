"""One rule for every layer: input dtype and device must match the layer's (issue 9, item 6)."""

import normflows as nf
import pytest
import torch

from normflows_emerging import (
    Chain,
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)

LAYERS = {
    "autoregressive": lambda: SquareAutoregressiveConv2d(3),
    "qr": lambda: QR1x1(3),
    "emerging_qr": lambda: EmergingConv2d(3),
    "emerging_plu": lambda: EmergingConv2d(3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(3),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(3, 4),
}


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize(
    "layer_dtype,input_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)]
)
def test_dtype_mismatch_is_a_type_error_naming_both(make, direction, layer_dtype, input_dtype):
    layer = make().to(layer_dtype)
    x = torch.randn(1, 3, 4, 4, dtype=input_dtype)
    with pytest.raises(TypeError, match=f"{layer_dtype}.*{input_dtype}"):
        getattr(layer, direction)(x)


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_device_mismatch_is_a_value_error_naming_both(make, direction):
    x = torch.randn(1, 3, 4, 4, device="meta")
    with pytest.raises(ValueError, match="cpu.*meta"):
        getattr(make(), direction)(x)


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_matching_dtype_is_kept(make):
    layer = make().double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    x_back, log_det_back = layer(y)
    assert y.dtype == x_back.dtype == log_det.dtype == log_det_back.dtype == torch.float64


def test_chain_sums_log_dets_in_the_input_dtype_unlike_composite():
    """Why Chain exists: normflows' Composite rounds a float64 log-det to float32."""
    layers = [QR1x1(2).double(), SquareAutoregressiveConv2d(2).double()]
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.add_(0.1 + 1e-9)  # log-dets whose float32 rounding is visible
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    expected = layers[0].inverse(x)[1] + layers[1].inverse(layers[0].inverse(x)[0])[1]
    _, log_det = Chain(layers).inverse(x)
    assert log_det.dtype == torch.float64
    torch.testing.assert_close(log_det, expected, rtol=0, atol=1e-12)
    _, composite_log_det = nf.flows.Composite(layers[::-1]).inverse(x)
    assert composite_log_det.dtype == torch.float32


def test_chain_takes_normflows_signature_only():
    chain = Chain([SquareAutoregressiveConv2d(2)])
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(chain(x, None), chain(x))
    torch.testing.assert_close(chain.inverse(x, None), chain.inverse(x))
    with pytest.raises(TypeError, match="backend"):
        chain(x, backend="naive")
