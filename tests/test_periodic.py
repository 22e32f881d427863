"""Tests of PeriodicConv2d against brute force (dense float64 Jacobians)."""

import copy

import pytest
import torch
from normflows.flows.flow_test import FlowTest

from brute_force import dense_log_abs_det
from normflows_emerging import PeriodicConv2d
from normflows_emerging.flows.periodic_conv import MAX_REAL_PRODUCT_BATCH

# The spectrum is applied as real products up to MAX_REAL_PRODUCT_BATCH images, else by einsum.
BATCHES = [1, 2, MAX_REAL_PRODUCT_BATCH + 1]
# (channels, kernel_size, height, width): C = 1 and 4, k = 1/3/5, odd/even and non-square sizes,
# and images exactly as large as the kernel.
SHAPES = [
    (1, 1, 3, 4),
    (4, 1, 2, 3),
    (1, 3, 5, 4),
    (4, 3, 4, 5),
    (4, 3, 3, 3),
    (1, 5, 7, 6),
    (4, 5, 5, 6),
    (2, 5, 6, 5),
]

flow_test = FlowTest()


def make_flow(channels, kernel_size, seed=0, bias=True):
    """A float64 flow with all parameters moved well away from their initial values."""
    torch.manual_seed(seed)
    flow = PeriodicConv2d(channels, kernel_size, bias=bias).double()
    with torch.no_grad():
        flow.weight.add_(0.3 * torch.randn_like(flow.weight))
        if bias:
            flow.bias.add_(torch.randn_like(flow.bias))
    return flow


def brute_force_circular(flow, x):
    """The circular cross-correlation written out with torch.roll, one tap at a time."""
    p = flow.kernel_size // 2
    out = flow.bias.view(1, -1, 1, 1).expand_as(x).clone()
    for a in range(flow.kernel_size):
        for d in range(flow.kernel_size):
            shifted = torch.roll(x, shifts=(p - a, p - d), dims=(2, 3))  # x[(i + a - p) % H]
            out = out + torch.einsum("oc,bchw->bohw", flow.weight[:, :, a, d], shifted)
    return out


@pytest.mark.parametrize("channels,kernel_size,height,width", SHAPES)
def test_log_det_matches_dense_jacobian(channels, kernel_size, height, width):
    flow = make_flow(channels, kernel_size)
    x = torch.randn(3, channels, height, width, dtype=torch.float64)
    _, log_det = flow.inverse(x)
    assert log_det.shape == (3,)
    torch.testing.assert_close(log_det, dense_log_abs_det(lambda t: flow.inverse(t)[0], x))
    # The sampling direction is the inverse map: its log_det is the negative.
    _, log_det_fwd = flow(x)
    torch.testing.assert_close(log_det_fwd, dense_log_abs_det(lambda t: flow(t)[0], x))
    torch.testing.assert_close(log_det_fwd, -log_det)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("channels,kernel_size,height,width", SHAPES)
def test_density_pass_is_circular_cross_correlation(channels, kernel_size, height, width, batch):
    flow = make_flow(channels, kernel_size)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    expected = brute_force_circular(flow, x)
    for method in ("auto", "spatial", "fft"):
        flow.method = method
        z, _ = flow.inverse(x)
        torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("channels,kernel_size,height,width", SHAPES)
def test_round_trip(channels, kernel_size, height, width, batch):
    flow = make_flow(channels, kernel_size)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    # forward then inverse (normflows' helper), and inverse then forward
    flow_test.checkForwardInverse(flow, x, atol=1e-9, rtol=1e-9)
    z, log_det = flow.inverse(x)
    x_back, log_det_back = flow(z)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(batch, dtype=torch.float64))


def test_spatial_and_fft_paths_agree_with_gradients():
    flow = make_flow(3, 5)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    results = []
    for method in ("spatial", "fft"):
        flow.method = method
        z, log_det = flow.inverse(x)
        loss = (z**2).sum() + log_det.sum()
        grads = torch.autograd.grad(loss, (x, flow.weight, flow.bias))
        results.append((z, log_det, *grads))
    for spatial, fft in zip(*results):
        torch.testing.assert_close(spatial, fft)


def test_log_det_accurate_in_float32():
    flow64 = make_flow(12, 3)
    flow32 = copy.deepcopy(flow64).float()
    x = torch.randn(2, 12, 32, 32)
    _, ld32 = flow32.inverse(x)
    _, ld64 = flow64.inverse(x.double())
    assert ld32.dtype == torch.float32
    # One float32 rounding of the final sum, not an accumulation over 32*32 frequencies.
    torch.testing.assert_close(ld32.double(), ld64, rtol=2e-7, atol=0)
    z32, _ = flow32.inverse(x)
    x_back, _ = flow32(z32)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)


def test_init_is_near_identity_and_invertible():
    torch.manual_seed(1)
    for channels, kernel_size, size in [(1, 1, 4), (12, 3, 16), (48, 5, 5)]:
        flow = PeriodicConv2d(channels, kernel_size)
        khat = flow.spectrum(size, size)
        singular_values = torch.linalg.svdvals(khat)
        assert singular_values.min() > 0.5 and singular_values.max() < 2
        x = torch.randn(2, channels, size, size)
        z, log_det = flow.inverse(x)
        x_back, _ = flow(z)
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)


def test_eval_cache_matches_recomputation_and_follows_updates():
    flow = make_flow(4, 3)
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)

    def fresh(module):
        """Outputs recomputed from scratch, with a copy that has never cached anything."""
        reference = copy.deepcopy(module).train()
        with torch.no_grad():
            return reference(z), reference.inverse(x)

    flow.eval()
    with torch.no_grad():
        first = flow(z), flow.inverse(x)
        second = flow(z), flow.inverse(x)  # served from the cache
    expected = fresh(flow)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)

    # An optimizer step changes the kernel in place: the cache must follow.
    optimizer = torch.optim.SGD(flow.parameters(), lr=0.1)
    flow.train()
    _, log_det = flow.inverse(x)
    (-log_det.sum()).backward()
    flow.eval()
    with torch.no_grad():
        flow(z)  # fill the cache, then update
        optimizer.step()
        after_step = flow(z), flow.inverse(x)
    torch.testing.assert_close(after_step, fresh(flow))
    assert not torch.allclose(after_step[0][0], first[0][0])

    # Loading other parameters and replacing the tensor also refresh it.
    other = make_flow(4, 3, seed=5)
    flow.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close((flow(z), flow.inverse(x)), fresh(other))
        flow.weight.data = make_flow(4, 3, seed=6).weight.data.clone()
        torch.testing.assert_close((flow(z), flow.inverse(x)), fresh(flow))

    # Another input size gets its own entry.
    z_other = torch.randn(1, 4, 7, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(flow(z_other), copy.deepcopy(flow).train()(z_other))


def test_eval_mode_keeps_autograd_through_sampling():
    flow = make_flow(2, 3).eval()
    z = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    for _ in range(2):  # a cached, detached inverse would break the second backward
        x, log_det = flow(z)
        (x.sum() + log_det.sum()).backward()
    assert flow.weight.grad is not None and torch.isfinite(flow.weight.grad).all()


def test_cache_from_inference_mode_is_not_reused_under_autograd():
    flow = make_flow(2, 3).eval().requires_grad_(False)
    z = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    with torch.inference_mode():
        expected, _ = flow(z)
    z.requires_grad_()
    x, _ = flow(z)  # grad enabled, frozen kernel: cached, but not the inference-mode entry
    x.sum().backward()
    torch.testing.assert_close(x.detach(), expected)
    assert torch.isfinite(z.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    flow = make_flow(4, 3).float().cuda()
    x = torch.randn(2, 4, 6, 5, device="cuda")
    for method in ("spatial", "fft"):
        flow.method = method
        z, log_det = flow.inverse(x)
        assert log_det.device == x.device and log_det.dtype == torch.float32
        x_back, log_det_back = flow(z)
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(log_det_back, -log_det)
    _, log_det_cpu = flow.cpu().inverse(x.cpu())
    torch.testing.assert_close(log_det.cpu(), log_det_cpu)


class DensityPass(torch.nn.Module):
    """``flow.inverse`` with a fixed method, as a module so that functional_call can reach it."""

    def __init__(self, flow, method):
        super().__init__()
        flow.method = method
        self.flow = flow

    def forward(self, x):
        return self.flow.inverse(x)


@pytest.mark.parametrize("method", [None, "spatial", "fft"])
def test_gradcheck(method):
    """Gradients of output and log_det w.r.t. input, kernel, bias: sampling (None) and density."""
    flow = make_flow(2, 3)
    layer = flow if method is None else DensityPass(flow, method)
    prefix = "" if method is None else "flow."
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = flow.weight.detach().clone().requires_grad_()
    bias = flow.bias.detach().clone().requires_grad_()

    def fn(x, weight, bias):
        params = {prefix + "weight": weight, prefix + "bias": bias}
        return torch.func.functional_call(layer, params, (x,))

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_without_bias():
    flow = make_flow(3, 3, bias=False)
    assert flow.bias is None and "bias=False" in repr(flow)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    z, _ = flow.inverse(x)
    torch.testing.assert_close(flow.inverse(-x)[0], -z)  # linear, no offset
    torch.testing.assert_close(flow(z)[0], x)


def test_bad_inputs():
    flow = PeriodicConv2d(3, kernel_size=5)
    with pytest.raises(ValueError, match="shape"):
        flow.inverse(torch.randn(3, 6, 6))
    with pytest.raises(ValueError, match="shape"):
        flow(torch.randn(2, 4, 6, 6))
    with pytest.raises(TypeError):
        flow.inverse(torch.zeros(2, 3, 6, 6, dtype=torch.long))
    with pytest.raises(TypeError):
        flow.inverse([[1.0]])
    for shape in [(2, 3, 4, 6), (2, 3, 6, 4)]:
        with pytest.raises(ValueError, match="at least 5x5"):
            flow.inverse(torch.randn(shape))
        with pytest.raises(ValueError, match="at least 5x5"):
            flow(torch.randn(shape))
    with pytest.raises(ValueError, match="method"):
        flow.method = "dft"
    with pytest.raises(ValueError, match="method"):
        PeriodicConv2d(3, method="dft")
    for kwargs in [
        dict(num_channels=0),
        dict(num_channels=2, kernel_size=2),
        dict(num_channels=2, kernel_size=0),
        dict(num_channels=2.0),
    ]:
        with pytest.raises(ValueError):
            PeriodicConv2d(**kwargs)


@pytest.mark.parametrize("train", [True, False])
def test_singular_kernel_raises_in_sampling(train):
    z = torch.randn(2, 3, 4, 5)
    zero = PeriodicConv2d(3).train(train)
    with torch.no_grad():
        zero.weight.zero_()
    # Two equal output channels: singular at every frequency, though not exactly zero.
    repeated = PeriodicConv2d(3).train(train)
    with torch.no_grad():
        repeated.weight[1] = repeated.weight[0]
    # A kernel singular at a single frequency only: taps [1, 1] along W vanish at v = W / 2.
    nyquist = PeriodicConv2d(1, kernel_size=3).train(train)
    with torch.no_grad():
        nyquist.weight.zero_()
        nyquist.weight[0, 0, 1, 1:] = 1.0
    for flow, inputs in [(zero, z), (repeated, z), (nyquist, torch.randn(2, 1, 3, 4))]:
        with pytest.raises(torch.linalg.LinAlgError, match="singular"):
            flow(inputs)
        _, log_det = flow.inverse(inputs)  # the density direction reports log|det| = -inf
        assert torch.isneginf(log_det).all()


def test_extra_repr():
    assert repr(PeriodicConv2d(4, kernel_size=5)) == (
        "PeriodicConv2d(num_channels=4, kernel_size=5, bias=True, method='auto')"
    )


def tensors_held_by(cache):
    """Every tensor reachable from a cache object through containers (whatever its layout)."""
    found, stack, seen = [], [vars(cache)], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif hasattr(item, "__slots__"):
            stack.extend(getattr(item, name) for name in item.__slots__ if hasattr(item, name))
    return found


def test_switching_to_training_drops_the_cached_spectra():
    """Training changes the weights at every step: the spectra of eval mode (one per image size
    seen) are released at once rather than held for the whole training."""
    flow = PeriodicConv2d(3).eval()
    with torch.no_grad():
        for size in (4, 5, 6):
            flow(torch.randn(2, 3, size, size))
    assert tensors_held_by(flow._cache)
    flow.train()
    assert tensors_held_by(flow._cache) == []
