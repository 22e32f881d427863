"""ImageMultiscaleFlow refuses what no layer may see, and a refused call leaves it unchanged."""

import copy

import normflows as nf
import pytest
import torch

from normflows_emerging import GlowStep, bits_per_dim, build_multiscale_flow, replace_mixing
from normflows_emerging.app.errors import NonFiniteError
from normflows_emerging.flows import Chain, PeriodicConv2d, QR1x1
from normflows_emerging.multiscale import build_glow


def _model(num_classes=None):
    return build_multiscale_flow((1, 8, 8), 1, 1, 4, num_classes=num_classes)


GOOD = torch.rand(2, 1, 8, 8)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (GOOD.double(), TypeError, "float32 parameters but got images of dtype torch.float64"),
        ((GOOD * 255).to(torch.uint8), TypeError, "dtype torch.uint8"),
        (torch.full((2, 1, 8, 8), float("nan")), ValueError, "finite images"),
        (GOOD.clone().index_fill_(0, torch.tensor([1]), float("inf")), ValueError, "finite images"),
        (GOOD[:0], ValueError, "at least one example"),
    ],
)
def test_a_refused_batch_reaches_no_layer(bad, error, message):
    """The first batch initialises ActNorm: a refused one must not, nor change anything else."""
    model = _model()
    untouched = copy.deepcopy(model)
    with pytest.raises(error, match=message):
        model.log_prob(bad)
    with pytest.raises(error, match=message):
        model.inverse_and_log_det(bad)
    with pytest.raises(error, match=message):
        model.forward_kld(bad)
    for name, value in untouched.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    torch.testing.assert_close(model.log_prob(GOOD), untouched.log_prob(GOOD))


def test_latents_are_checked_like_images():
    model = _model()
    model.log_prob(GOOD)  # initialise ActNorm
    z, _ = model.inverse_and_log_det(GOOD)
    with pytest.raises(TypeError, match="latents"):
        model.forward_and_log_det([latent.double() for latent in z])
    with pytest.raises(ValueError, match="finite latents"):
        model.forward_and_log_det([latent * float("nan") for latent in z])
    with pytest.raises(ValueError, match="at least one example"):
        model.forward_and_log_det([latent[:0] for latent in z])


@pytest.mark.parametrize("temperature", [-1.0, 0, float("nan"), float("inf"), True, "1"])
def test_sampling_temperature_must_be_a_positive_number(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        _model().sample(2, temperature=temperature)


def test_temperature_is_reset_when_sampling_fails():
    model = _model()
    model.log_prob(GOOD)
    expected = model.log_prob(GOOD)

    def fail(z):
        raise torch.linalg.LinAlgError("injected")

    model.flows[0][0].forward = fail
    with pytest.raises(torch.linalg.LinAlgError, match="injected"):
        model.sample(2, temperature=0.5)
    assert all(q0.temperature is None for q0 in model.q0)
    torch.testing.assert_close(model.log_prob(GOOD), expected)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [7, 7]])
def test_class_labels_out_of_range_are_named(labels):
    model = _model(num_classes=3)
    y = torch.tensor(labels)
    with pytest.raises(ValueError, match=r"class labels y must lie in \[0, 3\)"):
        model.sample(2, y)
    with pytest.raises(ValueError, match=r"class labels y must lie in \[0, 3\)"):
        model.log_prob(GOOD, y)


def test_class_weights_must_be_finite_and_of_the_model_dtype():
    model = _model(num_classes=3)
    weights = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="finite class weights"):
        model.log_prob(GOOD, weights * float("nan"))
    with pytest.raises(TypeError, match="class weights"):
        model.log_prob(GOOD, weights.double())


def test_bits_per_dim_of_an_empty_batch_is_refused_by_the_model():
    with pytest.raises(ValueError, match="at least one example"):
        bits_per_dim(_model(), torch.rand(0, 1, 8, 8))


@pytest.mark.parametrize(
    "bad,error",
    [
        (torch.rand(2, 4, 4, 4).double(), TypeError),
        (torch.full((2, 4, 4, 4), float("nan")), ValueError),
        (torch.rand(0, 4, 4, 4), ValueError),
    ],
)
def test_a_glow_step_checks_before_its_actnorm_initialises(bad, error):
    step = GlowStep(4, 8)
    untouched = copy.deepcopy(step)
    with pytest.raises(error):
        step.inverse(bad)
    x = torch.rand(2, 4, 4, 4)
    torch.testing.assert_close(step.inverse(x), untouched.inverse(x))


def test_non_finite_samples_are_refused():
    """normflows' own flows (here ActNorm) do not check their sampling direction: an overflow
    there must not come back as inf images."""
    model = _model()
    model.log_prob(GOOD)  # initialises ActNorm
    actnorm = next(m for m in model.modules() if type(m).__name__ == "ActNorm")
    with torch.no_grad():
        actnorm.s.fill_(200.0)  # the sampling direction multiplies by exp(200): inf in float32
    with pytest.raises(NonFiniteError, match="sampled values are NaN or infinite"):
        model.sample(2)


def test_builder_refuses_levels_too_small_for_the_mixing_kernel():
    with pytest.raises(
        ValueError,
        match=r"level 2 \(of 2\) see 2x2 images, but GlowStep needs "
        r"at least 3x3",
    ):
        build_multiscale_flow((3, 8, 8), 2, 2, 16, mixing="periodic")
    with pytest.raises(ValueError, match="see 4x4 images, but GlowStep needs at least 5x5"):
        build_multiscale_flow((1, 8, 8), 1, 1, 4, mixing="periodic", kernel_size=5)
    model = build_multiscale_flow((1, 12, 12), 2, 1, 4, mixing="periodic")  # 3x3 at the bottom
    assert torch.isfinite(model.log_prob(torch.rand(2, 1, 12, 12))).all()


class _SizedStep(nf.flows.Flow):
    """A custom step declaring ``min_image_size`` as given, around a periodic 3x3 layer."""

    def __init__(self, channels, min_image_size):
        super().__init__()
        self.min_image_size = min_image_size
        self.inner = PeriodicConv2d(channels, 3)

    def forward(self, z):
        return self.inner(z)

    def inverse(self, x):
        return self.inner.inverse(x)


@pytest.mark.parametrize(
    "size, error",
    [
        ("3", TypeError),
        (3.0, TypeError),
        (float("nan"), TypeError),
        (True, TypeError),
        (torch.tensor(3), TypeError),
        (0, ValueError),
        (-1, ValueError),
    ],
)
def test_builder_refuses_a_min_image_size_that_is_not_a_positive_int(size, error):
    # was: a bare "'<' not supported" for "3"; NaN, True, 0 and -1 built a model that failed
    # only at its first log_prob
    with pytest.raises(error, match="min_image_size must be a positive int or None"):
        build_glow((3, 8, 8), 2, 1, lambda channels: _SizedStep(channels, size))


def test_builder_takes_min_image_size_none_as_no_requirement():
    model = build_glow((3, 8, 8), 1, 1, lambda channels: _SizedStep(channels, None))
    assert torch.isfinite(model.log_prob(torch.rand(2, 3, 8, 8))).all()


def test_builder_sees_the_kernel_of_a_periodic_layer_inside_a_chain():
    # a mixing layer composed with Chain hid the periodic kernel: the model built, and its
    # 2x2 level failed only at the first log_prob
    def make_step(channels):
        step = GlowStep(channels, 8, mixing="qr")
        step.flows[1] = Chain([QR1x1(channels), PeriodicConv2d(channels, 3)])
        return step

    with pytest.raises(ValueError, match="see 2x2 images, but GlowStep needs at least 3x3"):
        build_glow((3, 8, 8), 2, 1, make_step)
    assert Chain([QR1x1(2), PeriodicConv2d(2, 5)]).min_image_size == 5
    assert Chain([QR1x1(2)]).min_image_size == 1


def test_replace_mixing_refuses_levels_too_small_for_the_new_kernel():
    # was: replaced silently, and the 2x2 level failed only at the first log_prob
    model = build_multiscale_flow((3, 8, 8), 2, 1, 8, mixing="qr")
    before = [type(m).__name__ for m in model.modules()]
    with pytest.raises(
        ValueError,
        match=r"level 2 \(of 2\) see 2x2 images, but PeriodicConv2d "
        r"needs at least 3x3",
    ):
        replace_mixing(model, "periodic")
    assert [type(m).__name__ for m in model.modules()] == before
    model = build_multiscale_flow((3, 12, 12), 2, 1, 8, mixing="qr")
    replace_mixing(model, "periodic")  # 3x3 at the bottom
    assert torch.isfinite(model.log_prob(torch.rand(2, 3, 12, 12))).all()


def normflows_glow_example(input_shape, levels, flows_per_level, hidden_channels):
    """A Glow laid out by hand as in normflows' own Glow example (nf.MultiscaleFlow)."""
    channels, height, width = input_shape
    q0, flows, merges = [], [], []
    for i in range(levels):
        flows.append(
            [
                nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), hidden_channels)
                for _ in range(flows_per_level)
            ]
            + [nf.flows.Squeeze()]
        )
        factor = 2 ** (levels - i)
        latent = (channels * factor * (2 if i == 0 else 1), height // factor, width // factor)
        if i > 0:
            merges.append(nf.flows.Merge())
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


@pytest.mark.filterwarnings("ignore:torch.lu is deprecated")
def test_replace_mixing_refuses_small_levels_of_a_normflows_multiscale_flow():
    """Issue 24: a normflows MultiscaleFlow whose deepest level is 2x2 took periodic layers, and
    failed only at its first log_prob."""
    torch.manual_seed(0)
    model = normflows_glow_example((3, 8, 8), 2, 1, 8)
    before = copy.deepcopy(model.state_dict())
    modules = [type(m).__name__ for m in model.modules()]
    with pytest.raises(ValueError, match=r"level 2 \(of 2\) see 2x2 images, but PeriodicConv2d"):
        replace_mixing(model, "periodic")
    assert [type(m).__name__ for m in model.modules()] == modules
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model = normflows_glow_example((3, 12, 16), 2, 1, 8)  # 3x4 at the deepest level
    replace_mixing(model, "periodic")
    assert torch.isfinite(model.log_prob(torch.rand(2, 3, 12, 16), None)).all()
    replace_mixing(normflows_glow_example((3, 8, 8), 2, 1, 8), "emerging")  # any size


@pytest.mark.filterwarnings("ignore:torch.lu is deprecated")
def test_replace_mixing_refuses_a_small_single_scale_normflows_model():
    model = nf.NormalizingFlow(
        nf.distributions.DiagGaussian((12, 2, 2)),
        [nf.flows.GlowBlock(12, 8), nf.flows.ActNorm((12, 1, 1)), nf.flows.GlowBlock(12, 8)],
    )
    with pytest.raises(ValueError, match="the steps of the model see 2x2 images"):
        replace_mixing(model, "periodic")
    squeezed = nf.NormalizingFlow(  # sampling: 2x2, then a Squeeze makes it 4x4
        nf.distributions.DiagGaussian((12, 2, 2)),
        [nf.flows.Squeeze(), nf.flows.GlowBlock(3, 8)],
    )
    replace_mixing(squeezed, "periodic")
    assert torch.isfinite(squeezed.log_prob(torch.rand(2, 3, 4, 4))).all()
