"""Mixing-layer registry, Glow layout and builders, GlowStep, replace_mixing and bits_per_dim."""

import math
import warnings

import normflows as nf
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from normflows_emerging import mixing as mixing_registry
from normflows_emerging.flows.actnorm import ActNorm
from normflows_emerging.glow import GlowStep, replace_mixing
from normflows_emerging.likelihood import bits_per_dim, bits_per_dim_from_nll
from normflows_emerging.mixing import build_mixing, mixing_layers, register_mixing
from normflows_emerging.multiscale import build_glow, build_multiscale_flow

# Non-square, and the deepest level (3x4 pixels) still fits a periodic 3x3 kernel.
SHAPE = (1, 12, 16)
TINY = {"levels": 2, "flows_per_level": 2, "hidden_channels": 8}
BUILT_IN = ["1x1", "plu", "qr", "emerging", "periodic", "maf"]
SMALL = {"maf": {"maf_hidden_channels": 8}}  # mixing kwargs that keep the models small


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the mixing registry, so that tests can register layers without leaking them."""
    monkeypatch.setattr(mixing_registry, "_MIXING", dict(mixing_registry._MIXING))


def tiny_model(mixing, shape=SHAPE, num_classes=None):
    model = build_multiscale_flow(
        shape, **TINY, mixing=mixing, num_classes=num_classes, **SMALL.get(mixing, {})
    )
    return model.double()


def normflows_glow(input_shape, levels, flows_per_level, hidden_channels, num_classes=None):
    """The package's Glow layout around normflows' own GlowBlocks (PLU 1x1 convolutions)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")  # normflows' LU set-up
        return build_glow(
            input_shape,
            levels,
            flows_per_level,
            lambda channels: nf.flows.GlowBlock(channels, hidden_channels),
            num_classes=num_classes,
        )


class ChannelFlip(nf.flows.Flow):
    """A registrable mixing layer with log_det 0: reverses the channel order."""

    def __init__(self, num_channels):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, z):
        return z.flip(1), z.new_zeros(len(z))

    def inverse(self, x):
        return x.flip(1), x.new_zeros(len(x))


def actnorms_initialised(model):
    return [bool(m.data_dep_init_done) for m in model.modules() if isinstance(m, nf.flows.ActNorm)]


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
    """Same seed, same model: GlowStep("plu") draws and names its parameters as GlowBlock does."""
    torch.manual_seed(1)
    ours = build_multiscale_flow((3, 16, 16), 3, 2, 16, mixing="plu", num_classes=num_classes)
    torch.manual_seed(1)
    reference = normflows_glow((3, 16, 16), 3, 2, 16, num_classes=num_classes)
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    for name, value in reference_state.items():
        assert torch.equal(ours_state[name], value), name
    x = torch.rand(4, 3, 16, 16)
    y = None if num_classes is None else torch.tensor([0, 3, 9, 3])
    with torch.no_grad():
        torch.testing.assert_close(ours.log_prob(x, y), reference.log_prob(x, y), rtol=0, atol=0)


def test_glow_step_layout_is_glow_blocks():
    step = GlowStep(6, 8, mixing="qr", split_mode="channel_inv", scale_map="exp", leaky=0.1)
    kinds = [type(flow) for flow in step.flows]
    assert kinds == [nf.flows.AffineCouplingBlock, type(build_mixing("qr", 6)), ActNorm]
    assert isinstance(step.flows[2], nf.flows.ActNorm)  # normflows' ActNorm, safely initialised
    block = nf.flows.GlowBlock(6, 8, split_mode="channel_inv", scale_map="exp", leaky=0.1)
    assert [(n, p.shape) for n, p in step.flows[0].named_parameters()] == [
        (n, p.shape) for n, p in block.flows[0].named_parameters()
    ]


def test_multiscale_latent_shapes():
    """(3, 16, 16), 3 levels: latents (48, 2, 2), (12, 4, 4), (6, 8, 8), all 768 dimensions."""
    model = normflows_glow((3, 16, 16), 3, 1, 8)
    with torch.no_grad():
        z, _ = model.inverse_and_log_det(torch.rand(2, 3, 16, 16))
    assert [tuple(latent.shape) for latent in z] == [(2, 48, 2, 2), (2, 12, 4, 4), (2, 6, 8, 8)]
    assert model.latent_shapes == [(48, 2, 2), (12, 4, 4), (6, 8, 8)]


@pytest.mark.parametrize("mixing", BUILT_IN)
def test_replace_mixing_on_normflows_glow(mixing):
    model = normflows_glow(SHAPE, **TINY).double()
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        model.log_prob(x, None)
    blocks = [m for m in model.modules() if isinstance(m, nf.flows.GlowBlock)]
    old = [block.flows[1] for block in blocks]
    old_actnorms = [block.flows[2].state_dict() for block in blocks]

    assert replace_mixing(model, mixing, **SMALL.get(mixing, {})) is model

    for block, old_layer, old_actnorm in zip(blocks, old, old_actnorms):
        assert len(block.flows) == 3
        assert block.flows[1] is not old_layer
        assert type(block.flows[1]) is type(build_mixing(mixing, 4))
        assert all(p.dtype == torch.float64 for p in block.parameters())
        # the ActNorm is this package's, with the state it had (initialised)
        assert type(block.flows[2]) is ActNorm and block.flows[2].initialised
        for name, value in block.flows[2].state_dict().items():
            assert torch.equal(value, old_actnorm[name].to(value.dtype)), name
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


def test_custom_registered_layer(registry):
    assert register_mixing("channel_flip")(ChannelFlip) is ChannelFlip
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


def test_factory_that_returns_no_flow_is_named_at_build_time(registry):
    register_mixing("returns_none", lambda num_channels: None)
    for build in (
        lambda: build_mixing("returns_none", 4),
        lambda: GlowStep(4, 8, mixing="returns_none"),
        lambda: build_multiscale_flow(SHAPE, **TINY, mixing="returns_none"),
        lambda: replace_mixing(normflows_glow(SHAPE, **TINY), "returns_none"),
    ):
        with pytest.raises(TypeError, match="'returns_none'.*NoneType"):
            build()


def test_register_mixing_refuses_a_class_that_is_no_flow(registry):
    with pytest.raises(TypeError, match="normflows.flows.Flow.*Linear"):
        register_mixing("linear", torch.nn.Linear)
    assert "linear" not in mixing_layers()


@pytest.mark.parametrize("name", ["", "two words", "tab\t", "new\nline"])
def test_register_mixing_refuses_bad_names(registry, name):
    with pytest.raises(ValueError, match="whitespace"):
        register_mixing(name, ChannelFlip)
    assert name not in mixing_layers()


def test_register_mixing_decorator_refuses_a_taken_name_at_once(registry):
    with pytest.raises(ValueError, match="'qr' is already registered"):
        register_mixing("qr")


def test_replace_mixing_again_and_on_glow_steps():
    model = normflows_glow(SHAPE, **TINY).double()
    replace_mixing(model, "maf", **SMALL["maf"])
    replace_mixing(model, "qr")
    ours = replace_mixing(tiny_model("emerging"), "periodic")
    for built in (model, ours):
        layers = [
            block.flows[1]
            for block in built.modules()
            if isinstance(block, (nf.flows.GlowBlock, GlowStep))
        ]
        assert len(layers) == 4 and all(
            type(layer).__name__ == "PeriodicConv2d" or type(layer).__name__ == "QR1x1"
            for layer in layers
        )
        x = torch.rand(2, *SHAPE, dtype=torch.float64)
        with torch.no_grad():
            built.log_prob(x, None)
            assert_round_trip(built, x)


def test_replace_mixing_changes_nothing_when_a_block_fails(registry):
    @register_mixing("eight_or_more")
    def eight_or_more(num_channels):
        if num_channels < 8:
            raise ValueError(f"eight_or_more takes at least 8 channels, got {num_channels}")
        return ChannelFlip(num_channels)

    model = normflows_glow(SHAPE, **TINY)  # blocks of 8 channels (level 0), then of 4 (level 1)
    before = [block.flows[1] for block in model.modules() if isinstance(block, nf.flows.GlowBlock)]
    with pytest.raises(ValueError, match="at least 8"):
        replace_mixing(model, "eight_or_more")
    after = [block.flows[1] for block in model.modules() if isinstance(block, nf.flows.GlowBlock)]
    assert all(old is new for old, new in zip(before, after))


def test_replace_mixing_refuses_unknown_glow_block_layouts():
    block = nf.flows.GlowBlock(4, 8)
    block.flows.append(nf.flows.ActNorm((4, 1, 1)))
    with pytest.raises(ValueError, match="AffineCouplingBlock, mixing layer, ActNorm"):
        replace_mixing(block, "qr")
    block = nf.flows.GlowBlock(4, 8)
    block.flows[1] = ChannelFlip(4)
    del block.flows[1].num_channels
    with pytest.raises(TypeError, match="ChannelFlip.*num_channels"):
        replace_mixing(block, "qr")


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


# A model checks its inputs at its boundary (issue 11.2): the message names the model's shape, and
# no layer sees the bad input (ActNorm's data-dependent initialisation stays undone).

WRONG_IMAGES = [(2, 3, 16, 16), (2, 1, 8, 8), (2, 3, 8, 4), (3, 8, 8), (2, 3, 8, 8, 1)]


@pytest.mark.parametrize("shape", WRONG_IMAGES)
@pytest.mark.parametrize("call", ["log_prob", "forward", "forward_kld", "inverse_and_log_det"])
def test_wrong_image_shape_names_the_models_input_shape(shape, call):
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    with pytest.raises(ValueError, match=rf"\(batch, 3, 8, 8\), got shape \({shape[0]}, "):
        getattr(model, call)(*([torch.rand(shape)] + [None] * (call == "log_prob")))
    assert not any(actnorms_initialised(model))


def test_right_image_shape_still_initialises_and_runs():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    with torch.no_grad():
        log_p = model.log_prob(torch.rand(4, 3, 8, 8))
    assert log_p.shape == (4,) and all(actnorms_initialised(model))


def test_images_must_be_a_tensor():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    with pytest.raises(TypeError, match="torch.Tensor.*ndarray"):
        model.log_prob(np.zeros((2, 3, 8, 8), dtype=np.float32))


def test_wrong_latents_are_named():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    with torch.no_grad():
        z, _ = model.inverse_and_log_det(torch.rand(2, 3, 8, 8))
        model.forward_and_log_det(z)  # the right ones pass
        for wrong in ([z[0]], [z[1], z[0]], [z[0], z[1][:1]], [z[0], z[1], z[1]]):
            with pytest.raises(ValueError, match=r"latents of shapes \[\('batch', 24, 2, 2\)"):
                model.forward_and_log_det(wrong)


def test_class_labels_are_checked():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr", num_classes=3)
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"labels y of shape \(4,\).*got shape \(1,\)"):
        model.log_prob(x, torch.tensor([2]))  # would broadcast class 2 to the whole batch
    with pytest.raises(ValueError, match="integer dtype"):
        model.log_prob(x, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match="labels y as a torch.Tensor, got NoneType"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        model.log_prob(x, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        model.sample(5, torch.tensor([0, 1]))
    assert not any(actnorms_initialised(model))


def test_class_weights_give_the_same_log_prob_as_class_indices():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr", num_classes=3).double()
    for base in model.q0:
        base.loc.data.normal_()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    one_hot = torch.nn.functional.one_hot(y, 3).double()
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, one_hot), model.log_prob(x, y))
        samples, _ = model.sample(y=y)
        assert samples.shape == (4, 3, 8, 8)


def test_unconditional_model_refuses_labels():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    with pytest.raises(ValueError, match="not class-conditional"):
        model.log_prob(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not class-conditional"):
        model.sample(2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": True}, "levels"),
        ({"flows_per_level": 2.0}, "flows_per_level"),
        ({"hidden_channels": -8}, "hidden_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": "388"}, "input_shape"),
        ({"input_shape": (3.0, 8, 8)}, "input_shape"),
        ({"split_mode": "diagonal"}, "split_mode"),
    ],
)
def test_builder_refuses_bad_arguments(kwargs, match):
    arguments = {
        "input_shape": (3, 8, 8),
        "levels": 2,
        "flows_per_level": 1,
        "hidden_channels": 8,
        "mixing": "qr",
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        build_multiscale_flow(**arguments)


def test_builder_takes_numpy_ints():
    model = build_multiscale_flow(
        tuple(np.array([3, 8, 8])), np.int64(2), np.int64(1), np.int64(8), mixing="qr"
    )
    assert model.input_shape == (3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": 1}, "at least 2 channels"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"scale_map": "softplus"}, "scale_map"),
        ({"split_mode": "checkers"}, "split_mode"),
    ],
)
def test_glow_step_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlowStep(**{"channels": 4, "hidden_channels": 8, "mixing": "qr", **kwargs})


def test_single_channel_checkerboard_step_keeps_its_mixing_layer():
    step = GlowStep(1, 8, mixing="qr", split_mode="checkerboard").double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        z, log_det = step.inverse(x)
        x_back, log_det_back = step(z)
    assert type(step.flows[1]) is type(build_mixing("qr", 1))
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det_back, -log_det)


def test_build_glow_refuses_steps_that_are_no_flows():
    with pytest.raises(TypeError, match="make_step must return a normflows.flows.Flow, got Conv2d"):
        build_glow((3, 8, 8), 1, 1, lambda channels: torch.nn.Conv2d(channels, channels, 1))
    with pytest.raises(TypeError, match="callable"):
        build_glow((3, 8, 8), 1, 1, "GlowBlock")


def test_bits_per_dim_refuses_nan():
    model = tiny_model("qr", shape=(3, 8, 8))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        bits_per_dim(model, x)


def test_bits_per_dim_from_nll_by_hand_and_errors():
    assert bits_per_dim_from_nll(3 * math.log(2), 3, 256) == pytest.approx(9.0)
    assert bits_per_dim_from_nll(0.0, np.int64(3), np.int64(16)) == pytest.approx(4.0)
    for num_dims, num_bins, match in [
        (0, 256, "num_dims"),
        (3.5, 256, "num_dims"),
        (3, 1, "num_bins"),
        (3, True, "num_bins"),
    ]:
        with pytest.raises(ValueError, match=match):
            bits_per_dim_from_nll(1.0, num_dims, num_bins)


@pytest.mark.parametrize("mixing", ["1x1", "plu", "qr"])
def test_build_mixing_checks_the_channel_count(mixing):
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_channels"):
            build_mixing(mixing, bad)
    assert build_mixing(mixing, np.int64(3)).num_channels == 3


@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 3),
    levels=st.integers(1, 3),
    rows=st.integers(1, 3),
    columns=st.integers(1, 3),
    batch=st.integers(1, 3),
)
def test_layout_keeps_every_dimension(channels, levels, rows, columns, batch):
    """With steps that only permute channels the model is a permutation of the pixels: latents of
    the stated shapes holding all C*H*W values, an exact round trip and log_det 0."""
    shape = (channels, rows * 2**levels, columns * 2**levels)
    model = build_glow(shape, levels, 1, ChannelFlip).double()  # inputs must match the model
    x = torch.randn(batch, *shape, dtype=torch.float64)
    z, log_det = model.inverse_and_log_det(x)
    assert [tuple(latent.shape[1:]) for latent in z] == model.latent_shapes
    values = torch.cat([latent.reshape(batch, -1) for latent in z], dim=1)
    assert torch.equal(values.sort(dim=1).values, x.reshape(batch, -1).sort(dim=1).values)
    x_back, log_det_back = model.forward_and_log_det(z)
    assert torch.equal(x_back, x)
    assert torch.equal(log_det, torch.zeros(batch, dtype=torch.float64))
    assert torch.equal(log_det_back, log_det)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_any_other_image_shape_is_refused(shape):
    model = build_glow((2, 4, 8), 2, 1, ChannelFlip)
    assume(len(shape) != 4 or tuple(shape[1:]) != (2, 4, 8))  # not the model's own shape
    with pytest.raises(ValueError, match=r"\(batch, 2, 4, 8\)"):
        model.log_prob(torch.zeros(shape), None)
