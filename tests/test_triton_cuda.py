"""The triton backend on a CUDA device (skipped without one): its self-check passes, solves
against a float64 reference (C up to 128, either side of every change of block sizes), both
flips, batch 1 to 256, the fused EmergingConv2d step, the implicit backward."""

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from brute_force import perturb_  # noqa: E402
from normflows_emerging import (  # noqa: E402
    EmergingConv2d,
    SquareAutoregressiveConv2d,
    inverse_backend,
    use_backend,
)
from normflows_emerging.solve import solve_autoregressive  # noqa: E402
from solve_cases import random_causal_kernel  # noqa: E402

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def test_triton_is_the_cuda_default():
    assert inverse_backend("cuda") == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_kernel_passes_its_self_check(dtype):
    """No warning from the first solve and fused steps of this process, and every check done
    here passed (a failure would have made the backend use the wavefront, silently to the other
    tests)."""
    import warnings

    from normflows_emerging.backends import triton_self_check

    layers = [
        perturb_(EmergingConv2d(8, 3, one_by_one=mix)).to(dtype).cuda().eval()
        for mix in ("qr", "none")
    ]
    z = torch.randn(2, 8, 6, 7, dtype=dtype, device="cuda")
    kernel = random_causal_kernel(8, 2, dtype).cuda()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        solve_autoregressive(z, kernel, 1, "triton")
        for layer in layers:
            layer(z)
    outcomes = triton_self_check.outcomes()
    assert all(message is None for *_, message in outcomes), outcomes
    checked = {(checked_dtype, variant[0]) for _, checked_dtype, variant, _ in outcomes}
    assert {(dtype, "solve"), (dtype, "emerging_step")} <= checked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch,channels,height,width,size,dilation",
    [
        (1, 1, 5, 7, 2, 1),
        (3, 4, 6, 5, 3, 2),
        (2, 3, 1, 9, 2, 1),
        (2, 3, 9, 1, 3, 3),
        (16, 12, 16, 16, 2, 1),
        (256, 24, 8, 8, 2, 1),
        (7, 48, 4, 4, 2, 1),
        (2, 48, 32, 32, 3, 2),
        (2, 64, 17, 19, 3, 1),
        (2, 65, 16, 16, 2, 1),
        (3, 96, 9, 33, 3, 2),
        (1, 128, 32, 32, 3, 1),
        (1, 5, 4, 4, 1, 1),
        (2, 130, 3, 3, 2, 1),  # above MAX_CHANNELS: the wavefront
    ],
)
def test_solve_matches_float64_reference(batch, channels, height, width, size, dilation, dtype):
    kernel = random_causal_kernel(channels, size, torch.float64, upper=1.0)
    y = torch.randn(batch, channels, height, width, dtype=torch.float64)
    reference = solve_autoregressive(y, kernel, dilation, backend="compiled")
    x = solve_autoregressive(y.cuda().to(dtype), kernel.cuda().to(dtype), dilation, "triton")
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x.double().cpu(), reference, atol=tol, rtol=tol)


@pytest.mark.parametrize("flip", [False, True])
def test_layer_round_trip_both_flips(flip):
    layer = perturb_(SquareAutoregressiveConv2d(6, 3, flip=flip, dilation=2)).cuda().eval()
    x = torch.rand(4, 6, 9, 7, device="cuda")
    with torch.no_grad():
        y, _ = layer.inverse(x)
        x_back, _ = layer(y)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("one_by_one", ["qr", "none"])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("batch", [1, 16])
def test_fused_step_matches_unfused(one_by_one, kernel_size, batch):
    layer = perturb_(EmergingConv2d(12, kernel_size, one_by_one=one_by_one)).double().cuda()
    layer.eval()
    z = torch.randn(batch, 12, 16, 16, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        fused, log_det = layer(z)  # triton, the fused step
        with use_backend("torch"):
            unfused, log_det_unfused = layer(z)
    torch.testing.assert_close(fused, unfused, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_det, log_det_unfused)


def test_float32_round_trip_on_unit_data():
    layer = perturb_(EmergingConv2d(12, 3)).cuda().eval()
    x = torch.rand(16, 12, 16, 16, device="cuda")
    with torch.no_grad():
        y, _ = layer.inverse(x)
        x_back, _ = layer(y)
    assert (x_back - x).abs().max().item() <= 1e-5


def test_backward_transposed_solve_on_cuda():
    kernel = random_causal_kernel(5, 2, torch.float64).cuda().requires_grad_()
    y = torch.randn(3, 5, 6, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    grads = {}
    for backend in ("triton", "torch"):
        with use_backend(backend):
            x = solve_autoregressive(y, kernel, 1)
        grads[backend] = torch.autograd.grad((x**2).sum(), (y, kernel))
    for got, expected in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
