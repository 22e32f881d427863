"""Command line and training functions: outputs, exact resumption, skipped steps, errors."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from normflows_emerging.app import batches, commands, evaluation
from normflows_emerging.app import config as config_module
from normflows_emerging.app import train as training
from normflows_emerging.app.checkpoint import load_checkpoint
from normflows_emerging.app.cli import build_parser, main
from normflows_emerging.app.config import TrainConfig, build_model
from normflows_emerging.app.errors import MissingDependencyError
from normflows_emerging.parameters import count_parameters

TINY = [
    "--dataset",
    "digits",
    "--levels",
    "2",
    "--flows-per-level",
    "1",
    "--hidden-channels",
    "8",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "128",
]


def run_train(out, *extra):
    return main(["train", *TINY, "--out", str(out), "--no-progress", *extra])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoint_metrics_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY,
                "--mixing",
                "emerging",
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert " bits/dim" in captured.err and "loss" not in captured.err  # the progress lines
    final = json.loads(captured.out.strip().splitlines()[-1])

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "step", "config", "rng"} <= set(checkpoint)
    assert checkpoint["format_version"] == 2
    assert {"torch", "numpy", "python", "data"} <= set(checkpoint["rng"])
    assert checkpoint["step"] == 4
    assert checkpoint["config"]["mixing"] == "emerging"
    assert checkpoint["num_bins"] == 17
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
        "samples.png",
    ]  # no temporary files left

    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [2, 4]
    assert metrics[-1] == final
    for m in metrics:
        assert {"train_bpd", "test_bpd", "seconds"} <= set(m)
        assert 0 <= m["inverse_error"] < 1e-4 and m["inverse_error_worst_flow"].startswith("flows.")
        assert 0 < m["test_bpd"] < 10 and m["skipped"] == 0

    image = matplotlib.image.imread(out / "samples.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_resume_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_train(whole, "--steps", "4", "--eval-every", "2", "--warmup", "3") == 0
    assert run_train(split, "--steps", "2", "--eval-every", "2", "--warmup", "3") == 0
    assert run_train(split, "--steps", "4", "--eval-every", "2", "--warmup", "3", "--resume") == 0

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
    assert "--mixing 1x1 (the checkpoint's: emerging)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_train(out, "--steps", "2", "--resume")
    assert "already at step 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_train(tmp_path / "empty", "--steps", "2", "--resume")
    assert "no checkpoint" in capsys.readouterr().err


def test_resume_takes_the_settings_of_the_checkpoint(tmp_path, capsys):
    """Issue 24: after `train --levels 1 --flows-per-level 2 --hidden-channels 16 --out X`,
    `train --steps N --out X --resume` was refused, the flags left out compared through their
    defaults (levels: checkpoint 1, now 2, ...)."""
    out = tmp_path / "digits"
    model_flags = ["--levels", "1", "--flows-per-level", "2", "--hidden-channels", "6"]
    run = ["train", "--out", str(out), "--no-progress", "--batch-size", "16"]
    assert main([*run, *model_flags, "--steps", "2", "--eval-every", "2", "--mixing", "qr"]) == 0
    capsys.readouterr()
    assert main(["train", "--steps", "3", "--out", str(out), "--resume", "--no-progress"]) == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    config = checkpoint["config"]
    assert checkpoint["step"] == 3
    assert (config["levels"], config["flows_per_level"], config["hidden_channels"]) == (1, 2, 6)
    assert (config["mixing"], config["batch_size"], config["eval_every"]) == ("qr", 16, 2)
    # flags given with the checkpoint's values are no change; a resumable one changes
    argv = ["train", "--steps", "4", "--out", str(out), "--resume", "--no-progress"]
    assert main([*argv, *model_flags, "--mixing", "qr", "--eval-every", "1"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["eval_every"] == 1
    capsys.readouterr()


def test_resume_names_every_setting_it_cannot_change(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, "--steps", "2") == 0  # TINY: 2 levels, hidden 8, batch 16
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    argv = ["train", "--out", str(out), "--resume", "--steps", "4", "--levels", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--hidden-channels", "8", "--seed", "3", "--mixing-arg", "kernel_size=5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "--levels 1 (the checkpoint's: 2)" in err and "--seed 3 (the checkpoint's: 0)" in err
    assert "--mixing-arg kernel_size=5 (the checkpoint's: none)" in err
    assert "--hidden-channels" not in err.split("; a resumed run")[0]  # the same value: no change
    assert "--steps" in err.split("only ")[1]  # what may change
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_checkpoint_may_be_the_run_folder(trained, tmp_path, capsys, command):
    """Issue 24: `evaluate --checkpoint runs/digits` said `no checkpoint at runs/digits`."""
    argv = [command, "--checkpoint", str(trained.parent)]
    argv += ["--out", str(tmp_path / "s.png"), "--num", "2"] if command == "sample" else []
    assert main(argv) == 0
    out = capsys.readouterr().out
    if command == "evaluate":
        assert json.loads(out)["step"] == 1
    else:
        assert (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit):
        main([command, "--checkpoint", str(tmp_path), *argv[3:]])
    assert f"no checkpoint at {tmp_path}: the folder holds no checkpoint.pt" in (
        capsys.readouterr().err
    )


def test_evaluate_names_degrees_of_freedom_and_keeps_the_old_keys(trained):
    """Issue 24: one number had three names; `evaluate` printed "parameters". The old keys stay
    for one release, and reading them warns."""
    result = commands.evaluate_checkpoint(trained, timing_repeats=1)
    model, _ = load_checkpoint(trained)
    count = count_parameters(model)
    assert result["degrees_of_freedom"] == count.degrees_of_freedom
    assert result["parameters_total"] == count.total
    with pytest.warns(DeprecationWarning, match="'parameters'.*'degrees_of_freedom'"):
        assert result["parameters"] == count.degrees_of_freedom
    with pytest.warns(DeprecationWarning, match="'parameters_stored'.*'parameters_total'"):
        assert result.get("parameters_stored") == count.total
    assert json.loads(json.dumps(result))["parameters"] == count.degrees_of_freedom


def test_non_finite_loss_skips_the_step(tmp_path, capsys, monkeypatch):
    real = evaluation.dequantize
    calls = []

    def nan_on_second_step(images, num_bins, noise=None, dtype=torch.float32):
        calls.append(None)
        x = real(images, num_bins, noise, dtype)
        # Call 1 initialises ActNorm, call 2 is step 1, call 3 step 2.
        return torch.full_like(x, 1e30) if len(calls) == 3 else x

    monkeypatch.setattr(batches, "dequantize", nan_on_second_step)
    out = tmp_path / "run"
    assert run_train(out, "--steps", "3", "--eval-every", "10") == 0  # one evaluation, at the end
    assert "step 2: non-finite loss or gradient, step skipped" in capsys.readouterr().err
    (metrics,) = read_metrics(out)
    assert metrics["skipped"] == 1 and metrics["test_bpd"] < 10
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    values = checkpoint["model"].values()
    assert all(torch.isfinite(v).all() for v in values if v.is_floating_point())


def test_train_step_leaves_parameters_alone_on_overflow():
    model = build_model(TrainConfig(levels=1, flows_per_level=1, hidden_channels=4), (1, 4, 4))
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        model(x, None)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    assert training.train_step(model, optimizer, torch.full_like(x, 1e30), None, 17) is None
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert not optimizer.state
    nll, bpd = training.train_step(model, optimizer, x, None, 17)
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
    assert {
        "test_bpd",
        "sample_ms_per_image",
        "sample_ms_per_image_iqr",
        "inverse_error",
        "inverse_error_worst_flow_value",
    } <= set(result)
    assert result["test_bpd"] == pytest.approx(trained["test_bpd"], rel=1e-6)
    assert 0 <= result["inverse_error"] < 1e-4
    assert result["sample_ms_per_image"] > 0 and result["sample_ms_per_image_iqr"] >= 0
    assert 0 <= result["inverse_error_worst_flow_value"] < 1e-4

    png = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--num",
                "9",
                "--temperature",
                "0.5",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert matplotlib.image.imread(png).ndim == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x", "--mixing", "nope"], "invalid choice: 'nope'"),
        (["train", "--out", "x", "--dataset", "nope"], "invalid choice: 'nope'"),
        (["train", "--out", "x", "--steps", "0"], "expected a positive integer"),
        (["train", "--out", "x", "--lr", "-1"], "expected a finite positive number"),
        (["train", "--out", "x", "--lr", "inf"], "--lr: expected a finite positive number"),
        (["train", "--out", "x", "--lr", "nan"], "--lr: expected a finite positive number"),
        # passed the flag check, then overflowed inside Adamax: a 42-line traceback
        (["train", "--out", "x", "--lr", "1e40"], "error: lr must be a number in (0, 1e+30]"),
        (
            ["train", "--out", "x", "--seed", str(2**64)],
            "--seed: expected an integer in 0 .. 18446744073709551615",
        ),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--seed", str(2**64)],
            "--seed: expected an integer in 0 .. 18446744073709551615",
        ),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--temperature", "inf"],
            "--temperature: expected a finite positive number",
        ),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--temperature=-inf"],
            "--temperature: expected a finite positive number",
        ),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--num", "100000000000"],
            "--num: expected an integer in 1 .. 4096",
        ),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--num", "0"],
            "--num: expected an integer in 1 .. 4096",
        ),
        (
            ["train", "--out", ""],
            "normflows-emerging train: error: the output folder name is empty",
        ),
        (["train", "--out", "x", "--mixing-arg", "kernel_size"], "expected NAME=VALUE"),
        (
            ["train", "--out", "x", "--mixing-arg", "bogus=1"],
            "normflows-emerging train: error: bad --mixing-arg for mixing 'emerging'",
        ),
        (["train", "--out", "x", "--step", "5"], "unrecognized arguments: --step 5 (see"),
        (
            ["train", "--out", "x", "--mixing-arg", "num_channels=3"],
            "--mixing-arg num_channels cannot be given: the model sets the number of channels",
        ),
        (
            [
                "train",
                "--out",
                "x",
                "--mixing-arg",
                "kernel_size=3",
                "--mixing-arg",
                "kernel_size=5",
            ],
            "--mixing-arg kernel_size is given more than once",
        ),
        (
            ["train", "--out", "x", "--threads", "99999"],
            f"--threads: expected an integer in 1 .. {4 * (os.cpu_count() or 1)}, got '99999'",
        ),
        (["evaluate", "--checkpoint", "x.pt", "--threads", "5000"], "--threads: expected"),
        (
            ["sample", "--checkpoint", "x.pt", "--out", "s.png", "--threads", "20000"],
            "--threads: expected an integer in 1 ..",
        ),
        (
            ["train", "--out", "x", "--mixing-arg", "kernel_size=-1"],
            "normflows-emerging train: error: bad --mixing-arg",
        ),
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
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line, not argparse's usage block
    assert list(tmp_path.iterdir()) == []  # nothing written, not even into the current folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a tiny model trained for one step."""
    out = tmp_path_factory.mktemp("trained")
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
                "--steps",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return out / "checkpoint.pt"


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "output '' is not a file name"),
        (".", "is not a file name; expected a name ending in .png"),
        ("s.jpg", "s.jpg does not end in .png"),
        ("s", "does not end in .png"),
    ],
)
def test_sample_refuses_an_output_that_is_not_a_png_file(
    name, message, trained, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--checkpoint", str(trained), "--num", "4", "--out", name])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("normflows-emerging sample: error: ")
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_non_finite_samples(trained, tmp_path, capsys):
    png = tmp_path / "s.png"
    with pytest.raises(SystemExit) as exc:  # overflows to inf, and inf - inf to NaN
        main(
            [
                "sample",
                "--checkpoint",
                str(trained),
                "--num",
                "4",
                "--temperature",
                "1e30",
                "--out",
                str(png),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite at temperature 1e+30" in err
    assert not png.exists()
    assert main(["sample", "--checkpoint", str(trained), "--num", "4", "--out", str(png)]) == 0
    assert png.exists()


def test_tile_images_places_each_image_in_its_cell():
    images = torch.arange(1, 4, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 2, 3) / 4
    grid = evaluation.tile_images(images, padding=1)
    assert grid.shape == (2 * 4, 2 * 5, 1)
    torch.testing.assert_close(grid[1:3, 1:4, 0], torch.full((2, 3), 0.25))
    torch.testing.assert_close(grid[1:3, 6:9, 0], torch.full((2, 3), 0.5))
    torch.testing.assert_close(grid[5:7, 1:4, 0], torch.full((2, 3), 0.75))
    assert grid[0].eq(1).all() and grid[5:7, 6:9].eq(1).all()  # gaps and the empty cell are white


def test_progress_in_a_log_is_plain_lines(tmp_path, capsys):
    # capsys' stderr is not a terminal, like a CI log or nohup.out (every N steps: see
    # test_training_parts.test_plain_progress_lines_when_not_a_terminal).
    assert (
        main(
            [
                "train",
                *TINY,
                "--mixing",
                "qr",
                "--steps",
                "3",
                "--eval-every",
                "3",
                "--levels",
                "1",
                "--hidden-channels",
                "4",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "\r" not in err
    steps = [line.split(",")[0] for line in err.splitlines() if line.startswith("train qr: step ")]
    assert steps == [f"train qr: step {s}/3" for s in (1, 2, 3)]


@pytest.mark.parametrize(
    "error, message",
    [
        (
            MissingDependencyError(
                "the digits dataset needs scikit-learn: pip install scikit-learn"
            ),
            "pip install scikit-learn",
        ),
        (
            FileNotFoundError("no CIFAR-10 files in data/cifar10; pass --download"),
            "pass --download",
        ),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(error, message, tmp_path, monkeypatch, capsys):
    def get_dataset(*args, **kwargs):
        raise error

    out = tmp_path / "run"
    run_train(out, "--steps", "1")  # a real checkpoint for evaluate
    monkeypatch.setattr(config_module, "get_dataset", get_dataset)
    monkeypatch.setattr(commands, "get_dataset", get_dataset)
    for argv in (
        ["train", *TINY, "--out", str(tmp_path / "other")],
        ["evaluate", "--checkpoint", str(out / "checkpoint.pt")],
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(config_module, "get_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", *TINY, "--out", str(tmp_path / "run")])


def test_every_command_has_a_description(capsys):
    parser = build_parser()
    (commands_action,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in commands_action.choices.items():
        assert sub.description and len(sub.description) > 40, name
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "Draw seeded samples of a checkpoint" in capsys.readouterr().out


def test_bits_reaches_the_dataset_and_the_checkpoint(tmp_path, monkeypatch):
    real = config_module.get_dataset
    asked = []

    def get_dataset(name, split, image_size=None, root=None, download=False, bits=None):
        asked.append(bits)
        return real(name, split, image_size, root, download)

    monkeypatch.setattr(config_module, "get_dataset", get_dataset)
    out = tmp_path / "run"
    assert (
        main(["train", *TINY, "--steps", "1", "--bits", "4", "--no-progress", "--out", str(out)])
        == 0
    )
    assert asked == [4, 4]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["bits"] == 4
    with pytest.raises(ValueError, match=r"bits must be an int in 1 \.\. 16, got 17"):
        TrainConfig(bits=17)


@pytest.mark.parametrize("value", ["0", "17", "x"])
def test_bad_bits_flag(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x", "--bits", value])
    assert exc.value.code == 2
    assert "--bits" in capsys.readouterr().err


def test_timing_imports_torch_benchmark_without_its_cuda_home_warning():
    """Importing torch.utils.benchmark logs "No CUDA runtime is found, using CUDA_HOME=..." where
    a CUDA toolkit is installed without a usable GPU (as on the CI machine); commands that time
    sampling must not print it."""
    code = (
        "from normflows_emerging.app.evaluation import import_torch_benchmark\n"
        "assert hasattr(import_torch_benchmark(), 'Timer')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_HOME": sys.prefix},
    )
    assert done.returncode == 0, done.stderr
    assert "CUDA_HOME" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 40000000000000 bytes."
        ),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        MemoryError(),
    ],
)
def test_running_out_of_memory_is_one_line(error, capsys, monkeypatch):
    """--num-classes 1000000000 ended in the CPU allocator's RuntimeError traceback."""
    from normflows_emerging.app import cli

    def run(args, parser):
        raise error

    monkeypatch.setattr(cli, "_run", run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.strip().endswith("try a smaller --batch-size, model or --num-classes")
    assert len(err.strip().splitlines()) == 1


def test_other_runtime_errors_are_not_hidden(monkeypatch):
    """Only allocation failures become a user error: a bug still shows its traceback."""
    from normflows_emerging.app import cli

    def run(args, parser):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run", run)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--out", "x"])
