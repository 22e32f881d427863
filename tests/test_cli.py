"""Command line and training functions: outputs, exact resumption, skipped steps, errors."""

import json

import matplotlib.image
import pytest
import torch

from normflows_emerging import evaluation, train as training
from normflows_emerging.cli import main

TINY = ["--dataset", "digits", "--levels", "2", "--flows-per-level", "1",
        "--hidden-channels", "8", "--batch-size", "16", "--eval-batch-size", "128"]


def run_train(out, *extra):
    return main(["train", *TINY, "--out", str(out), "--no-progress", *extra])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoint_metrics_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--mixing", "emerging", "--steps", "4", "--eval-every", "2",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "bpd=" in captured.err and "loss=" in captured.err  # the progress bar
    final = json.loads(captured.out.strip().splitlines()[-1])

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "step", "config", "rng"} <= set(checkpoint)
    assert {"torch", "numpy", "python", "data"} <= set(checkpoint["rng"])
    assert checkpoint["step"] == 4
    assert checkpoint["config"]["mixing"] == "emerging"
    assert checkpoint["num_bins"] == 17
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl",
                                                    "samples.png"]  # no temporary files left

    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [2, 4]
    assert metrics[-1] == final
    for m in metrics:
        assert {"train_bpd", "test_bpd", "seconds"} <= set(m)
        assert 0 < m["test_bpd"] < 10 and m["skipped"] == 0

    image = matplotlib.image.imread(out / "samples.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_resume_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_train(whole, "--steps", "4", "--eval-every", "2", "--warmup", "3") == 0
    assert run_train(split, "--steps", "2", "--eval-every", "2", "--warmup", "3") == 0
    assert run_train(split, "--steps", "4", "--eval-every", "2", "--warmup", "3",
                     "--resume") == 0

    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert a["rng"]["data"] == b["rng"]["data"]

    metrics_a, metrics_b = read_metrics(whole), read_metrics(split)
    assert [m["step"] for m in metrics_b] == [2, 4]
    assert [m["test_bpd"] for m in metrics_a] == [m["test_bpd"] for m in metrics_b]


def test_resume_refuses_other_settings_and_finished_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, "--steps", "2") == 0
    with pytest.raises(SystemExit) as exc:
        run_train(out, "--steps", "4", "--mixing", "1x1", "--resume")
    assert exc.value.code == 2
    assert "mixing: checkpoint 'emerging', now '1x1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_train(out, "--steps", "2", "--resume")
    assert "already at step 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_train(tmp_path / "empty", "--steps", "2", "--resume")
    assert "no checkpoint" in capsys.readouterr().err


def test_non_finite_loss_skips_the_step(tmp_path, capsys, monkeypatch):
    real = evaluation.dequantize
    calls = []

    def nan_on_second_step(images, num_bins, noise=None):
        calls.append(None)
        x = real(images, num_bins, noise)
        # Call 1 initialises ActNorm, call 2 is step 1, call 3 step 2.
        return torch.full_like(x, float("nan")) if len(calls) == 3 else x

    monkeypatch.setattr(training, "dequantize", nan_on_second_step)
    out = tmp_path / "run"
    assert run_train(out, "--steps", "3", "--eval-every", "10") == 0  # one evaluation, at the end
    assert "step 2: non-finite loss or gradient, step skipped" in capsys.readouterr().err
    (metrics,) = read_metrics(out)
    assert metrics["skipped"] == 1 and metrics["test_bpd"] < 10
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    values = checkpoint["model"].values()
    assert all(torch.isfinite(v).all() for v in values if v.is_floating_point())


def test_train_step_leaves_parameters_alone_on_nan():
    model = training.build_model(training.TrainConfig(levels=1, flows_per_level=1,
                                                      hidden_channels=4), (1, 4, 4))
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        model(x, None)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    assert training.train_step(model, optimizer, torch.full_like(x, float("nan")), None, 17,
                               1e-3) is None
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert not optimizer.state
    nll, bpd = training.train_step(model, optimizer, x, None, 17, 1e-3)
    assert bpd == pytest.approx(nll / (16 * 0.6931471805599453) + 4.087462841250339)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_evaluate_and_sample_class_conditional(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, "--steps", "2", "--mixing", "qr", "--num-classes", "10") == 0
    trained = read_metrics(out)[-1]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"test_bpd", "sample_ms_per_image", "inverse_error"} <= set(result)
    assert result["test_bpd"] == pytest.approx(trained["test_bpd"], rel=1e-6)
    assert 0 <= result["inverse_error"] < 1e-4
    assert result["sample_ms_per_image"] > 0

    png = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--num", "9",
                 "--temperature", "0.5", "--out", str(png)]) == 0
    assert matplotlib.image.imread(png).ndim == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x", "--mixing", "nope"], "invalid choice: 'nope'"),
        (["train", "--out", "x", "--dataset", "nope"], "invalid choice: 'nope'"),
        (["train", "--out", "x", "--steps", "0"], "expected a positive integer"),
        (["train", "--out", "x", "--lr", "-1"], "expected a positive number"),
        (["train", "--out", "x", "--mixing-arg", "kernel_size"], "expected NAME=VALUE"),
        (["train", "--out", "x", "--mixing-arg", "bogus=1"], "bad --mixing-arg"),
        (["train", "--out", "x", "--image-size", "12", "--levels", "3"], "divisible by"),
        (["train", "--out", "x", "--num-classes", "3"], "has 10 classes"),
        (["train", "--out", "x"] + ["--batch-size", "5000"], "fewer than one batch"),
        (["evaluate", "--checkpoint", "missing.pt"], "no checkpoint at missing.pt"),
        (["sample", "--checkpoint", "x.pt"], "--out"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_tile_images_places_each_image_in_its_cell():
    images = torch.arange(1, 4, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 2, 3) / 4
    grid = evaluation.tile_images(images, padding=1)
    assert grid.shape == (2 * 4, 2 * 5, 1)
    torch.testing.assert_close(grid[1:3, 1:4, 0], torch.full((2, 3), 0.25))
    torch.testing.assert_close(grid[1:3, 6:9, 0], torch.full((2, 3), 0.5))
    torch.testing.assert_close(grid[5:7, 1:4, 0], torch.full((2, 3), 0.75))
    assert grid[0].eq(1).all() and grid[5:7, 6:9].eq(1).all()  # gaps and the empty cell are white
