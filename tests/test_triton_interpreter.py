"""The triton backend's kernels run through Triton's interpreter on CPU tensors (no GPU needed).

The interpreter runs every Triton operation in numpy, about a millisecond each, so the shapes
are small and chosen to cover: C = 1..48, 1 x N and N x 1 images, m = 1..3, dilation 1..3, batch
1..17, both flips, float32 and float64, the fused EmergingConv2d step and the implicit backward.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("interpreted_triton")

import normflows_emerging.backends.triton_solve as triton_solve  # noqa: E402
from brute_force import perturb_  # noqa: E402
from normflows_emerging import (  # noqa: E402
    EmergingConv2d,
    SquareAutoregressiveConv2d,
    inverse_backend,
    use_backend,
)
from normflows_emerging.solve import fused_emerging_step, solve_autoregressive  # noqa: E402
from normflows_emerging.solve.naive import solve_naive  # noqa: E402
from solve_cases import causal_conv, random_causal_kernel  # noqa: E402

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def check_solution(y, kernel, dilation, reference=True):
    """Solve with triton; compare with the naive solve (if ``reference``) and check that the
    convolution of the solution gives back ``y`` (brute force, any size)."""
    x = solve_autoregressive(y, kernel, dilation, backend="triton")
    tol = TOLERANCE[y.dtype]
    torch.testing.assert_close(causal_conv(x, kernel, dilation), y, atol=tol, rtol=tol)
    if reference:
        torch.testing.assert_close(x, solve_naive(y, kernel, dilation), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "batch,channels,height,width,size,dilation,dtype",
    [
        (1, 1, 5, 7, 2, 1, torch.float64),
        (3, 4, 6, 5, 3, 1, torch.float64),
        (2, 3, 7, 4, 2, 2, torch.float32),
        (2, 2, 1, 9, 3, 2, torch.float64),  # 1 x N
        (1, 3, 8, 1, 2, 3, torch.float32),  # N x 1
        (17, 2, 3, 3, 2, 1, torch.float32),  # batch 17
        (2, 5, 4, 4, 1, 1, torch.float64),  # m = 1: the corner tap alone
        (1, 2, 6, 6, 3, 3, torch.float64),  # dilation 3
        (2, 2, 4, 3, 2, 9, torch.float64),  # dilation beyond the image: corner tap only
    ],
)
def test_solve_matches_naive(batch, channels, height, width, size, dilation, dtype):
    kernel = random_causal_kernel(channels, size, dtype, upper=1.0)  # upper triangle is ignored
    check_solution(torch.randn(batch, channels, height, width, dtype=dtype), kernel, dilation)


@pytest.mark.parametrize(
    "batch,channels,height,width,size,dtype",
    [
        (2, 12, 5, 6, 2, torch.float32),  # the paper's first level: one chunk of channels
        (1, 17, 3, 4, 3, torch.float64),  # blocks of 32 channels, 17 used
        (1, 33, 3, 3, 2, torch.float32),  # two chunks of input channels, the second partial
        (2, 48, 2, 3, 2, torch.float32),  # C = 48, the paper's last level
        (1, 48, 3, 2, 3, torch.float64),
    ],
)
def test_solve_many_channels(batch, channels, height, width, size, dtype):
    kernel = random_causal_kernel(channels, size, dtype)
    y = torch.randn(batch, channels, height, width, dtype=dtype)
    check_solution(y, kernel, 1, reference=channels <= 17)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 6),  # batch 17: the fixed cases
    channels=st.integers(1, 48),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    size=st.integers(1, 3),
    dilation=st.integers(1, 3),
    double=st.booleans(),
)
def test_solve_random_shapes(batch, channels, height, width, size, dilation, double):
    dtype = torch.float64 if double else torch.float32
    generator = torch.Generator().manual_seed(batch * 1000 + channels)
    kernel = random_causal_kernel(channels, size, dtype, generator=generator)
    y = torch.randn(batch, channels, height, width, dtype=dtype, generator=generator)
    check_solution(y, kernel, dilation, reference=False)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_both_flips(flip, dtype):
    """The layer mirrors the input for flip=True; its round trip holds with the triton solve."""
    layer = SquareAutoregressiveConv2d(3, 2, flip=flip, dilation=2, solver="triton").to(dtype)
    perturb_(layer)
    x = torch.randn(2, 3, 5, 4, dtype=dtype)
    with torch.no_grad():
        y, log_det = layer.inverse(x)
        x_back, log_det_back = layer(y)
        with use_backend("naive"):
            x_naive, _ = layer(y)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x_back, x, atol=tol, rtol=tol)
    torch.testing.assert_close(x_back, x_naive, atol=tol, rtol=tol)
    torch.testing.assert_close(log_det_back, -log_det)


@pytest.mark.parametrize(
    "channels,kernel_size,one_by_one,dtype,shape",
    [
        (3, 3, "qr", torch.float64, (3, 5, 4)),
        (2, 5, "none", torch.float64, (2, 4, 6)),
        (5, 3, "qr", torch.float32, (2, 3, 3)),
        (1, 3, "qr", torch.float32, (1, 1, 7)),  # C = 1, 1 x N
    ],
)
def test_fused_emerging_step(channels, kernel_size, one_by_one, dtype, shape, monkeypatch):
    """EmergingConv2d's eval sampling runs the fused step and matches the naive solves."""
    layer = EmergingConv2d(channels, kernel_size, one_by_one=one_by_one).to(dtype)
    perturb_(layer)
    layer.eval()
    batch, height, width = shape
    z = torch.randn(batch, channels, height, width, dtype=dtype)
    calls = []
    step = triton_solve.emerging_step
    monkeypatch.setattr(
        triton_solve, "emerging_step", lambda *a: calls.append(1) or step(*a), raising=True
    )
    with torch.no_grad():
        with use_backend("naive"):
            expected, log_det_expected = layer(z)
        with use_backend("triton"):
            assert fused_emerging_step("triton", z) is step
            x, log_det = layer(z)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(log_det, log_det_expected)
    with torch.no_grad():
        z_back, _ = layer.inverse(x)
    torch.testing.assert_close(z_back, z, atol=tol, rtol=tol)


def test_fused_step_not_used_when_input_needs_gradient():
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    assert fused_emerging_step("triton", z) is None
    with torch.no_grad():
        assert fused_emerging_step("triton", z) is triton_solve.emerging_step
    assert fused_emerging_step("naive", z.detach()) is None


def test_backward_uses_triton_transposed_solve():
    """The implicit backward's transposed solve runs on the same backend and matches the
    gradient of the unrolled naive solve."""
    kernel = random_causal_kernel(3, 2, torch.float64).requires_grad_()
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    grads = {}
    for backend in ("triton", "naive"):
        x = solve_autoregressive(y, kernel, 2, backend=backend)
        grads[backend] = torch.autograd.grad((x * weights).sum(), (y, kernel))
    for got, expected in zip(grads["triton"], grads["naive"]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_zero_corner_diagonal_is_a_linalg_error():
    kernel = random_causal_kernel(2, 2, torch.float64)
    kernel[1, 1, -1, -1] = 0
    with pytest.raises(torch.linalg.LinAlgError, match=r"kernel\[1, 1, 1, 1\]"):
        solve_autoregressive(torch.randn(1, 2, 3, 3, dtype=torch.float64), kernel, 1, "triton")


def test_more_channels_than_the_kernels_take_run_the_wavefront(monkeypatch):
    channels = triton_solve.MAX_CHANNELS + 1
    kernel = random_causal_kernel(channels, 2, torch.float64)
    y = torch.randn(1, channels, 2, 2, dtype=torch.float64)
    calls = []
    wavefront = triton_solve.solve_wavefront
    monkeypatch.setattr(
        triton_solve, "solve_wavefront", lambda *a: calls.append(1) or wavefront(*a)
    )
    monkeypatch.setattr(triton_solve, "_said", set())
    with pytest.warns(RuntimeWarning, match=f"no solve with {channels} channels on cpu"):
        check_solution(y, kernel, 1, reference=False)
    assert calls == [1]


def test_cuda_default_is_triton_when_it_imports(monkeypatch):
    assert inverse_backend("cuda") == "triton"
    assert inverse_backend("cpu") != "triton"
    message = "the triton package does not import (missing); install it with `pip install triton`"
    monkeypatch.setattr(triton_solve, "_import_error", lambda: message)
    with pytest.warns(RuntimeWarning, match="pip install triton"):
        assert inverse_backend("cuda") == "torch"
