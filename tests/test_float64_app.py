"""The application's helpers follow the model's dtype: a float64 model is evaluated, probed,
sampled and trained on float64 data."""

import copy
import json
import math

import torch

from normflows_emerging.app import train as training
from normflows_emerging.app.config import TrainConfig, build_model, load_datasets
from normflows_emerging.app.evaluation import (
    dequantize,
    evaluate_bpd,
    parameter_dtype,
    probe_batch,
    sample,
)
from normflows_emerging.diagnostics import inverse_error

CONFIG = TrainConfig(
    levels=1, flows_per_level=1, hidden_channels=4, steps=2, eval_every=2, batch_size=8
)


def models():
    train_set, test_set = load_datasets(CONFIG)
    torch.manual_seed(0)
    model = build_model(CONFIG, tuple(train_set[0][0].shape))
    with torch.no_grad():
        model(probe_batch(train_set, 32), None)  # ActNorm initialisation
    return model, copy.deepcopy(model).double(), train_set, test_set


def test_dequantize_in_float64_is_the_float32_value_without_its_rounding():
    images = torch.randint(0, 256, (4, 3, 5, 5))
    noise = torch.rand(images.shape)
    single, double = dequantize(images, 256, noise), dequantize(images, 256, noise, torch.float64)
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    assert ((double >= 0) & (double < 1)).all()
    torch.testing.assert_close(double.float(), single, rtol=0, atol=0)
    top = dequantize(torch.full((1,), 255), 256, torch.full((1,), 1 - 2**-60), torch.float64)
    assert top.item() < 1


def test_float64_model_evaluates_probes_and_samples_in_float64():
    single, double, _, test_set = models()
    assert parameter_dtype(double) == torch.float64 and parameter_dtype(single) == torch.float32
    bpd32, bpd64 = evaluate_bpd(single, test_set), evaluate_bpd(double, test_set)
    assert math.isclose(bpd32, bpd64, rel_tol=1e-5)
    probe = probe_batch(test_set, 8, dtype=torch.float64)
    assert probe.dtype == torch.float64
    assert inverse_error(double, probe)["model"] < 1e-10
    assert sample(double, 3).dtype == torch.float64


def test_float64_model_trains(tmp_path):
    _, double, train_set, test_set = models()
    result = training.fit(double, train_set, test_set, CONFIG, tmp_path / "run", progress=False)
    assert result["step"] == 2 and math.isfinite(result["test_bpd"])
    assert result["inverse_error"] < 1e-10  # a float64 round trip
    assert parameter_dtype(double) == torch.float64
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
