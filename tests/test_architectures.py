"""Mixing-layer registry, multiscale builder, GlowStep, replace_mixing and bits_per_dim."""

import math

import normflows as nf
import pytest
import torch

from normflows_emerging import architectures
from normflows_emerging.architectures import (
    GlowStep,
    bits_per_dim,
    build_mixing,
    build_multiscale_flow,
    mixing_layers,
    register_mixing,
    replace_mixing,
)

# Non-square, and the deepest level (3x4 pixels) still fits a periodic 3x3 kernel.
SHAPE = (1, 12, 16)
TINY = dict(levels=2, flows_per_level=2, hidden_channels=8)
BUILT_IN = ["1x1", "plu", "qr", "emerging", "periodic", "maf"]
SMALL = {"maf": {"maf_hidden_channels": 8}}  # mixing kwargs that keep the models small


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def tiny_model(mixing, shape=SHAPE, num_classes=None):
    model = build_multiscale_flow(shape, **TINY, mixing=mixing, num_classes=num_classes,
                                  **SMALL.get(mixing, {}))
    return model.double()


def normflows_glow(input_shape, levels, flows_per_level, hidden_channels, num_classes=None):
    """Glow from normflows' own GlowBlocks, laid out as in normflows' Glow example."""
    channels, height, width = input_shape
    q0, flows, merges = [], [], []
    for i in range(levels):
        block_channels = channels * 2 ** (levels + 1 - i)
        flows.append([nf.flows.GlowBlock(block_channels, hidden_channels)
                      for _ in range(flows_per_level)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent_shape = (channels * 2 ** (levels - i), height // 2 ** (levels - i),
                            width // 2 ** (levels - i))
        else:
            latent_shape = (channels * 2 ** (levels + 1), height // 2**levels, width // 2**levels)
        if num_classes is None:
            q0.append(nf.distributions.GlowBase(latent_shape))
        else:
            q0.append(nf.distributions.ClassCondDiagGaussian(latent_shape, num_classes))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=num_classes is not None)


def assert_round_trip(model, x):
    z, log_det = model.inverse_and_log_det(x)
    x_back, log_det_back = model.forward_and_log_det(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det_back, -log_det)


def test_built_in_names():
    assert set(BUILT_IN) <= set(mixing_layers())


@pytest.mark.parametrize("mixing", BUILT_IN)
def test_log_prob_of_samples_matches_sampling_density(mixing):
    model = tiny_model(mixing)
    with torch.no_grad():
        x, log_q = model.sample(4)
        assert x.shape == (4, *SHAPE)
        torch.testing.assert_close(model.log_prob(x, None), log_q)


@pytest.mark.parametrize("mixing", BUILT_IN)
def test_round_trip(mixing):
    model = tiny_model(mixing)
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        model.log_prob(x, None)  # ActNorm data-dependent initialisation
        assert_round_trip(model, x)


def test_mixing_kwargs_reach_the_layer():
    small = GlowStep(4, 8, "emerging", kernel_size=3)
    large = GlowStep(4, 8, "emerging", kernel_size=5)
    assert isinstance(large.flows[1], type(build_mixing("emerging", 4)))
    assert large.flows[1].kernel_size == 5
    assert sum(p.numel() for p in large.parameters()) > sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("mixing", ["plu", "emerging"])
def test_class_conditional(mixing):
    model = tiny_model(mixing, shape=(3, 8, 8), num_classes=3)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        x, log_q = model.sample(y=y)
        torch.testing.assert_close(model.log_prob(x, y), log_q)
        for base in model.q0:  # move the class-conditional means apart
            base.loc.normal_()
        assert not torch.allclose(model.log_prob(x, y), model.log_prob(x, (y + 1) % 3))
        assert_round_trip(model, x)


@pytest.mark.parametrize("num_classes", [None, 10])
def test_plu_matches_normflows_glow(num_classes):
    ours = build_multiscale_flow((3, 16, 16), 3, 2, 16, mixing="plu", num_classes=num_classes)
    reference = normflows_glow((3, 16, 16), 3, 2, 16, num_classes=num_classes)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    shapes = [(name, p.shape) for name, p in ours.named_parameters()]
    assert shapes == [(name, p.shape) for name, p in reference.named_parameters()]


@pytest.mark.parametrize("mixing", BUILT_IN)
def test_replace_mixing_on_normflows_glow(mixing):
    model = normflows_glow(SHAPE, **TINY).double()
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        model.log_prob(x, None)
    blocks = [m for m in model.modules() if isinstance(m, nf.flows.GlowBlock)]
    old = [block.flows[1] for block in blocks]

    assert replace_mixing(model, mixing, **SMALL.get(mixing, {})) is model

    for block, old_layer in zip(blocks, old):
        assert len(block.flows) == 3
        assert block.flows[1] is not old_layer
        assert type(block.flows[1]) is type(build_mixing(mixing, 4))
        assert all(p.dtype == torch.float64 for p in block.parameters())
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x, None)).all()
        assert_round_trip(model, x)


def test_replace_mixing_on_single_channel_glow_block_inserts_the_layer():
    block = nf.flows.GlowBlock(1, 8, split_mode="checkerboard")
    replace_mixing(block, "qr")
    assert len(block.flows) == 3 and type(block.flows[1]) is type(build_mixing("qr", 1))


def test_replace_mixing_errors():
    with pytest.raises(ValueError, match="GlowBlock"):
        replace_mixing(torch.nn.Linear(2, 2), "qr")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        replace_mixing("model", "qr")


def test_custom_registered_layer(monkeypatch):
    monkeypatch.setattr(architectures, "_MIXING", dict(architectures._MIXING))

    @register_mixing("channel_flip")
    class ChannelFlip(nf.flows.Flow):
        def __init__(self, num_channels):
            super().__init__()
            self.num_channels = num_channels

        def forward(self, z):
            return z.flip(1), z.new_zeros(len(z))

        def inverse(self, x):
            return x.flip(1), x.new_zeros(len(x))

    assert "channel_flip" in mixing_layers()
    model = tiny_model("channel_flip")
    assert any(isinstance(m, ChannelFlip) for m in model.modules())
    with torch.no_grad():
        x, log_q = model.sample(4)
        torch.testing.assert_close(model.log_prob(x, None), log_q)
        assert_round_trip(model, x)
    with pytest.raises(ValueError, match="already registered"):
        register_mixing("channel_flip", ChannelFlip)
    assert register_mixing("flip_again", ChannelFlip) is ChannelFlip


def test_register_mixing_type_errors():
    with pytest.raises(TypeError, match="str"):
        register_mixing(3, lambda num_channels: None)
    with pytest.raises(TypeError, match="callable"):
        register_mixing("not_callable", 3)


def test_unknown_mixing_lists_known_names():
    glow = normflows_glow(SHAPE, **TINY)
    for build in (
        lambda: build_multiscale_flow(SHAPE, **TINY, mixing="nope"),
        lambda: GlowStep(4, 8, mixing="nope"),
        lambda: replace_mixing(glow, "nope"),
    ):
        with pytest.raises(ValueError, match="nope") as error:
            build()
        assert all(name in str(error.value) for name in BUILT_IN)


@pytest.mark.parametrize(
    "shape, levels",
    [((3, 12, 8), 3), ((3, 8, 6), 2), ((3, 8, 8), 0), ((3, 8), 1), ((0, 8, 8), 1)],
)
def test_invalid_shape_or_levels(shape, levels):
    with pytest.raises(ValueError, match="levels|input_shape"):
        build_multiscale_flow(shape, levels, 1, 8)


def test_invalid_counts():
    with pytest.raises(ValueError, match="flows_per_level"):
        build_multiscale_flow((3, 8, 8), 1, 0, 8)
    with pytest.raises(ValueError, match="hidden_channels"):
        build_multiscale_flow((3, 8, 8), 1, 1, 8.0)


def test_bits_per_dim_by_hand():
    shape = (2, 3, 4)
    base = nf.distributions.DiagGaussian(shape, trainable=False)
    model = nf.NormalizingFlow(base, []).double()
    x = torch.rand(5, *shape, dtype=torch.float64)
    num_dims = 24
    log_p = -0.5 * num_dims * math.log(2 * math.pi) - 0.5 * (x**2).sum(dim=(1, 2, 3))
    expected = -log_p / (num_dims * math.log(2)) + 8
    torch.testing.assert_close(bits_per_dim(model, x), expected)
    torch.testing.assert_close(bits_per_dim(model, x, num_bins=32), expected - 3)


def test_bits_per_dim_class_conditional():
    model = tiny_model("qr", shape=(3, 8, 8), num_classes=3)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 0])
    with torch.no_grad():
        bpd = bits_per_dim(model, x, y=y)
        expected = -model.log_prob(x, y) / (192 * math.log(2)) + 8
    assert bpd.shape == (4,)
    torch.testing.assert_close(bpd, expected)


def test_bits_per_dim_errors():
    model = tiny_model("qr", shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        bits_per_dim(model, torch.ones(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_bins"):
        bits_per_dim(model, torch.zeros(2, 3, 8, 8, dtype=torch.float64), num_bins=1)
