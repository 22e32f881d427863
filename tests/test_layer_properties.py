"""Property-based checks of every layer over shapes, kernel sizes and dtypes (issue 9)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brute_force import dense_log_abs_det, perturb_
from normflows_emerging import (
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)

TOLERANCE = {torch.float32: {"atol": 2e-4, "rtol": 2e-4}, torch.float64: {}}
PROPERTY_SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def layers_and_inputs(draw):
    """A perturbed layer of any family and a matching input: 1xN, Nx1, C = 1 included."""
    kind = draw(st.sampled_from(["autoregressive", "emerging", "qr", "periodic", "maf"]))
    channels = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    if kind == "autoregressive":
        layer = SquareAutoregressiveConv2d(
            channels,
            draw(st.integers(1, 3)),
            flip=draw(st.booleans()),
            dilation=draw(st.integers(1, 2)),
            solver=draw(st.sampled_from(["compiled", "torch", "naive"])),
        )
        min_side = 1
    elif kind == "emerging":
        layer = EmergingConv2d(
            channels,
            draw(st.sampled_from([3, 5])),
            one_by_one=draw(st.sampled_from(["qr", "plu", "none"])),
        )
        min_side = 1
    elif kind == "qr":
        layer = QR1x1(channels, draw(st.integers(0, channels)))
        min_side = 1
    elif kind == "periodic":
        kernel_size = draw(st.sampled_from([1, 3]))
        layer = PeriodicConv2d(channels, kernel_size)
        min_side = kernel_size
    else:
        layer = MaskedAffineAutoregressiveConv2d(
            channels, draw(st.integers(1, 4)), reverse=draw(st.booleans())
        )
        min_side = 1
    height, width = draw(st.sampled_from([(1, 5), (5, 1), (2, 3), (4, 4), (3, 2)]))
    height, width = max(height, min_side), max(width, min_side)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    perturb_(layer, std=0.1, generator=generator)
    x = torch.randn(2, channels, height, width, generator=generator)
    return layer.to(dtype), x.to(dtype)


@PROPERTY_SETTINGS
@given(case=layers_and_inputs())
def test_round_trip_and_opposite_log_dets(case):
    layer, x = case
    y, log_det = layer.inverse(x)
    x_back, log_det_back = layer(y)
    assert y.shape == x_back.shape == x.shape and log_det.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, **TOLERANCE[x.dtype])
    torch.testing.assert_close(log_det_back, -log_det, **TOLERANCE[x.dtype])


@PROPERTY_SETTINGS
@given(case=layers_and_inputs())
def test_log_det_is_the_dense_jacobian_log_det(case):
    layer, x = case
    layer, x = layer.double(), x.double()
    _, log_det = layer.inverse(x)
    torch.testing.assert_close(log_det, dense_log_abs_det(lambda v: layer.inverse(v)[0], x))
