import pytest
import torch
from normflows.flows.flow_test import FlowTest

from normflows_emerging.flows.maf import MaskedAffineAutoregressiveConv2d

# (channels, height, width, reverse, hidden): non-square, C = 1, odd sizes, both orders, hidden
# widths that are not a multiple of the channels or smaller than them.
SHAPES = [
    (2, 3, 4, False, 6),
    (2, 3, 4, True, 5),
    (1, 3, 4, False, 4),
    (1, 4, 3, True, 3),
    (3, 5, 2, False, 8),
    (3, 2, 3, True, 2),
]


def make_flow(num_channels, hidden_channels=6, reverse=False, dtype=torch.float64, scale=0.5):
    """A layer with every parameter perturbed, so it is far from the identity of its init."""
    torch.manual_seed(0)
    flow = MaskedAffineAutoregressiveConv2d(num_channels, hidden_channels, reverse).to(dtype)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(scale * torch.randn_like(param))
    return flow


def order_jacobian(flow, x):
    """Dense Jacobian dz/dx of one image, rows and columns in raster x channel order."""
    _, num_channels, height, width = x.shape

    def density(flat):
        image = flat.view(1, height, width, num_channels).permute(0, 3, 1, 2)
        return flow.inverse(image)[0].permute(0, 2, 3, 1).reshape(-1)

    return torch.autograd.functional.jacobian(density, x.permute(0, 2, 3, 1).reshape(-1))


class TestMaskedAffineAutoregressiveConv2d(FlowTest):
    def test_new_layer_is_identity(self):
        flow = MaskedAffineAutoregressiveConv2d(3, 8)
        x = torch.randn(2, 3, 4, 5)
        z, log_det = flow.inverse(x)
        self.assertClose(z, x)
        self.assertClose(log_det, torch.zeros(2))

    def test_log_det_matches_dense_jacobian(self):
        for num_channels, height, width, reverse, hidden in SHAPES:
            flow = make_flow(num_channels, hidden, reverse)
            x = torch.randn(1, num_channels, height, width, dtype=torch.float64)
            _, log_det = flow.inverse(x)
            sign, expected = torch.linalg.slogdet(order_jacobian(flow, x))
            assert sign != 0
            self.assertClose(log_det[0], expected)

    def test_jacobian_is_triangular_in_the_intended_order(self):
        for num_channels, height, width, reverse, hidden in SHAPES:
            flow = make_flow(num_channels, hidden, reverse)
            with torch.no_grad():  # every ReLU active, so no dependency is hidden by a dead unit
                flow.conv_in.bias.add_(10.0)
                flow.conv_hidden.bias.add_(10.0)
            x = torch.randn(1, num_channels, height, width, dtype=torch.float64)
            jac = order_jacobian(flow, x)
            if reverse:
                jac = jac.flip(0, 1)
            # Nothing depends on a later element (the masks do not leak) ...
            assert torch.count_nonzero(torch.triu(jac, diagonal=1)) == 0
            # ... and each element depends on the one just before it when that one lies in the
            # same pixel or the left neighbour, so the order is raster x channel, not coarser
            # (this needs a hidden unit for every channel).
            if hidden < num_channels:
                continue
            n = jac.shape[0]
            for k in range(1, n):
                same_or_left_pixel = k % num_channels > 0 or (k // num_channels) % width > 0
                if same_or_left_pixel:
                    assert jac[k, k - 1] != 0, (num_channels, height, width, reverse, k)

    def test_round_trip_both_orders_and_backends(self):
        for num_channels, height, width, reverse, hidden in SHAPES:
            flow = make_flow(num_channels, hidden, reverse)
            x = torch.randn(2, num_channels, height, width, dtype=torch.float64)
            z, log_det = flow.inverse(x)
            for backend in flow.backends:
                flow.solver = backend
                x_back, log_det_back = flow(z)
                self.assertClose(x_back, x)
                self.assertClose(log_det_back, -log_det)

    def test_flow_test_forward_inverse(self):
        flow = make_flow(2, reverse=True)
        self.checkForwardInverse(flow, torch.randn(3, 2, 4, 3, dtype=torch.float64))

    def test_fast_and_naive_agree_with_gradients(self):
        flow = make_flow(2, hidden_channels=5, reverse=True)
        z = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        results = {}
        for backend in flow.backends:
            flow.zero_grad()
            z.grad = None
            flow.solver = backend
            x, log_det = flow(z)
            ((x**2).sum() + log_det.sum()).backward()
            grads = [z.grad.clone()] + [p.grad.clone() for p in flow.parameters()]
            results[backend] = (x.detach(), log_det.detach(), grads)
        fast, naive = results["fast"], results["naive"]
        self.assertClose(fast[0], naive[0])
        self.assertClose(fast[1], naive[1])
        for g_fast, g_naive in zip(fast[2], naive[2]):
            self.assertClose(g_fast, g_naive)

    def test_float32_default_layer(self):
        # Sampling compounds rounding errors along the order; keep the layer mild in float32.
        flow = make_flow(3, hidden_channels=12, dtype=torch.float32, scale=0.1)
        x = torch.randn(2, 3, 5, 6)
        z, log_det = flow.inverse(x)
        x_back, log_det_back = flow(z)
        assert x_back.dtype == torch.float32 and log_det_back.shape == (2,)
        self.assertClose(x_back, x, atol=1e-4, rtol=1e-4)
        self.assertClose(log_det_back, -log_det, atol=1e-4, rtol=1e-4)

    def test_bad_inputs(self):
        flow = MaskedAffineAutoregressiveConv2d(2, 4)
        with pytest.raises(ValueError, match=r"\(batch, 2, height, width\)"):
            flow.inverse(torch.randn(1, 3, 4, 4))
        with pytest.raises(ValueError, match=r"\(batch, 2, height, width\)"):
            flow(torch.randn(2, 4, 4))
        with pytest.raises(TypeError, match="float32 and float64"):
            flow.inverse(torch.ones(1, 2, 4, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="fast"):
            flow.solver = "cython"
        with pytest.raises(ValueError, match="positive"):
            MaskedAffineAutoregressiveConv2d(0)

    def test_extra_repr(self):
        text = repr(MaskedAffineAutoregressiveConv2d(3, 16, reverse=True))
        assert "num_channels=3, hidden_channels=16, reverse=True" in text


def test_use_backend_naive_selects_the_naive_solve(monkeypatch):
    from normflows_emerging import use_backend

    flow = MaskedAffineAutoregressiveConv2d(2, hidden_channels=4)
    calls = []
    for name in ("_solve_fast", "_solve_naive"):
        original = getattr(flow, name)
        monkeypatch.setattr(
            flow, name, lambda z, name=name, original=original: calls.append(name) or original(z)
        )
    z = torch.randn(1, 2, 3, 3)
    flow(z)
    with use_backend("naive"):
        flow(z)
    assert calls == ["_solve_fast", "_solve_naive"]


def test_missing_extension_warning_is_not_raised_by_maf(monkeypatch):
    """MAF never uses the autoregressive solve, so it must not warn about its fallback."""
    import warnings

    import normflows_emerging.backends.compiled

    monkeypatch.setattr(normflows_emerging.backends.compiled, "_solve", None)
    flow = MaskedAffineAutoregressiveConv2d(2, hidden_channels=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow(torch.randn(1, 2, 3, 3))


@pytest.mark.parametrize("height,width", [(5, 1), (1, 5), (1, 1)])
def test_one_pixel_wide_or_high_images(height, width):
    """Found by hypothesis: steps without pixels made the fast solve fail on N x 1 images."""
    flow = make_flow(2, reverse=True)
    x = torch.randn(2, 2, height, width, dtype=torch.float64)
    z, log_det = flow.inverse(x)
    for backend in flow.backends:
        flow.solver = backend
        x_back, log_det_back = flow(z)
        torch.testing.assert_close(x_back, x)
        torch.testing.assert_close(log_det_back, -log_det)
