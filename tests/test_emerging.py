import pytest
import torch
from normflows.flows.flow_test import FlowTest

from brute_force import dense_log_abs_det, perturb_
from normflows_emerging import EmergingConv2d


@pytest.mark.parametrize("one_by_one", ["qr", "plu", "none"])
@pytest.mark.parametrize(
    "channels,height,width,kernel_size",
    [
        (1, 5, 7, 3),
        (5, 4, 3, 3),
        (3, 7, 6, 5),
        (2, 1, 4, 3),
    ],
)
def test_log_det_and_round_trip(channels, height, width, kernel_size, one_by_one):
    layer = perturb_(EmergingConv2d(channels, kernel_size, one_by_one=one_by_one).double())
    x = torch.randn(1, channels, height, width, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    torch.testing.assert_close(log_det, dense_log_abs_det(lambda v: layer.inverse(v)[0], x))
    x_back, log_det_back = layer(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_receptive_field_is_k_by_k(kernel_size):
    layer = perturb_(EmergingConv2d(2, kernel_size, one_by_one="none").double())
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    layer.inverse(x)[0][0, 0, 4, 4].backward()
    touched = (x.grad[0].abs().sum(0) > 0).nonzero()
    half = kernel_size // 2
    assert touched.min(0).values.tolist() == [4 - half, 4 - half]
    assert touched.max(0).values.tolist() == [4 + half, 4 + half]


class EmergingFlowTest(FlowTest):
    def test_flow_test_helpers(self):
        for one_by_one in ("qr", "plu"):
            layer = perturb_(EmergingConv2d(4, 3, one_by_one=one_by_one))  # log_det != 0
            z = torch.randn(3, 4, 6, 5)
            assert layer(z)[1].abs().min() > 0.1
            self.checkForwardInverse(layer, z, atol=1e-4, rtol=1e-4)


def test_solver_reaches_both_solves(solve_spy):
    layer = perturb_(EmergingConv2d(3).double())
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    results = {}
    for name in ("compiled", "torch", "naive"):
        solve_spy.clear()
        layer.solver = name
        results[name] = layer(z)[0]
        assert solve_spy == [name, name]
    torch.testing.assert_close(results["compiled"], results["torch"])
    torch.testing.assert_close(results["compiled"], results["naive"])


@pytest.mark.parametrize("kernel_size", [1, 2, 4, 3.0])
def test_kernel_size_must_be_odd_and_at_least_3(kernel_size):
    with pytest.raises(ValueError, match="odd int >= 3"):
        EmergingConv2d(3, kernel_size)


def test_bad_one_by_one_and_input():
    with pytest.raises(ValueError, match="one_by_one"):
        EmergingConv2d(3, one_by_one="svd")
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        EmergingConv2d(3)(torch.randn(1, 3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_uses_triton_if_it_imports_else_torch_wavefront():
    import importlib.util

    from normflows_emerging import inverse_backend

    layer = EmergingConv2d(6).cuda()
    x = torch.randn(4, 6, 8, 8, device="cuda")
    y, log_det = layer.inverse(x)
    x_back, log_det_back = layer(y)
    expected = "triton" if importlib.util.find_spec("triton") else "torch"
    assert inverse_backend(x.device) == expected
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros_like(log_det), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_folded_one_by_one_equals_the_three_layers_in_turn(kernel_size):
    layer = perturb_(EmergingConv2d(3, kernel_size).double())
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    y, log_det = layer.inverse(x)
    steps = [layer.one_by_one.inverse, layer.causal.inverse, layer.anticausal.inverse]
    expected, expected_log_det = x, 0
    for step in steps:
        expected, ld = step(expected)
        expected_log_det = expected_log_det + ld
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(log_det, expected_log_det)
    grads = torch.autograd.grad(y.sum() + log_det.sum(), [x, *layer.parameters()])
    expected_grads = torch.autograd.grad(
        expected.sum() + expected_log_det.sum(), [x, *layer.parameters()]
    )
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_outputs_are_contiguous():
    """The folded kernel once made conv2d return channels-last outputs (``.view`` failed)."""
    layer = perturb_(EmergingConv2d(2).double())
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y, _ = layer.inverse(x)
    assert y.is_contiguous() and layer(y)[0].is_contiguous()
