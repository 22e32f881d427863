"""A layer whose sampling solve overflows (finite parameters, finite density): evaluation and
training report it and go on; they never end in a LinAlgError traceback."""

import json
import math
import shutil

import pytest
import torch

from normflows_emerging.app import evaluation
from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.cli import main
from normflows_emerging.app.errors import NonFiniteError
from normflows_emerging.diagnostics import NumericalInvertibilityWarning, inverse_error

TRAIN = [
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
    "8",
    "--eval-batch-size",
    "512",
    "--no-progress",
]
CAUSAL = "flows.0.0.flows.1.causal.weight"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A run folder whose checkpoint has one emerging causal weight multiplied by 4e3."""
    out = tmp_path_factory.mktemp("broken") / "run"
    assert main([*TRAIN, "--steps", "1", "--out", str(out)]) == 0
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    checkpoint["model"][CAUSAL] *= 4e3
    torch.save(checkpoint, out / CHECKPOINT)
    return out


def test_round_trip_of_a_failing_layer_is_infinitely_wrong_and_named(broken):
    model, _ = load_checkpoint(broken / CHECKPOINT)
    x = torch.rand(8, 1, 8, 8)
    with pytest.raises(torch.linalg.LinAlgError):  # the model itself cannot sample
        model.forward_and_log_det(model.inverse_and_log_det(x)[0])
    errors = inverse_error(model, x)
    assert errors["model"] == math.inf
    assert errors["worst_flow"] == "flows.0.0" and errors["flows"]["flows.0.0"] == math.inf
    with pytest.raises(NonFiniteError, match="cannot sample"):
        evaluation.save_samples(model, broken / "s.png")
    assert not (broken / "s.png").exists()


def test_evaluate_reports_the_failing_layer_and_still_measures_the_likelihood(broken, capsys):
    # both warnings are expected: one matched by pytest.warns(match=...) left the other to leak
    # into every run's summary (issue 24)
    with pytest.warns(NumericalInvertibilityWarning) as caught:
        assert main(["evaluate", "--checkpoint", str(broken / CHECKPOINT)]) == 0
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2
    assert "worst in flows.0.0" in messages[0] and "sampling not timed" in messages[1]
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["inverse_error"] == math.inf and result["inverse_error_worst_flow"] == "flows.0.0"
    assert result["sample_ms_per_image"] is None and "cannot sample" in result["sampling_error"]
    assert math.isfinite(result["test_bpd"])


def test_sample_command_ends_with_one_line(broken, tmp_path, capsys):
    png = tmp_path / "s.png"
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--checkpoint", str(broken / CHECKPOINT), "--out", str(png)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "cannot sample" in err
    assert not png.exists()


def test_training_goes_on_and_keeps_checkpointing(broken, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(broken, out)
    (out / "samples.png").unlink(missing_ok=True)
    with pytest.warns(NumericalInvertibilityWarning):
        code = main([*TRAIN, "--steps", "2", "--out", str(out), "--resume"])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 2: samples.png not written: the model cannot sample" in err
    assert "Traceback" not in err
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["inverse_error"] == math.inf
    assert metrics[-1]["inverse_error_worst_flow"] == "flows.0.0"
