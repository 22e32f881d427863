"""ActNorm: initialisation on degenerate batches, normflows compatibility, no device reads."""

import normflows as nf
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from normflows_emerging.flows.actnorm import ActNorm
from normflows_emerging.likelihood import bits_per_dim
from normflows_emerging.multiscale import build_multiscale_flow


def batch_with_channel(channel_values, channels=3, shape=(8, 4, 5)):
    """Random batch whose channel 1 is replaced by ``channel_values`` (broadcast)."""
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
    x[:, 1] = channel_values
    return x


DEGENERATE = {
    "constant": lambda: batch_with_channel(0.25),
    "tiny spread": lambda: batch_with_channel(0.25 + 1e-7 * torch.randn(8, 4, 5)),
    "large constant": lambda: batch_with_channel(1e4),
}


@pytest.mark.parametrize("direction", ["inverse", "forward"])
@pytest.mark.parametrize("case", DEGENERATE)
def test_a_channel_without_spread_is_centred_not_blown_up(case, direction):
    x = DEGENERATE[case]()
    layer = ActNorm((3, 1, 1)).double()
    out, log_det = getattr(layer, direction)(x)
    assert layer.initialised
    assert layer.s[0, 1].item() == 0  # scale 1 for the undefined channel
    assert out[:, 1].abs().max() < 1e-5  # centred
    for c in (0, 2):  # the others come out standardised, as in normflows
        torch.testing.assert_close(out[:, c].mean(), x.new_tensor(0.0), atol=1e-12, rtol=0)
        torch.testing.assert_close(out[:, c].std(), x.new_tensor(1.0), rtol=1e-5, atol=0)
    back, back_log_det = getattr(layer, "forward" if direction == "inverse" else "inverse")(out)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(back_log_det, -log_det)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3), (2, 3, 1, 1)])
def test_a_single_value_per_channel_gives_scale_one(shape):
    # one example of one pixel: no spread at all (torch.std would be NaN); two: a real spread
    layer = ActNorm((3, 1, 1) if len(shape) == 4 else (3,)).double()
    x = torch.randn(shape, dtype=torch.float64)
    layer.inverse(x)
    assert torch.isfinite(layer.s).all() and torch.isfinite(layer.t).all()
    if shape[0] == 1:
        assert (layer.s == 0).all()
        torch.testing.assert_close(layer.t.reshape(-1), x.reshape(-1))
    else:
        assert (layer.s != 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_or_empty_first_batch_is_refused_and_leaves_it_uninitialised(bad):
    layer = ActNorm((3, 1, 1))
    x = torch.randn(4, 3, 2, 2)
    x[0, 2, 1, 1] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        layer.inverse(x)
    with pytest.raises(ValueError, match="empty"):
        layer.forward(x[:0])
    assert not layer.initialised and layer.data_dep_init_done.item() == 0


def test_a_model_initialised_on_a_constant_channel_keeps_a_usable_likelihood():
    """The issue's case: constant pixels at the even positions of the first batch, one channel
    after the squeeze; normflows' ActNorm gives a 1e6 scale and bits/dim of about 1e11."""
    torch.manual_seed(0)
    model = build_multiscale_flow((1, 8, 8), levels=1, flows_per_level=2, hidden_channels=8)
    first = torch.rand(64, 1, 8, 8)
    first[:, :, ::2, ::2] = 0.5
    model.log_prob(first, None)
    ordinary = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        bpd = bits_per_dim(model, ordinary).mean().item()
    assert bpd < 20


def test_state_dict_is_normflows_and_loading_sets_the_flag():
    ours, theirs = ActNorm((4, 1, 1)), nf.flows.ActNorm((4, 1, 1))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    theirs.inverse(torch.randn(5, 4, 3, 3))
    ours.load_state_dict(theirs.state_dict())
    assert ours.initialised
    x = torch.randn(2, 4, 3, 3)
    (out, log_det), (their_out, their_log_det) = ours.inverse(x), theirs.inverse(x)
    torch.testing.assert_close(out, their_out)
    torch.testing.assert_close(log_det, their_log_det.expand(2))  # theirs is 0-d
    ours.load_state_dict(ActNorm((4, 1, 1)).state_dict())
    assert not ours.initialised
    ours.inverse(x)
    assert ours.initialised and ours.data_dep_init_done.item() == 1


class CountScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (``.item()``, ``bool()``): on CUDA each is a
    synchronisation."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layer_class", [ActNorm, nf.flows.ActNorm])
def test_an_initialised_layer_reads_no_device_value(layer_class):
    layer = layer_class((3, 1, 1))
    layer.inverse(torch.randn(4, 3, 2, 2))
    with CountScalarReads() as counter:
        z, _ = layer.forward(torch.randn(2, 3, 2, 2))
        layer.inverse(z)
    if layer_class is ActNorm:
        assert counter.reads == 0
    else:  # normflows reads its buffer with bool() on every call
        assert counter.reads == 2


def test_min_std_is_checked():
    with pytest.raises(ValueError, match="min_std"):
        ActNorm((3, 1, 1), min_std=0)


def test_glow_steps_and_their_networks_use_it():
    from normflows_emerging.glow import GlowStep

    step = GlowStep(4, 6, mixing="qr", net_actnorm=True)
    inner = [m for m in step.modules() if isinstance(m, nf.flows.ActNorm)]
    assert len(inner) == 3 and all(isinstance(m, ActNorm) for m in inner)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize(
    "shape, x",
    [
        ((3, 1, 1), torch.randn(4, 1, 2, 2)),  # would broadcast to (4, 3, 2, 2)
        ((3, 1, 1), torch.randn(4, 3, 2)),  # 3-d
        ((3, 1, 1), torch.randn(4, 3, 2, 2, 1)),
        ((3, 2, 2), torch.randn(4, 3, 1, 1)),  # would broadcast
    ],
)
def test_a_mismatched_shape_is_a_value_error(direction, shape, x):
    layer = ActNorm(shape)
    with pytest.raises(ValueError, match=r"expects a tensor of shape \(batch, 3, "):
        getattr(layer, direction)(x)
    assert not layer.initialised


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("initialised", [False, True])
def test_a_wrong_dtype_is_a_type_error(direction, initialised):
    layer = ActNorm((3, 1, 1))
    if initialised:
        layer.inverse(torch.randn(4, 3, 2, 2))
    with pytest.raises(TypeError, match="float32 and float64"):
        getattr(layer, direction)(torch.ones(4, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.float32 parameters but got a torch.float64"):
        getattr(layer, direction)(torch.randn(4, 3, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("shape, x_shape", [((3, 1, 1), (5, 3, 2, 4)), ((3, 2, 2), (5, 3, 2, 2))])
def test_log_det_has_the_batch_shape_and_context_is_accepted(shape, x_shape):
    layer = ActNorm(shape)
    x = torch.randn(x_shape)
    layer.inverse(x)
    with torch.no_grad():
        layer.s.add_(0.1 * torch.randn_like(layer.s))  # away from the initial values
    z, log_det = layer.inverse(x, context=torch.zeros(5, 2))
    back, back_log_det = layer.forward(z, context=torch.zeros(5, 2))
    torch.testing.assert_close(back, x)
    assert log_det.shape == back_log_det.shape == (5,)
    # brute force: the Jacobian of an elementwise map is diagonal
    jacobian = torch.autograd.functional.jacobian(lambda v: layer.inverse(v[None])[0][0], x[0])
    dense = jacobian.reshape(x[0].numel(), x[0].numel()).double()
    torch.testing.assert_close(log_det, torch.linalg.slogdet(dense)[1].float().expand(5))
    torch.testing.assert_close(back_log_det, -log_det)
