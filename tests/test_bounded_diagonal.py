"""Diagonals that stay representable: no NaN samples behind a finite log-det (issue 9, item 3)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normflows_emerging import (
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)
from normflows_emerging.flows.bounded import LOG_SCALE_BOUND, bounded_log_scale


def drive_log_scales_(layer, value):
    """Set every log-scale parameter (whatever its name) to ``value``, as a long training might.

    The off-diagonal weights are zeroed, so the layer is a diagonal scaling that is well
    conditioned however small its diagonal: any inf/NaN comes from the diagonal alone.
    """
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "log_d" in name or "log_s" in name:
                param.fill_(value)
            elif name.endswith(("weight", "upper")):
                param.zero_()
    return layer


@pytest.mark.parametrize(
    "make",
    [
        lambda: SquareAutoregressiveConv2d(3, 2),
        lambda: SquareAutoregressiveConv2d(3, 2, flip=True),
        lambda: QR1x1(3),
        lambda: EmergingConv2d(3, 3),
    ],
)
@pytest.mark.parametrize("value", [-200.0, 200.0])
def test_extreme_log_scales_sample_finitely_with_the_true_log_det(make, value):
    layer = drive_log_scales_(make(), value)
    x = torch.randn(2, 3, 4, 5) * 1e-3
    y, log_det = layer.inverse(x)
    x_back, log_det_back = layer(y)
    assert torch.isfinite(y).all() and torch.isfinite(x_back).all()
    torch.testing.assert_close(log_det_back, -log_det)
    # log_det is the log of the diagonal actually used, in float64 from the parameters
    expected = 0.0
    for name, param in layer.named_parameters():
        if "log_d" in name or "log_s" in name:
            diagonal = bounded_log_scale(param.double()).exp()
            assert (diagonal > 0).all() and torch.isfinite(diagonal).all()
            expected = expected + 20 * diagonal.log().sum()
    torch.testing.assert_close(log_det, expected.float().expand(2), rtol=1e-5, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(raw=st.floats(-1e30, 1e30), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_every_diagonal_is_positive_and_finite(raw, dtype):
    log_scale = bounded_log_scale(torch.tensor([raw], dtype=dtype))
    assert log_scale.abs() <= LOG_SCALE_BOUND
    diagonal = log_scale.exp()
    assert diagonal > 0 and torch.isfinite(diagonal)


@pytest.mark.parametrize(
    "make,old_name",
    [
        (lambda: SquareAutoregressiveConv2d(2), "log_d"),
        (lambda: QR1x1(2), "log_s"),
    ],
)
def test_checkpoints_of_the_unbounded_parametrisation_load_to_the_same_diagonal(make, old_name):
    layer = make()
    old = {k: v for k, v in layer.state_dict().items() if not k.startswith("raw_")}
    old[old_name] = torch.tensor([0.7, -3.0])
    layer.load_state_dict(old)
    torch.testing.assert_close(getattr(layer, old_name), torch.tensor([0.7, -3.0]))
    old[old_name] = torch.tensor([0.7, -12.0])
    with pytest.raises(ValueError, match=f"{old_name} has entries outside"):
        make().load_state_dict(old)


def test_solve_that_overflows_raises_instead_of_returning_inf():
    layer = SquareAutoregressiveConv2d(2, 2)
    with torch.no_grad():
        layer.weight.fill_(1e3)  # every pixel amplifies its neighbours a thousandfold
    with pytest.raises(torch.linalg.LinAlgError, match="finite input into inf/NaN"):
        layer(torch.ones(1, 2, 12, 12))


def test_qr_inverse_that_overflows_raises():
    layer = QR1x1(2, num_reflections=0)
    with torch.no_grad():
        layer.upper.fill_(3e38)
        layer.raw_log_s.fill_(-1.0)
    with pytest.raises(torch.linalg.LinAlgError, match="finite input into inf/NaN"):
        layer(torch.ones(1, 2, 2, 2))


def test_maf_sample_that_overflows_raises():
    layer = MaskedAffineAutoregressiveConv2d(1, 2)
    with torch.no_grad():
        layer.conv_out.bias[0] = 3e38  # the shift
    with pytest.raises(torch.linalg.LinAlgError, match="finite input into inf/NaN"):
        layer(torch.full((1, 1, 2, 2), 3e38))


def test_non_finite_input_is_passed_through_without_error():
    layer = SquareAutoregressiveConv2d(2, 2)
    z = torch.zeros(1, 2, 3, 3)
    z[0, 0, 1, 1] = float("nan")
    assert torch.isnan(layer(z)[0]).any()
