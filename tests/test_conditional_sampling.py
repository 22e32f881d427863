"""Class-conditional sampling: one class per image at every level, labels in and out, log q."""

import pytest
import torch

from normflows_emerging.app.checkpoint import SAMPLING, derive_seed
from normflows_emerging.app.evaluation import class_labels
from normflows_emerging.app.evaluation import sample as app_sample
from normflows_emerging.multiscale import build_multiscale_flow

NUM_CLASSES = 10
SPACING = 30.0  # distance between the class means of every latent entry


@pytest.fixture(scope="module")
def model():
    """A float64 class-conditional model whose classes lie far apart in every level's latent."""
    torch.manual_seed(0)
    model = build_multiscale_flow(
        (1, 8, 8), levels=2, flows_per_level=1, hidden_channels=8, num_classes=NUM_CLASSES
    ).double()
    model.log_prob(torch.rand(32, 1, 8, 8, dtype=torch.float64), torch.arange(32) % NUM_CLASSES)
    with torch.no_grad():
        for q0 in model.q0:
            q0.loc.copy_(SPACING * torch.arange(NUM_CLASSES, dtype=torch.float64))
    return model.eval()


def latent_classes(model, x):
    """The class of each image at each level, from its latent's distance to the class means:
    shape (levels, batch)."""
    with torch.no_grad():
        latents, _ = model.inverse_and_log_det(x)
    means = [z.flatten(1).mean(1) for z in latents]
    return torch.stack([(m / SPACING).round().long() for m in means])


def test_drawn_labels_are_one_class_per_image_at_every_level(model):
    torch.manual_seed(1)
    with torch.no_grad():
        x, log_q, y = model.sample_with_labels(300)
    assert y.shape == (300,) and y.dtype == torch.int64
    assert len(set(y.tolist())) == NUM_CLASSES
    assert (latent_classes(model, x) == y).all()
    with torch.no_grad():
        log_p = model.log_prob(x, y)
    torch.testing.assert_close(log_q, log_p, rtol=1e-6, atol=0)


def test_sample_without_labels_has_log_q_of_one_class(model):
    torch.manual_seed(2)
    with torch.no_grad():
        x, log_q = model.sample(200)
    classes = latent_classes(model, x)
    assert (classes == classes[0]).all()
    with torch.no_grad():
        log_p = model.log_prob(x, classes[0])
    torch.testing.assert_close(log_q, log_p, rtol=1e-6, atol=0)


def test_given_labels_are_used_and_returned(model):
    y = torch.tensor([7, 3, 3, 0, 9, 1])
    with torch.no_grad():
        x, log_q, labels = model.sample_with_labels(len(y), y)
    assert labels is y
    assert (latent_classes(model, x) == y).all()
    with torch.no_grad():
        x, _ = model.sample(y=y)  # num_samples left at 1 takes len(y)
    assert (latent_classes(model, x) == y).all()


@pytest.mark.parametrize("temperature", [0.5, 0.7, 1.5])
def test_temperature_scales_every_latent_around_its_class_mean(model, temperature):
    y = torch.arange(12) % NUM_CLASSES
    latents = []
    for t in (1.0, temperature):
        torch.manual_seed(3)
        with torch.no_grad():
            x, _ = model.sample(12, y, temperature=t)
            latents.append(model.inverse_and_log_det(x)[0])
    for z_one, z_t in zip(*latents):
        mean = SPACING * y.double().view(-1, 1, 1, 1)
        torch.testing.assert_close(z_t - mean, temperature * (z_one - mean), rtol=1e-6, atol=1e-9)


def test_application_samples_every_class_in_turn(model):
    """The application's draws (CLI ``sample``, ``samples.png``, timing) pass one label per image:
    the same images as the model's own draw for those labels."""
    expected = class_labels(model, 20)
    assert expected.tolist() == [i % NUM_CLASSES for i in range(20)]
    for y, labels in ((None, expected), (torch.full((5,), 4), torch.full((5,), 4))):
        images = app_sample(model, len(labels), 0.7, seed=3, y=y)
        torch.manual_seed(derive_seed(3, SAMPLING))
        with torch.no_grad():
            x, _ = model.sample(len(labels), labels, temperature=0.7)
        torch.testing.assert_close(images, x.clamp(0, 1), rtol=0, atol=0)


def test_unconditional_model_returns_no_labels():
    model = build_multiscale_flow((1, 4, 4), 1, 1, 4)
    model.log_prob(torch.rand(4, 1, 4, 4), None)
    with torch.no_grad():
        x, log_q, y = model.sample_with_labels(3)
    assert y is None and x.shape == (3, 1, 4, 4)
    assert class_labels(model, 3) is None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_labels_of_any_integer_dtype_are_used_as_int64(model, dtype):
    y = torch.tensor([7, 3, 0, 9])
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, y.to(dtype)), model.log_prob(x, y))
        torch.manual_seed(1)
        samples, _, labels = model.sample_with_labels(4, y.to(dtype))
    assert labels.dtype == torch.int64 and (labels == y).all()
    assert (latent_classes(model, samples) == y).all()


def test_empty_labels_are_refused(model):
    with pytest.raises(ValueError, match="at least one"):
        model.sample_with_labels(1, y=torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        model.sample_with_labels(1, y=torch.empty(0, NUM_CLASSES, dtype=torch.float64))


@pytest.mark.parametrize(
    "row",
    [
        [0.0] * NUM_CLASSES,  # all zero
        [1.0, -0.5] + [0.0] * (NUM_CLASSES - 2),  # a negative weight
        [-0.1] * NUM_CLASSES,
    ],
)
def test_class_weight_rows_must_be_non_negative_with_a_positive_sum(model, row):
    y = torch.ones(3, NUM_CLASSES, dtype=torch.float64) / NUM_CLASSES
    y[1] = torch.tensor(row, dtype=torch.float64)
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        model.sample_with_labels(3, y)
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        model.log_prob(torch.rand(3, 1, 8, 8, dtype=torch.float64), y)
    with torch.no_grad():  # valid weights still work
        model.log_prob(torch.rand(3, 1, 8, 8, dtype=torch.float64), y.abs() + 0.1)
