"""What a new user hits from a fresh clone (issue 20): thread count, --version, one-line errors
of the examples, download hints and failures, mixing arguments, the examples' own flags."""

import os
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import torch

from normflows_emerging import __version__
from normflows_emerging.app import cli, extras
from normflows_emerging.app.data import sources
from normflows_emerging.app.run_folder import prepare_run_folder
from optional_imports import import_or_skip

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def examples(monkeypatch):
    """The examples folder on sys.path (the examples import example_cli and compare)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


# --threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate", "sample"])
def test_every_command_runs_on_the_threads_it_is_given(command, monkeypatch, tmp_path):
    """train took torch's default thread count: 9.5 minutes for what one thread does in 30 s on
    a busy 2-core machine. Each command sets the count while it runs and restores it after."""
    seen = []
    record = lambda *args, **kwargs: seen.append(torch.get_num_threads())  # noqa: E731
    monkeypatch.setattr(cli, "train", record)
    monkeypatch.setattr(cli, "sample_checkpoint", record)
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda *a, **k: record() or {})
    before = torch.get_num_threads()
    argv = {
        "train": ["train", "--dataset", "digits", "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", "--checkpoint", "x.pt"],
        "sample": ["sample", "--checkpoint", "x.pt", "--out", str(tmp_path / "s.png")],
    }[command]
    assert cli.main([*argv, "--threads", "3"]) == 0
    assert seen == [3]
    assert torch.get_num_threads() == before
    seen.clear()
    assert cli.main(argv) == 0
    assert seen == [cli.DEFAULT_THREADS]


@pytest.mark.parametrize("value", ["0", str(cli.max_threads() + 1)])
def test_threads_must_be_positive_and_at_most_the_cap(value, capsys):
    """--threads 99999 segfaulted in torch.set_num_threads, 20000 failed in libgomp."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--out", "x", "--threads", value])
    assert exc.value.code == 2
    expected = f"--threads: expected an integer in 1 .. {cli.max_threads()}, got '{value}'"
    assert expected in one_line_error(capsys)


# --version -------------------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"normflows-emerging {__version__}"


# Runs the command line in a fresh interpreter where tqdm and matplotlib cannot be imported (a
# None entry in sys.modules makes an import fail and find_spec find nothing), as without the
# train extra.
WITHOUT_TRAIN_EXTRA = (
    "import sys\n"
    "sys.modules['tqdm'] = sys.modules['matplotlib'] = None\n"
    "from normflows_emerging.app import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def without_train_extra(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"]])
def test_help_and_version_without_the_train_extra(argv):
    """Issue 24: without the extra even --help exited 2."""
    done = without_train_extra(*argv)
    assert done.returncode == 0, done.stderr
    assert (__version__ in done.stdout) if argv == ["--version"] else ("usage:" in done.stdout)


def test_a_command_without_the_train_extra_names_a_pip_command_that_works(tmp_path):
    """Issue 24: the hint was `pip install "normflows-emerging[train]"`, which fails (the package
    is on no index); naming the extra's packages works from a clone and from a wheel."""
    done = without_train_extra("train", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "needs tqdm and matplotlib (the train extra)" in line
    assert line.endswith(": pip install tqdm matplotlib scikit-learn")
    assert "normflows-emerging[" not in line
    assert list(tmp_path.iterdir()) == []


def test_the_extras_of_the_hints_are_pyproject_s():
    """The packages the hints name are the extras that pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra, packages in extras.EXTRAS.items():
        assert tuple(declared["optional-dependencies"][extra]) == packages, extra
    assert set(extras.COMMAND_LINE_MODULES) <= set(extras.EXTRAS["train"])


# --mixing-arg ----------------------------------------------------------------------------------


def test_a_mixing_argument_the_layer_lacks_names_the_layer(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--out", "x", "--mixing", "1x1", "--mixing-arg", "kernel_size=5"])
    assert exc.value.code == 2
    err = one_line_error(capsys)
    assert "mixing layer '1x1' takes no argument 'kernel_size'; its arguments: none" in err
    assert "plain_1x1_conv" not in err  # the internal factory's name


# datasets: --download ---------------------------------------------------------------------------


def test_missing_torchvision_data_names_the_flag(tmp_path):
    # without torchvision, the message names the package instead
    import_or_skip("torchvision.datasets", "torchvision")
    with pytest.raises(FileNotFoundError, match="Pass --download"):
        sources.torchvision_dataset("CIFAR10", "train", None, tmp_path / "none", False, None)


def test_evaluate_takes_download(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda *a, **k: calls.append(k) or {})
    assert cli.main(["evaluate", "--checkpoint", "x.pt", "--download"]) == 0
    assert cli.main(["evaluate", "--checkpoint", "x.pt"]) == 0
    assert [call["download"] for call in calls] == [True, False]


class OfflineDataset:
    """A torchvision dataset class whose download fails as urllib fails without a network,
    after creating its folders and a partial archive (as torchvision does)."""

    def __init__(self, root, train, download):
        root = Path(root)
        (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"part")
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


@pytest.fixture
def offline(monkeypatch):
    fake = types.SimpleNamespace(CIFAR10=OfflineDataset, MNIST=OfflineDataset)
    monkeypatch.setattr(sources, "import_optional", lambda *args: fake)


def test_offline_download_says_so_and_leaves_no_folder(tmp_path, offline):
    root = tmp_path / "data" / "mnist"
    with pytest.raises(OSError, match="downloading MNIST into .* failed") as error:
        sources.torchvision_dataset("MNIST", "train", None, root, True, None)
    assert "name resolution" in str(error.value) and "network" in str(error.value)
    assert "urlopen error" not in str(error.value)
    assert not root.exists()


def test_offline_download_keeps_what_was_there(tmp_path, offline):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("kept")
    with pytest.raises(OSError, match="downloading CIFAR10"):
        sources.torchvision_dataset("CIFAR10", "train", None, root, True, None)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_offline_download_is_one_line_on_the_command_line(tmp_path, offline, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "train",
                "--dataset",
                "mnist",
                "--download",
                "--data-root",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert exc.value.code == 2
    assert "downloading MNIST" in one_line_error(capsys)


# the examples ----------------------------------------------------------------------------------


def test_a_refused_run_folder_offers_only_the_flags_the_program_has(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="--resume to continue it or --overwrite"):
        prepare_run_folder(tmp_path)
    with pytest.raises(ValueError, match="already holds a training run") as error:
        prepare_run_folder(tmp_path, resumable=False)
    assert "--resume" not in str(error.value) and "--overwrite" in str(error.value)


@pytest.mark.parametrize("example", ["glow", "emerging", "nflows_example"])
def test_examples_report_a_refused_run_folder_in_one_line(example, examples, tmp_path, capsys):
    module = __import__(example)
    from example_cli import run_example

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    argv = ["--out", str(tmp_path), "--steps", "1", "--no-progress"]
    assert run_example(module.main, argv) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path} already holds a training run" in err
    assert ("--resume" in err) == (example != "nflows_example")


@pytest.mark.parametrize(
    "example", ["glow", "emerging", "nflows_example", "compare", "maf", "periodic_galaxy"]
)
def test_examples_refuse_cuda_without_it_in_one_line(example, examples, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = __import__(example)
    main = module.run if example == "compare" else getattr(module, "main", None)
    if main is None:  # maf and periodic_galaxy: compare.run with their defaults
        import compare

        main = compare.run
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--steps", "1"])
    assert exc.value.code == 2
    assert "--device cuda: device 'cuda' was asked for, but CUDA is not available" in (
        one_line_error(capsys)
    )


def test_nflows_example_takes_overwrite(examples):
    import nflows_example

    parser_flags = []
    original = nflows_example.example_parser

    def spy(*args, **kwargs):
        parser = original(*args, **kwargs)
        parser_flags.extend(parser._option_string_actions)
        return parser

    nflows_example.example_parser = spy
    try:
        with pytest.raises(SystemExit):
            nflows_example.main(["--help"])
    finally:
        nflows_example.example_parser = original
    assert "--overwrite" in parser_flags and "--threads" in parser_flags
    assert "--resume" not in parser_flags


def test_emerging_example_can_leave_out_the_naive_timing(examples, monkeypatch, tmp_path):
    import emerging

    timed = []
    monkeypatch.setattr(emerging.training, "train", lambda *args, **kwargs: None)
    monkeypatch.setattr(emerging, "evaluate_checkpoint", lambda *args, **kwargs: {})
    monkeypatch.setattr(emerging, "load_checkpoint", lambda *args: (None, None))
    monkeypatch.setattr(
        emerging.evaluation,
        "sample_ms_per_image",
        lambda model, device, backend, seed: timed.append(backend) or 0.0,
    )
    emerging.main(["--out", str(tmp_path), "--no-naive-timing"])
    assert timed and "naive" not in timed
    timed.clear()
    emerging.main(["--out", str(tmp_path)])
    assert "naive" in timed


def test_comparison_help_prints_no_cuda_warning():
    """torch.utils.benchmark's import logs "No CUDA runtime is found, using CUDA_HOME=..." where a
    CUDA toolkit is installed without a usable GPU; the comparison scripts printed it even on
    --help. All three in one interpreter (maf and periodic_galaxy run compare's code)."""
    code = (
        "import runpy, sys\n"
        "for script in ('compare', 'maf', 'periodic_galaxy'):\n"
        "    sys.argv = [script + '.py', '--help']\n"
        "    try:\n"
        f"        runpy.run_path({str(EXAMPLES)!r} + '/' + script + '.py', run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
    )
    env = {**os.environ, "CUDA_HOME": sys.prefix}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(EXAMPLES), str(ROOT / "src"), env.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout
    assert "CUDA" not in done.stderr, done.stderr


def test_comparison_help_quotes_no_measured_numbers(examples):
    """The docstrings quoted bits/dim from old runs that no longer matched a rerun: results live
    in results files, and the docs are generated from them."""
    import re

    for script in ("compare", "maf", "periodic_galaxy", "glow", "emerging", "nflows_example"):
        text = (EXAMPLES / f"{script}.py").read_text()
        docstring = text.split('"""')[1]
        assert not re.search(r"[+-]0\.\d{2,}|\[\s*[+-]?\d|\d+ s of CPU", docstring), script


def test_sample_grids_are_torchvision_grids_where_it_is_installed(monkeypatch):
    """tile_images uses torchvision's make_grid where torchvision is installed, and lays out the
    same grid by hand without it."""
    torchvision_utils = import_or_skip("torchvision.utils", "torchvision")
    import importlib.util

    from normflows_emerging.app import evaluation

    calls = []
    make_grid = torchvision_utils.make_grid
    monkeypatch.setattr(
        torchvision_utils, "make_grid", lambda *a, **k: calls.append(k) or make_grid(*a, **k)
    )
    images = torch.rand(5, 3, 4, 6)
    with_torchvision = evaluation.tile_images(images, padding=2)
    assert calls == [{"nrow": 3, "padding": 4, "pad_value": 1.0}]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchvision" else find_spec(name, *a),
    )
    assert torch.equal(evaluation.tile_images(images, padding=2), with_torchvision)
    assert len(calls) == 1


class _TorchvisionForAnotherTorch(types.ModuleType):
    """What ``torchvision.utils`` is where PyPI's CUDA torchvision sits beside a CPU-only torch:
    its import fails with a RuntimeError."""

    def __getattr__(self, name):
        raise RuntimeError("operator torchvision::nms does not exist")


def test_sample_grids_do_not_need_a_torchvision_that_imports(monkeypatch):
    """A torchvision built for another torch raised at the first sample grid, ending training;
    the grid is laid out by hand instead (the same grid)."""
    import_or_skip("torchvision.utils", "torchvision")
    from normflows_emerging.app import evaluation

    images = torch.rand(5, 3, 4, 6)
    expected = evaluation.tile_images(images, padding=2)
    monkeypatch.setitem(
        sys.modules, "torchvision.utils", _TorchvisionForAnotherTorch("torchvision.utils")
    )
    assert torch.equal(evaluation.tile_images(images, padding=2), expected)


def test_a_dataset_package_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    """A dataset's package that is installed but raises on import (a torchvision for another
    torch) is the user's to fix: one line naming it, not a traceback."""
    from normflows_emerging.app.data.optional import import_optional
    from normflows_emerging.app.errors import MissingDependencyError

    (tmp_path / "brokenvision").mkdir()
    (tmp_path / "brokenvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError) as caught:
        import_optional("brokenvision", "brokenvision", "the cifar10 dataset")
    message = str(caught.value)
    assert message.startswith(
        "the cifar10 dataset needs brokenvision, which is installed but fails to import "
        "(RuntimeError: operator torchvision::nms does not exist); reinstall a brokenvision "
        f"built for the torch installed here (torch {torch.__version__})"
    )


def test_emerging_example_runs_to_its_result_on_the_cpu(examples, tmp_path, capsys):
    """The example timed every registered backend and stopped with a traceback at the triton one
    on the CPU ('runs on CUDA tensors', or 'does not import' without triton), before printing
    its result. A backend that cannot run here is named and left out."""
    import json

    import emerging

    tiny = ["--levels", "1", "--flows-per-level", "1", "--hidden-channels", "4"]
    argv = [*tiny, "--image-size", "8", "--steps", "2", "--eval-every", "2", "--no-progress"]
    emerging.main([*argv, "--no-naive-timing", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["sample_ms_per_image_torch"] > 0
    assert "sample_ms_per_image_triton" not in result
    assert "triton backend not timed: " in err and "Traceback" not in err


def test_nflows_example_without_nflows_is_one_line():
    """Without the nflows extra the example ended in a ModuleNotFoundError traceback."""
    code = (
        "import runpy, sys\n"
        "sys.modules['nflows'] = None  # as if not installed\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "sys.argv = ['nflows_example.py', '--help']\n"
        f"runpy.run_path({str(EXAMPLES / 'nflows_example.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        "nflows_example.py: error: this example needs nflows: pip install nflows"
    )
