import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch

import normflows_emerging.backends.compiled
from brute_force import perturb_
from normflows_emerging import (
    SquareAutoregressiveConv2d,
    _solve,
    inverse_backend,
    use_backend,
)
from normflows_emerging.solve import solve_autoregressive
from normflows_emerging.solve.naive import solve_naive
from normflows_emerging.solve.wavefront import solve_wavefront
from solve_cases import random_causal_kernel


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize(
    "batch,channels,height,width,size,dilation",
    [
        (1, 1, 5, 7, 2, 1),
        (3, 4, 6, 5, 3, 1),
        (2, 3, 7, 4, 2, 2),
        (5, 2, 3, 9, 3, 2),
        (8, 3, 5, 4, 2, 1),  # batch kernel: one full block of images
        (19, 5, 4, 6, 3, 2),  # batch kernel: blocks plus a partial one
    ],
)
def test_backends_agree(batch, channels, height, width, size, dilation, dtype, tol):
    kernel = random_causal_kernel(channels, size, dtype)
    y = torch.randn(batch, channels, height, width, dtype=dtype)
    naive = solve_naive(y, kernel, dilation)
    for backend in ("compiled", "torch"):
        x = solve_autoregressive(y, kernel, dilation, backend=backend)
        torch.testing.assert_close(x, naive, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("channels", [8, 9, 12, 17, 24])
@pytest.mark.parametrize("batch,size", [(1, 2), (2, 3), (9, 2), (9, 3)])
def test_compiled_matches_wavefront_over_whole_and_partial_vectors(
    batch, size, channels, dtype, tol
):
    """Channel counts around the kernels' vector widths: the image kernel pads output channels to
    multiples of 8 and holds 2 or 4 vectors at a time (17: a pair and a single); the batch kernel
    goes 4 or 8 output channels at a time, then 4, 2, 1 (9, 17: groups and a remainder).
    tests/test_instruction_sets.py runs every instruction set over C = 1..48."""
    kernel = random_causal_kernel(channels, size, dtype)
    y = torch.randn(batch, channels, 5, 6, dtype=dtype)
    torch.testing.assert_close(
        solve_autoregressive(y, kernel, 1, "compiled"),
        solve_wavefront(y, kernel),
        atol=tol,
        rtol=tol,
    )


ENTRY_POINTS = {
    torch.float32: _solve.solve_causal_float32,
    torch.float64: _solve.solve_causal_float64,
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize(
    "batch,schedule",
    [
        (3, "image/serial"),
        (3, "image/over-images"),
        (1, "image/over-diagonals"),
        (3, "image/over-diagonals"),
        (9, "batch/serial"),
        (20, "batch/over-blocks"),
        (9, "batch/over-diagonals"),
        (20, "batch/over-diagonals"),
    ],
)
def test_every_schedule_runs_as_named_and_solves(batch, schedule, dtype, tol):
    """Each kernel and schedule of the compiled solve, forced and reported back, with thread 0 of
    the wavefront schedules sleeping before every anti-diagonal, so that a missing barrier between
    diagonals lets the other threads read pixels not yet solved (NaN here)."""
    kernel = random_causal_kernel(6, 2, dtype)
    y = torch.randn(batch, 6, 9, 7, dtype=dtype)
    out = torch.full_like(y, float("nan"))
    _solve._set_test_thread_delay(300 if schedule.endswith("diagonals") else 0)
    try:
        ran = ENTRY_POINTS[dtype](y.numpy(), kernel.numpy(), out.numpy(), 1, 4, schedule)
    finally:
        _solve._set_test_thread_delay(0)
    assert ran == schedule
    torch.testing.assert_close(out, solve_wavefront(y, kernel), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "batch,channels,side,threads,expected",
    [
        (1, 12, 16, 2, "image/serial"),  # paper sizes at batch 1: far too small to split
        (4, 12, 16, 2, "image/serial"),
        (16, 12, 16, 2, "batch/serial"),
        (64, 48, 4, 2, "batch/serial"),
        (4, 64, 32, 2, "image/over-images"),  # 6.7e7 multiply-adds: worth a second thread
        (4, 64, 32, 1, "image/serial"),
        (32, 32, 32, 2, "batch/over-blocks"),
    ],
)
def test_schedule_chosen_by_work_size(batch, channels, side, threads, expected):
    kernel = random_causal_kernel(channels, 2, torch.float32)
    y = torch.randn(batch, channels, side, side)
    out = torch.empty_like(y)
    assert (
        _solve.solve_causal_float32(y.numpy(), kernel.numpy(), out.numpy(), 1, threads) == expected
    )
    serial = torch.empty_like(y)
    _solve.solve_causal_float32(
        y.numpy(), kernel.numpy(), serial.numpy(), 1, 1, expected.split("/")[0] + "/serial"
    )
    torch.testing.assert_close(out, serial)


def test_compiled_result_solves_the_convolution():
    layer = perturb_(SquareAutoregressiveConv2d(6, 3, dilation=2, solver="compiled").double())
    z = torch.randn(4, 6, 11, 13, dtype=torch.float64)
    x = layer(z)[0]
    torch.testing.assert_close(layer.inverse(x)[0], z)


def test_compiled_extension_is_built():
    """Fails when the installed package lacks its compiled inverse."""
    from normflows_emerging import _solve  # noqa: F401

    assert inverse_backend() == "compiled"


@pytest.mark.parametrize("backend", ["compiled", "torch", "naive"])
@pytest.mark.parametrize("flip", [False, True])
def test_gradcheck_sampling_direction(backend, flip):
    layer = perturb_(SquareAutoregressiveConv2d(2, 2, flip=flip, solver=backend).double())
    z = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)

    def sample(z, weight, raw_log_d, bias):
        """The layer's sampling direction as a function of its input and its parameters."""
        params = {"weight": weight, "raw_log_d": raw_log_d, "bias": bias}
        return torch.func.functional_call(layer, params, (z,))[0]

    names = ("weight", "raw_log_d", "bias")
    params = [getattr(layer, name).detach().clone().requires_grad_() for name in names]
    assert torch.autograd.gradcheck(sample, (z, *params))


def test_compiled_solve_runs_on_torchs_number_of_threads(monkeypatch):
    """The extension gets ``torch.get_num_threads()`` (it decides itself whether small solves
    use them): neither one thread always nor more than asked."""
    seen = []
    real = normflows_emerging.backends.compiled._SOLVERS[torch.float32]

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setitem(normflows_emerging.backends.compiled._SOLVERS, torch.float32, spy)
    kernel = random_causal_kernel(3, 2, torch.float32)
    y = torch.randn(2, 3, 5, 6)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3, 2):
            torch.set_num_threads(n)
            solve_autoregressive(y, kernel, 1, backend="compiled")
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 3, 2]


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
    expected = "triton" if importlib.util.find_spec("triton") else "torch"
    assert inverse_backend("cuda") == expected
    with use_backend("torch"):
        assert inverse_backend("cuda") == "torch"
    with pytest.raises(ValueError, match="expected one of"), use_backend("magic"):
        pass


def test_missing_extension_falls_back_to_torch_with_a_warning(monkeypatch):
    """Without the extension the compiled solve cannot run: only a working fallback passes."""
    monkeypatch.setattr(normflows_emerging.backends.compiled, "_solve", None)
    with pytest.raises(RuntimeError, match="not available"):
        solve_autoregressive(
            torch.randn(1, 2, 3, 3), torch.eye(2)[:, :, None, None], backend="compiled"
        )
    with pytest.warns(RuntimeWarning):
        assert inverse_backend() == "torch"
    layer = perturb_(SquareAutoregressiveConv2d(2))
    y = torch.randn(1, 2, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = layer(y)[0]
    torch.testing.assert_close(layer.inverse(x)[0], y)


def test_the_missing_extension_warning_shows_once_per_process():
    """A new user without a C compiler saw the paragraph-long warning twice in one script: it was
    attributed to each of the library's two callers of inverse_backend."""
    code = (
        "import torch\n"
        "import normflows_emerging.backends.compiled as compiled\n"
        "from normflows_emerging import EmergingConv2d, SquareAutoregressiveConv2d\n"
        "compiled._solve = None\n"
        "z = torch.randn(1, 2, 3, 3)\n"
        "layers = [EmergingConv2d(2).eval(), EmergingConv2d(2), SquareAutoregressiveConv2d(2)]\n"
        "with torch.no_grad():\n"
        "    for layer in layers:\n"
        "        layer(z)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stderr.count("RuntimeWarning: no compiled solve") == 1, done.stderr


def test_compiled_rejects_what_it_cannot_run():
    kernel = random_causal_kernel(2, 2, torch.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        solve_autoregressive(torch.randn(1, 2, 3, 3).half(), kernel.half(), backend="compiled")
    with pytest.raises(ValueError, match="CPU tensors"):
        solve_autoregressive(
            torch.randn(1, 2, 3, 3, device="meta"), kernel.to("meta"), backend="compiled"
        )


def test_compiled_accepts_non_contiguous_input():
    kernel = random_causal_kernel(3, 2, torch.float64)
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(
        solve_autoregressive(y, kernel, backend="compiled"), solve_naive(y, kernel)
    )
