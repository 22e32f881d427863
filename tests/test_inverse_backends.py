import warnings

import pytest
import torch

import normflows_emerging
from brute_force import perturb_
from normflows_emerging import SquareAutoregressiveConv2d, inverse_backend, use_backend
from normflows_emerging.inverse import solve_autoregressive
from normflows_emerging.inverse.naive import solve_naive


def random_causal_kernel(channels, size, dtype):
    kernel = torch.randn(channels, channels, size, size, dtype=dtype) * 0.3
    corner = kernel[:, :, -1, -1].tril(-1) + torch.diag(torch.rand(channels, dtype=dtype) + 0.5)
    kernel[:, :, -1, -1] = corner
    return kernel


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("batch,channels,height,width,size,dilation", [
    (1, 1, 5, 7, 2, 1),
    (3, 4, 6, 5, 3, 1),
    (2, 3, 7, 4, 2, 2),
    (5, 2, 3, 9, 3, 2),
    (8, 3, 5, 4, 2, 1),   # batch kernel: one full block of images
    (19, 5, 4, 6, 3, 2),  # batch kernel: blocks plus a partial one
])
def test_backends_agree(batch, channels, height, width, size, dilation, dtype, tol):
    kernel = random_causal_kernel(channels, size, dtype)
    y = torch.randn(batch, channels, height, width, dtype=dtype)
    naive = solve_naive(y, kernel, dilation)
    for backend in ("compiled", "torch"):
        x = solve_autoregressive(y, kernel, dilation, backend=backend)
        torch.testing.assert_close(x, naive, atol=tol, rtol=tol)


@pytest.mark.parametrize("threads,batch", [(1, 3), (2, 1), (2, 4), (1, 9), (2, 8), (2, 20)])
def test_compiled_parallel_modes_agree_with_torch(threads, batch):
    """Every kernel and schedule of the compiled solve: image kernel serial, over anti-diagonals
    and over images; batch kernel serial, over anti-diagonals and over blocks of images."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernel = random_causal_kernel(16, 2, torch.float64)
        y = torch.randn(batch, 16, 32, 32, dtype=torch.float64)
        compiled = solve_autoregressive(y, kernel, backend="compiled")
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(compiled, solve_autoregressive(y, kernel, backend="torch"))


def test_compiled_result_solves_the_convolution():
    layer = perturb_(SquareAutoregressiveConv2d(6, 3, dilation=2).double())
    z = torch.randn(4, 6, 11, 13, dtype=torch.float64)
    x = layer(z, backend="compiled")[0]
    torch.testing.assert_close(layer.inverse(x)[0], z)


def test_compiled_extension_is_built():
    """Fails when the installed package lacks its compiled inverse."""
    from normflows_emerging import _inverse  # noqa: F401

    assert inverse_backend() == "compiled"


@pytest.mark.parametrize("backend", ["compiled", "torch", "naive"])
@pytest.mark.parametrize("flip", [False, True])
def test_gradcheck_sampling_direction(backend, flip):
    layer = perturb_(SquareAutoregressiveConv2d(2, 2, flip=flip).double())
    z = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)

    def sample(z, weight, log_d, bias):
        with torch.no_grad():
            layer.weight.copy_(weight)
        kernel = weight * layer.mask + layer.corner_diagonal * log_d.exp()[:, None, None, None]
        rhs = z - bias[:, None, None]
        if flip:
            return solve_autoregressive(rhs.flip(1, 2, 3), kernel, backend=backend).flip(1, 2, 3)
        return solve_autoregressive(rhs, kernel, backend=backend)

    params = [p.detach().clone().requires_grad_() for p in (layer.weight, layer.log_d, layer.bias)]
    assert torch.autograd.gradcheck(sample, (z, *params))


def test_implicit_backward_matches_unrolled_reference():
    """Gradients of the layer's forward equal autograd through the element-wise solve."""
    layer = perturb_(SquareAutoregressiveConv2d(3, 3, dilation=2).double())
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 5, 6, dtype=torch.float64)

    x, _ = layer(z)
    (x * target).sum().backward()
    implicit = [z.grad.clone()] + [p.grad.clone() for p in layer.parameters()]

    z.grad = None
    layer.zero_grad()
    rhs = z - layer.bias[:, None, None]
    unrolled = solve_naive(rhs, layer.causal_kernel(), layer.dilation)
    (unrolled * target).sum().backward()
    reference = [z.grad] + [p.grad for p in layer.parameters()]
    for got, want in zip(implicit, reference):
        torch.testing.assert_close(got, want)


def test_use_backend_selects_and_restores():
    assert inverse_backend() == "compiled"
    with use_backend("naive"):
        assert inverse_backend() == "naive"
        with use_backend("torch"):
            assert inverse_backend("cpu") == "torch"
        assert inverse_backend() == "naive"
    assert inverse_backend() == "compiled"
    assert inverse_backend("cuda") == "torch"
    with pytest.raises(ValueError, match="expected one of"):
        with use_backend("magic"):
            pass


def test_missing_extension_falls_back_to_torch_with_a_warning(monkeypatch):
    monkeypatch.setattr(normflows_emerging.inverse, "compiled_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="compiled inverse"):
        assert inverse_backend() == "torch"
    layer = SquareAutoregressiveConv2d(2)
    y = torch.randn(1, 2, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(layer(y)[0], layer(y, backend="torch")[0])


def test_compiled_rejects_what_it_cannot_run():
    kernel = random_causal_kernel(2, 2, torch.float64)
    with pytest.raises(TypeError, match="float32 or float64"):
        solve_autoregressive(torch.randn(1, 2, 3, 3).half(), kernel.half(), backend="compiled")
    with pytest.raises(ValueError, match="CPU tensors"):
        solve_autoregressive(torch.randn(1, 2, 3, 3, device="meta"), kernel, backend="compiled")


def test_compiled_accepts_non_contiguous_input():
    kernel = random_causal_kernel(3, 2, torch.float64)
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(solve_autoregressive(y, kernel, backend="compiled"),
                               solve_naive(y, kernel))
