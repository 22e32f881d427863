"""Layers and whole models survive pickling (``torch.save(model)``) with their behaviour intact."""

import io
import pickle

import pytest
import torch

from brute_force import perturb_
from normflows_emerging import (
    EmergingConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_multiscale_flow,
)

LAYERS = {
    "emerging": lambda: EmergingConv2d(3, 3),
    "autoregressive": lambda: SquareAutoregressiveConv2d(3, 2, flip=True, dilation=2),
    "qr": lambda: QR1x1(3),
    "periodic": lambda: PeriodicConv2d(3, 3),
}


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_pickled_layer_gives_the_same_results_and_an_empty_cache(make):
    layer = perturb_(make().double(), std=0.1).eval()
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(z), layer.inverse(z)  # fills the eval caches
    copy = pickle.loads(pickle.dumps(layer))
    for module in copy.modules():
        if hasattr(module, "_cache"):
            assert module._cache._state is None
    with torch.no_grad():
        torch.testing.assert_close((copy(z), copy.inverse(z)), expected)


def test_pickled_layer_still_converts_checkpoints_and_drops_stored_masks():
    """The load_state_dict hooks (old log_d name, stored masks) are pickled with the layer."""
    layer = pickle.loads(pickle.dumps(SquareAutoregressiveConv2d(2, 2)))
    old = {
        "weight": torch.zeros(2, 2, 2, 2),
        "bias": torch.zeros(2),
        "log_d": torch.tensor([0.7, -3.0]),
        "mask": torch.zeros(2, 2, 2, 2),
    }
    layer.load_state_dict(old, strict=True)
    torch.testing.assert_close(layer.log_d, torch.tensor([0.7, -3.0]))
    assert layer.mask.sum() > 0


def test_torch_save_of_a_whole_emerging_model_samples_the_same():
    model = build_multiscale_flow((3, 8, 8), 2, 1, 4, mixing="emerging")
    with torch.no_grad():
        model.log_prob(torch.rand(2, 3, 8, 8))  # data-dependent initialisation of the ActNorms
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = model.sample(2)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.manual_seed(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sample(2), expected)
