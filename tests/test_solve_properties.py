"""Property-based tests of the solves (hypothesis): over shapes (1 x N, N x 1, C = 1), kernel sizes,
dilations, dtypes and memory layouts, every backend inverts the convolution, agrees with the
element-wise reference and ignores the corner tap above its diagonal."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normflows_emerging import BACKENDS, solve_autoregressive
from normflows_emerging.solve.naive import solve_naive
from solve_cases import causal_conv, random_causal_kernel

TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-10}
LAYOUTS = ("contiguous", "channels_last", "strided", "transposed")


def in_layout(y, layout):
    """The values of ``y`` in another memory layout."""
    if layout == "channels_last":
        return y.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros(*y.shape[:3], 2 * y.shape[3], dtype=y.dtype)
        wide[..., ::2] = y
        return wide[..., ::2]
    if layout == "transposed":
        return y.transpose(2, 3).contiguous().transpose(2, 3)
    return y


problems = st.fixed_dictionaries(
    {
        "batch": st.sampled_from([1, 2, 9]),  # 9: the compiled batch kernel (8 lanes) plus one
        "channels": st.integers(1, 5),
        "height": st.integers(1, 6),
        "width": st.integers(1, 6),
        "size": st.integers(1, 3),
        "dilation": st.integers(1, 3),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "layout": st.sampled_from(LAYOUTS),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(problem=problems)
def test_solve_inverts_the_convolution_and_matches_the_reference(backend, problem):
    generator = torch.Generator().manual_seed(problem["seed"])
    dtype, tol = problem["dtype"], TOLERANCES[problem["dtype"]]
    shape = (problem["batch"], problem["channels"], problem["height"], problem["width"])
    kernel = random_causal_kernel(
        problem["channels"], problem["size"], dtype, upper=1.0, generator=generator
    )
    y = in_layout(torch.randn(shape, dtype=dtype, generator=generator), problem["layout"])

    x = solve_autoregressive(y, kernel, problem["dilation"], backend)

    assert x.shape == shape and x.dtype == dtype
    torch.testing.assert_close(causal_conv(x, kernel, problem["dilation"]), y, atol=tol, rtol=tol)
    if backend != "naive":  # the reference on the first two images (it is slow)
        torch.testing.assert_close(
            x[:2], solve_naive(y[:2], kernel, problem["dilation"]), atol=tol, rtol=tol
        )
