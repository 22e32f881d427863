"""NaN and infinity never reach a file: training stops, samples and checkpoints are refused."""

import math

import pytest
import torch

from normflows_emerging.app import evaluation
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import CHECKPOINT, save_checkpoint
from normflows_emerging.app.cli import main
from normflows_emerging.app.config import TrainConfig, build_model
from normflows_emerging.app.errors import NonFiniteError
from normflows_emerging.diagnostics import inverse_error, non_finite_parameters
from normflows_emerging.multiscale import ImageMultiscaleFlow

TINY = [
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
    "--warmup",
    "0",
    "--no-progress",
]


def tiny_model():
    model = build_model(TrainConfig(levels=1, flows_per_level=1, hidden_channels=4), (1, 4, 4))
    with torch.no_grad():
        model(torch.rand(8, 1, 4, 4), None)  # ActNorm initialisation
    return model


def exit_code_and_error(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # after any progress lines: the one-line error
    assert last.startswith(f"normflows-emerging {argv[0]}: error: ")
    return exc.value.code, last


@pytest.mark.parametrize("lr", [math.inf, -math.inf, math.nan, 0.0, -1e-3, True, "0.1", 1e31, 1e40])
def test_config_refuses_a_learning_rate_outside_its_range(lr):
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, 1e\+30\]"):
        TrainConfig(lr=lr)


def test_a_step_that_makes_parameters_non_finite_stops_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    real = training.train_step
    calls = []

    def nan_parameter_on_step_3(model, optimizer, x, y, num_bins):
        calls.append(None)
        result = real(model, optimizer, x, y, num_bins)
        if len(calls) == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)  # as an overflowing update would
        return result

    monkeypatch.setattr(training, "train_step", nan_parameter_on_step_3)
    out = tmp_path / "run"
    code, err = exit_code_and_error(
        [*TINY, "--steps", "4", "--eval-every", "2", "--out", str(out)], capsys
    )
    assert code == 2
    assert "step 3 made 1 parameter tensors NaN or infinite" in err
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == 2  # the last good state is kept
    assert [
        line for line in (out / "metrics.jsonl").read_text().splitlines() if '"step": 4' in line
    ] == []


def test_a_diverged_model_is_not_checkpointed(tmp_path, capsys):
    # lr 1e30 leaves the parameters finite but useless: the test bits/dim are NaN.
    out = tmp_path / "run"
    code, err = exit_code_and_error(
        [*TINY, "--steps", "3", "--eval-every", "2", "--lr", "1e30", "--out", str(out)], capsys
    )
    assert code == 2 and "step 2: test bits/dim is nan, the model diverged" in err
    assert not (out / CHECKPOINT).exists() and not (out / "samples.png").exists()
    assert not (out / "metrics.jsonl").exists()


def test_sample_refuses_nan_and_infinity_that_clamping_would_hide():
    model = tiny_model()
    assert torch.isfinite(evaluation.sample(model, 4)).all()
    with torch.no_grad():
        next(model.parameters()).fill_(math.inf)
    with pytest.raises(NonFiniteError, match="sampled values are NaN or infinite"):
        evaluation.sample(model, 4)


def test_save_image_grid_refuses_non_finite_images(tmp_path):
    images = torch.rand(4, 1, 4, 4)
    images[1, 0, 2, 2] = math.nan
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        evaluation.save_image_grid([images], tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_training_does_not_write_non_finite_samples(tmp_path, capsys, monkeypatch):
    real = ImageMultiscaleFlow.sample

    def nan_samples(self, *args, **kwargs):
        x, log_q = real(self, *args, **kwargs)
        return torch.full_like(x, math.nan), log_q

    monkeypatch.setattr(ImageMultiscaleFlow, "sample", nan_samples)
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "1", "--out", str(out)]) == 0
    assert "step 1: samples.png not written: " in capsys.readouterr().err
    assert not (out / "samples.png").exists() and (out / CHECKPOINT).exists()


def test_non_finite_parameters_are_never_saved_nor_loaded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "1", "--out", str(out)]) == 0
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name].fill_(math.nan)
    torch.save(checkpoint, out / CHECKPOINT)  # as written by a run before this check
    png = tmp_path / "s.png"
    for argv in (
        ["sample", "--checkpoint", str(out / CHECKPOINT), "--out", str(png)],
        ["evaluate", "--checkpoint", str(out / CHECKPOINT)],
    ):
        code, err = exit_code_and_error(argv, capsys)
        assert code == 2 and f"{out / CHECKPOINT}: 1 parameter tensors are NaN or infinite" in err
    assert not png.exists()

    model = tiny_model()
    with torch.no_grad():
        next(model.parameters())[0] = math.inf
    optimizer = torch.optim.Adamax(model.parameters())
    with pytest.raises(NonFiniteError, match="non-finite"):
        save_checkpoint(
            tmp_path / "new.pt",
            model,
            optimizer,
            training.warmup_schedule(optimizer, 0),
            1,
            TrainConfig(),
            {},
        )
    assert not (tmp_path / "new.pt").exists()


def test_non_finite_parameters_handles_non_contiguous_parameters():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(3, 4).T)  # a transposed (strided) parameter
    assert not module.weight.is_contiguous()
    assert non_finite_parameters(module) == []
    with torch.no_grad():
        module.weight[1, 2] = float("nan")
    assert non_finite_parameters(module) == ["weight"]


def test_round_trip_of_a_model_with_non_finite_latents_is_infinitely_wrong():
    config = TrainConfig(levels=1, flows_per_level=1, hidden_channels=4, mixing="1x1")
    model = build_model(config, (1, 4, 4))
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        model(x, None)  # ActNorm initialisation
        for p in model.parameters():
            p.fill_(float("nan"))
    assert inverse_error(model, x)["model"] == math.inf
