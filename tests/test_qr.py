import pytest
import torch
from normflows.flows.flow_test import FlowTest

from brute_force import dense_log_abs_det, perturb_
from normflows_emerging import QR1x1


@pytest.mark.parametrize("channels,num_reflections", [(1, None), (4, None), (5, 2), (3, 0)])
def test_log_det_and_round_trip(channels, num_reflections):
    layer = perturb_(QR1x1(channels, num_reflections).double())
    x = torch.randn(2, channels, 3, 5, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    torch.testing.assert_close(log_det, dense_log_abs_det(lambda v: layer.inverse(v)[0], x))
    x_back, log_det_back = layer(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(2, dtype=torch.float64))


def test_weight_is_householder_product_times_triangular():
    layer = perturb_(QR1x1(4).double())
    q = layer.orthogonal()
    torch.testing.assert_close(q @ q.T, torch.eye(4, dtype=torch.float64))
    expected = torch.eye(4, dtype=torch.float64)
    for v in layer.reflections:
        expected = expected @ (torch.eye(4, dtype=torch.float64) - 2 * torch.outer(v, v) / v.dot(v))
    torch.testing.assert_close(q, expected)
    r = layer.triangular()
    assert torch.equal(r, r.triu())
    torch.testing.assert_close(r.diagonal(), layer.log_s.exp())
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(layer.inverse(x)[0], torch.einsum("oc,bchw->bohw", q @ r, x))


class QR1x1FlowTest(FlowTest):
    def test_flow_test_helpers(self):
        layer = perturb_(QR1x1(6))  # a fresh layer has log_det 0, which checks nothing
        z = torch.randn(2, 6, 4, 4)
        assert layer(z)[1].abs().min() > 0.1
        self.checkForwardInverse(layer, z, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        QR1x1(0)
    with pytest.raises(ValueError):
        QR1x1(3, num_reflections=-1)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        QR1x1(3).inverse(torch.randn(1, 2, 4, 4))
