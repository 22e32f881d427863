import pytest
import torch
from normflows.flows.flow_test import FlowTest

from brute_force import dense_log_abs_det, perturb_
from normflows_emerging import SquareAutoregressiveConv2d

CASES = [  # channels, height, width, size, dilation
    (1, 5, 7, 2, 1),
    (5, 4, 3, 2, 1),
    (3, 6, 5, 3, 1),
    (2, 7, 6, 2, 2),
    (5, 5, 5, 3, 2),
]


def make_layer(channels, size, flip, dilation):
    layer = SquareAutoregressiveConv2d(channels, size, flip=flip, dilation=dilation).double()
    return perturb_(layer)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("channels,height,width,size,dilation", CASES)
def test_log_det_matches_dense_jacobian(channels, height, width, size, dilation, flip):
    layer = make_layer(channels, size, flip, dilation)
    x = torch.randn(2, channels, height, width, dtype=torch.float64)
    _, log_det = layer.inverse(x)
    expected = dense_log_abs_det(lambda v: layer.inverse(v)[0], x)
    torch.testing.assert_close(log_det, expected)
    # the sampling direction is the inverse map: its Jacobian log-det is the negative
    y = layer.inverse(x)[0]
    _, log_det_forward = layer(y)
    layer.solver = "naive"
    expected_forward = dense_log_abs_det(lambda v: layer(v)[0], y)
    torch.testing.assert_close(log_det_forward, expected_forward)


@pytest.mark.parametrize("flip", [False, True])
def test_receptive_field_is_the_square_window(flip):
    """Output pixel (i, j) depends exactly on the m x m window anchored at (i, j)."""
    layer = make_layer(2, 3, flip, 1)
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    y = layer.inverse(x)[0]
    y[0, 1, 3, 3].backward()
    touched = x.grad[0].abs().sum(0) > 0
    expected = torch.zeros(7, 7, dtype=torch.bool)
    if flip:
        expected[3:6, 3:6] = True
    else:
        expected[1:4, 1:4] = True
    assert torch.equal(touched, expected)
    # the output's own pixel: channel 1 reads channel 0 and itself (causal) or only itself (flip)
    own = x.grad[0, :, 3, 3] != 0
    assert own.tolist() == ([False, True] if flip else [True, True])


@pytest.mark.parametrize("backend", ["compiled", "torch", "naive"])
@pytest.mark.parametrize("flip", [False, True])
def test_round_trip_every_backend(backend, flip):
    layer = make_layer(3, 2, flip, 1)
    x = torch.randn(1, 3, 6, 4, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    layer.solver = backend
    x_back, log_det_back = layer(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(1, dtype=torch.float64))


class SquareAutoregressiveFlowTest(FlowTest):
    def test_flow_test_helpers(self):
        for flip in (False, True):
            for dtype in (torch.float32, torch.float64):
                layer = perturb_(SquareAutoregressiveConv2d(4, 2, flip=flip).to(dtype))
                z = torch.randn(3, 4, 5, 6, dtype=dtype)
                assert layer(z)[1].abs().min() > 0.1  # a fresh layer's log_det is 0
                self.checkForwardInverse(layer, z, atol=1e-4, rtol=1e-4)


def test_log_det_has_batch_shape_and_follows_dtype():
    layer = SquareAutoregressiveConv2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    assert log_det.shape == (4,) and log_det.dtype == torch.float64
    assert layer(y)[1].shape == (4,)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: SquareAutoregressiveConv2d(0),
        lambda: SquareAutoregressiveConv2d(3, size=0),
        lambda: SquareAutoregressiveConv2d(3, dilation=1.5),
    ],
)
def test_bad_construction(bad):
    with pytest.raises(ValueError):
        bad()


def test_bad_inputs():
    layer = SquareAutoregressiveConv2d(3)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        layer.inverse(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        layer(torch.randn(3, 5, 5))
    with pytest.raises(TypeError, match="float32 and float64"):
        layer.inverse(torch.ones(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="solver must be one of"):
        layer.solver = "fortran"


@pytest.mark.parametrize("flip", [False, True])
def test_premixed_inverse_is_the_inverse_after_a_1x1_convolution(flip):
    layer = make_layer(3, 2, flip, 2)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    mix = torch.randn(3, 3, dtype=torch.float64)
    y, log_det = layer.premixed_inverse(x, mix)
    expected, expected_log_det = layer.inverse(torch.einsum("oc,bchw->bohw", mix, x))
    torch.testing.assert_close((y, log_det), (expected, expected_log_det))
    torch.testing.assert_close(layer.premixed_inverse(x, None), layer.inverse(x))
