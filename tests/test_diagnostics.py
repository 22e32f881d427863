"""Round-trip (numerical invertibility) checks per flow and per model, and their warning."""

import copy
import json
import warnings

import normflows as nf
import pytest
import torch

from normflows_emerging import EmergingConv2d, build_multiscale_flow, diagnostics
from normflows_emerging.app.cli import main
from normflows_emerging.app.config import TrainConfig, build_model, load_datasets
from normflows_emerging.app.train import fit
from normflows_emerging.diagnostics import (
    INVERSE_ERROR_THRESHOLD,
    NumericalInvertibilityWarning,
    inverse_error,
    warn_if_not_invertible,
)
from normflows_emerging.flows.bounded import raw_from_log_scale


def emerging(weight_std, log_d, channels=4, seed=0):
    """An emerging convolution with autoregressive kernels of the given spread and diagonal."""
    torch.manual_seed(seed)
    layer = EmergingConv2d(channels, 3)
    with torch.no_grad():
        for part in (layer.causal, layer.anticausal):
            part.weight.normal_(0, weight_std)
            part.bias.normal_(0, 0.1)
            target = torch.full_like(part.raw_log_d, log_d)
            part.raw_log_d.copy_(raw_from_log_scale(target, "log_d"))
    return layer


def single_flow_model(layer, shape=(4, 8, 8)):
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(shape), [layer])


def test_ill_conditioned_emerging_convolution_warns():
    # Kernels far from diagonal dominance: log-det -512 (finite, "invertible"), but the two
    # solves amplify float32 rounding by many orders of magnitude.
    layer = emerging(0.5, -1.0)
    x = torch.rand(4, 4, 8, 8)
    _, log_det = layer.inverse(x)
    assert torch.isfinite(log_det).all() and log_det[0].item() == pytest.approx(-512)
    errors = inverse_error(single_flow_model(layer), x)
    assert errors["model"] > 1e3 and errors["flows"]["flows.0"] > 1e3
    assert errors["worst_flow"] == "flows.0"
    with pytest.warns(NumericalInvertibilityWarning, match=r"flows\.0.*float64"):
        assert warn_if_not_invertible(errors, "at step 7")


def test_healthy_model_does_not_warn():
    model = single_flow_model(emerging(0.05, 0.1))  # perturbed away from the initialisation
    errors = inverse_error(model, torch.rand(4, 4, 8, 8))
    assert errors["model"] < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_not_invertible(errors)


def test_nan_round_trip_counts_as_infinitely_wrong():
    layer = emerging(0.05, 0.0)
    with torch.no_grad():
        layer.causal.weight[0, 0, 0, 0] = float("nan")
    errors = inverse_error(single_flow_model(layer), torch.rand(2, 4, 8, 8))
    assert errors["model"] == float("inf")
    with pytest.warns(NumericalInvertibilityWarning):
        warn_if_not_invertible(errors)


def test_per_flow_errors_locate_the_bad_layer_of_a_multiscale_model():
    model = build_multiscale_flow((1, 8, 8), 2, 2, 4, mixing="emerging")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        model(x, None)  # ActNorm initialisation
    bad = next(
        m
        for name, m in model.named_modules()
        if name.startswith("flows.1.1") and isinstance(m, EmergingConv2d)
    )
    ill = emerging(0.5, -1.0, channels=bad.num_channels)
    bad.load_state_dict(ill.state_dict())
    model.train()
    errors = inverse_error(model, x)
    assert model.training  # nothing on the model changed
    assert errors["worst_flow"] == "flows.1.1"
    assert errors["flows"]["flows.1.1"] > 1e-2
    assert all(e < 1e-4 for name, e in errors["flows"].items() if name != "flows.1.1")
    assert set(errors["flows"]) == {
        "flows.0.0",
        "flows.0.1",
        "flows.0.2",
        "flows.1.0",
        "flows.1.1",
        "flows.1.2",
    }  # steps and squeezes

    # A flow's error is measured on the input that flow receives in the density direction.
    step = model.flows[1][2]
    h = x
    for flow in reversed(model.flows[1]):
        if flow is step:
            break
        h, _ = flow.inverse(h)
    z, _ = step.inverse(h)
    assert errors["flows"]["flows.1.2"] == (step.forward(z)[0] - h).abs().max().item()


def test_unsupported_model_is_a_type_error():
    with pytest.raises(TypeError, match="MultiscaleFlow or NormalizingFlow"):
        inverse_error(torch.nn.Identity(), torch.rand(1, 1, 2, 2))


def test_training_records_round_trip_error_and_warns_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(diagnostics, "INVERSE_ERROR_THRESHOLD", -1.0)  # every check "fails"
    out = tmp_path / "run"
    with pytest.warns(NumericalInvertibilityWarning) as caught:
        assert (
            main(
                [
                    "train",
                    "--dataset",
                    "digits",
                    "--levels",
                    "1",
                    "--flows-per-level",
                    "1",
                    "--hidden-channels",
                    "4",
                    "--batch-size",
                    "16",
                    "--steps",
                    "3",
                    "--eval-every",
                    "1",
                    "--no-progress",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    assert len([w for w in caught if w.category is NumericalInvertibilityWarning]) == 1
    assert "at step 1" in str(caught[0].message)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0 <= m["inverse_error"] < INVERSE_ERROR_THRESHOLD
        assert m["inverse_error_worst_flow"].startswith("flows.0.")


def test_float64_sampling_is_the_documented_remedy():
    layer = emerging(0.5, -1.0)
    x = torch.rand(4, 4, 8, 8, dtype=torch.float64)
    single = inverse_error(single_flow_model(layer), x.float())["model"]
    double = inverse_error(copy.deepcopy(single_flow_model(layer)).double(), x)["model"]
    assert double < single * 1e-6


class OtherModel(torch.nn.Module):
    """A model with the training interface but no normflows ``flows`` (like an nflows Flow)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y=None):
        return self.inner(x, y)

    def sample(self, num_samples, y=None, temperature=None):
        return self.inner.sample(num_samples, y, temperature)


def test_training_a_model_that_cannot_be_checked_records_none(tmp_path):
    config = TrainConfig(
        levels=1,
        flows_per_level=1,
        hidden_channels=4,
        batch_size=16,
        steps=2,
        eval_every=1,
        eval_batch_size=512,
    )
    train_set, test_set = load_datasets(config)
    model = OtherModel(build_model(config, tuple(train_set[0][0].shape)))
    assert not diagnostics.is_checkable(model)
    last = fit(model, train_set, test_set, config, tmp_path / "run", progress=False)
    assert last["step"] == 2 and last["inverse_error"] is None
    assert last["inverse_error_worst_flow"] is None


def test_inverse_error_changes_no_mode_while_it_runs(monkeypatch):
    """Another thread training the same model must not see it switched to eval mode (issue 27):
    the check runs in the model's own mode."""
    model = build_multiscale_flow((1, 8, 8), 2, 1, 4, mixing="emerging")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        model(x, None)
    model.train()
    seen = []
    inverse = EmergingConv2d.inverse

    def recording_inverse(self, *args, **kwargs):
        seen.append(model.training and self.training)
        return inverse(self, *args, **kwargs)

    monkeypatch.setattr(EmergingConv2d, "inverse", recording_inverse)
    inverse_error(model, x)
    assert seen and all(seen)
