"""Bad inputs to the solves: clear errors from every backend and from the extension's entry
points, never garbage, nondeterminism or a crash (issue 9, fault 1); gradients of unread kernel
entries (fault 2)."""

import os
import subprocess
import sys

import pytest
import torch

from normflows_emerging import BACKENDS, _solve, solve_autoregressive
from normflows_emerging.solve.naive import solve_naive
from solve_cases import random_causal_kernel

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {
    torch.float32: _solve.solve_causal_float32,
    torch.float64: _solve.solve_causal_float64,
}


def test_kernel_of_other_channel_count_is_rejected_not_garbage():
    """The input of the issue: y with 4 channels, a 2-channel kernel (compiled returned NaN)."""
    y = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    kernel = random_causal_kernel(2, 2, torch.float64)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"kernel must have shape \(4, 4, m, m\)"):
            solve_autoregressive(y, kernel, 1, backend)


BAD_INPUTS = [
    # (y, kernel, dilation, error, message)
    (
        torch.randn(2, 3, 4),
        random_causal_kernel(3, 2, torch.float32),
        1,
        ValueError,
        r"y must have shape \(batch, channels >= 1, height, width\)",
    ),
    (torch.randn(1, 0, 4, 4), torch.randn(0, 0, 2, 2), 1, ValueError, "channels >= 1"),
    (
        torch.randint(0, 3, (1, 2, 3, 3)),
        torch.randint(0, 3, (2, 2, 2, 2)),
        1,
        TypeError,
        "float32 or float64 tensor, got dtype torch.int64",
    ),
    (  # issue 27: torch's own NotImplementedError ("triangular_solve_cpu") came out before
        torch.randn(1, 2, 3, 3).half(),
        random_causal_kernel(2, 2, torch.float32).half(),
        1,
        TypeError,
        "float32 or float64 tensor, got dtype torch.float16",
    ),
    (
        torch.randn(1, 2, 3, 3).bfloat16(),
        random_causal_kernel(2, 2, torch.float32).bfloat16(),
        1,
        TypeError,
        "float32 or float64 tensor, got dtype torch.bfloat16",
    ),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float64),
        1,
        TypeError,
        "kernel must have y's dtype torch.float32, got torch.float64",
    ),
    (torch.randn(1, 2, 3, 3), torch.randn(2, 2, 2, 3), 1, ValueError, r"\(2, 2, m, m\)"),
    (torch.randn(1, 2, 3, 3), torch.randn(2, 2, 0, 0), 1, ValueError, "m >= 1"),
    (torch.randn(1, 2, 3, 3), torch.randn(2, 2, 2), 1, ValueError, r"\(2, 2, m, m\)"),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float32),
        0,
        ValueError,
        "dilation must be a positive integer, got 0",
    ),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float32),
        -1,
        ValueError,
        "dilation must be a positive integer, got -1",
    ),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float32),
        1.0,
        TypeError,
        "dilation must be an int, got float",
    ),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float32),
        True,
        TypeError,
        "dilation must be an int, got bool",
    ),
    (
        torch.randn(1, 2, 3, 3),
        random_causal_kernel(2, 2, torch.float32).to("meta"),
        1,
        ValueError,
        "kernel must be on y's device cpu, got meta",
    ),
    (
        torch.randn(1, 2, 3, 3).numpy(),
        random_causal_kernel(2, 2, torch.float32),
        1,
        TypeError,
        "must be torch.Tensors",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("y,kernel,dilation,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error_from_every_backend(
    backend, y, kernel, dilation, error, message
):
    with pytest.raises(error, match=message):
        solve_autoregressive(y, kernel, dilation, backend)


def test_huge_negative_dilation_raises_instead_of_crashing():
    """dilation=-10**8 killed the interpreter (segmentation fault); run where a crash is visible."""
    script = (
        "import torch\n"
        "from normflows_emerging import _solve\n"
        "from normflows_emerging.solve import solve_autoregressive\n"
        "y, k = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.ones(2, 2, 2, 2).double()\n"
        "for call in (lambda: solve_autoregressive(y, k, -10**8, 'compiled'),\n"
        "             lambda: _solve.solve_causal_float64(\n"
        "                 y.numpy(), k.numpy(), torch.empty_like(y).numpy(), -10**8, 1)):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as error:\n"
        "        assert 'dilation must be a positive integer' in str(error), error\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dilation_beyond_the_image_reads_only_the_corner_tap(backend):
    """Any dilation >= max(H, W) puts every non-corner tap outside the image, so each pixel is one
    triangular solve with the corner tap; huge values must not overflow offsets or paddings."""
    kernel = random_causal_kernel(3, 2, torch.float64)
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    pixels = y.permute(1, 0, 2, 3).reshape(3, -1)
    expected = torch.linalg.solve_triangular(kernel[:, :, -1, -1].tril(), pixels, upper=False)
    expected = expected.reshape(3, 2, 4, 5).permute(1, 0, 2, 3)
    for dilation in (5, 6, 2**62, 10**30):
        x = solve_autoregressive(y, kernel, dilation, backend)
        torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_on_the_corner_diagonal_raises_linalg_error(backend):
    kernel = random_causal_kernel(3, 2, torch.float64)
    kernel[1, 1, -1, -1] = 0
    with pytest.raises(torch.linalg.LinAlgError, match=r"kernel\[1, 1, 1, 1\] is 0"):
        solve_autoregressive(torch.randn(2, 3, 4, 4, dtype=torch.float64), kernel, 1, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 3, 3), (2, 2, 0, 3), (2, 2, 3, 0)])
def test_empty_input_gives_empty_output(backend, shape):
    y = torch.randn(shape)
    x = solve_autoregressive(y, random_causal_kernel(2, 2, torch.float32), 1, backend)
    assert x.shape == shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entry_points_check_before_touching_memory(dtype):
    """The extension's functions are importable: every mismatch is an error, not a wild read."""
    solve = ENTRY_POINTS[dtype]
    y = torch.randn(2, 3, 4, 5, dtype=dtype)
    kernel = random_causal_kernel(3, 2, dtype)
    out = torch.full_like(y, 7.0)  # known values (empty memory may hold NaN, which != itself)
    other_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    cases = [
        ((y, kernel[:2, :2].contiguous(), out, 1, 1), r"kernel must have shape \(3, 3, m, m\)"),
        ((y, kernel[:, :, :1].contiguous(), out, 1, 1), r"kernel must have shape \(3, 3, m, m\)"),
        ((y, kernel[:, :, :0, :0].contiguous(), out, 1, 1), "m >= 1"),
        ((y, kernel, out[:1], 1, 1), r"out must have the shape of y \(2, 3, 4, 5\)"),
        ((y, kernel, out, 0, 1), "dilation must be a positive integer"),
        ((y, kernel, out, -(10**8), 1), "dilation must be a positive integer"),
        ((y, kernel, out, 1, 0), "num_threads must be at least 1"),
        ((y[:, :, :, ::2], kernel, out[:, :, :, :3], 1, 1), "contiguous"),
        ((y.transpose(2, 3), kernel, out.transpose(2, 3), 1, 1), "contiguous"),
        ((y.to(other_dtype), kernel, out, 1, 1), "dtype mismatch"),
        (
            (y[:, :0].contiguous(), kernel[:0, :0].contiguous(), out[:, :0].contiguous(), 1, 1),
            "at least one channel",
        ),
    ]
    for (y_, kernel_, out_, dilation, threads), message in cases:
        before = out.clone()
        with pytest.raises(ValueError, match=message):
            solve(y_.numpy(), kernel_.numpy(), out_.numpy(), dilation, threads)
        assert torch.equal(out, before)
    with pytest.raises(ValueError, match="schedule must be None or one of"):
        solve(y.numpy(), kernel.numpy(), out.numpy(), 1, 1, "batch/serial")


def test_entry_point_leaves_out_unwritten_on_a_singular_kernel():
    kernel = random_causal_kernel(3, 2, torch.float64)
    kernel[2, 2, -1, -1] = 0
    out = torch.full((9, 3, 4, 4), 7.0, dtype=torch.float64)
    with pytest.raises(ZeroDivisionError, match=r"kernel\[2, 2, 1, 1\] is 0"):
        _solve.solve_causal_float64(
            torch.randn(9, 3, 4, 4, dtype=torch.float64).numpy(), kernel.numpy(), out.numpy(), 1, 1
        )
    assert (out == 7).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size,dilation", [(1, 1), (2, 1), (3, 2)])
def test_gradient_is_zero_for_kernel_entries_the_solve_does_not_read(backend, size, dilation):
    """The corner tap above its diagonal is never read: x does not change with it, so its gradient
    is 0 (was 3.06 and more). All gradients equal autograd through the element-wise solve."""
    kernel = random_causal_kernel(3, size, torch.float64, upper=1.0).requires_grad_()
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 4, 5, dtype=torch.float64)

    (solve_autoregressive(y, kernel, dilation, backend) * target).sum().backward()
    implicit = kernel.grad.clone(), y.grad.clone()
    kernel.grad, y.grad = None, None
    (solve_naive(y, kernel, dilation) * target).sum().backward()

    upper = torch.ones(3, 3, dtype=torch.bool).triu(1)
    assert (implicit[0][:, :, -1, -1][upper] == 0).all()
    torch.testing.assert_close(implicit[0], kernel.grad)
    torch.testing.assert_close(implicit[1], y.grad)
