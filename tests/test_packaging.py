"""The package as a user installs it: the src/ layout, a plain ``pip install .``, the sdist and
the wheel (README "Install").

With the src/ layout the repository root holds no importable ``normflows_emerging``: from the
root, Python imports the installed copy (an editable install points at ``src/``), so an unbuilt
checkout can no longer shadow a built install. A plain (non-editable) ``pip install .`` builds the
compiled solve and imports the layers with torch, numpy and normflows alone: importing
``normflows_emerging`` loads no module of the training application and none of its dependencies.
The sdist carries everything its tests import, the wheel the compiled extension.
"""

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "normflows_emerging"
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
REPORT = (
    "import json, warnings, normflows_emerging as p\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    backend = p.inverse_backend()\n"
    "print(json.dumps({'file': p.__file__, 'backend': backend,\n"
    "                  'warnings': [str(w.message) for w in caught]}))\n"
)
# What ``import normflows_emerging`` adds to the modules that torch, numpy and normflows load
# themselves (normflows imports tqdm, torch imports argparse), and a layer's round trip.
NEW_MODULES = (
    "import json, sys\n"
    "import numpy, normflows, torch\n"
    "before = set(sys.modules)\n"
    "import normflows_emerging as p\n"
    "added = sorted(set(sys.modules) - before)\n"
    "layer = p.EmergingConv2d(4, kernel_size=3)\n"
    "x = torch.randn(2, 4, 5, 6)\n"
    "z, log_det = layer.inverse(x)\n"
    "back, _ = layer(z)\n"
    "print(json.dumps({'added': added, 'error': float((back - x).abs().max())}))\n"
)
# Top-level packages that only the application, the examples or the adapters may import.
APPLICATION_PACKAGES = [
    "normflows_emerging.app",
    "matplotlib",
    "tqdm",
    "argparse",
    "nflows",
    "torchvision",
    "sklearn",
    "skimage",
    "PIL",
    "scipy",
]
# Sources the sdist must carry: the package, the extension, and what tests/examples/benchmarks
# import (tests import brute_force and conftest; test_cli imports examples; benchmarks timing),
# and the docs' sources.
SDIST_SOURCES = [
    "src/normflows_emerging/**/*.py",
    "src/normflows_emerging/py.typed",
    "ext/*.pyx",
    "ext/*.h",
    "tests/*.py",
    "examples/*.py",
    "benchmarks/*.py",
    "benchmarks/results/*.json",
    "upstream/check",
    "upstream/*.py",
    "upstream/normflows/*.patch",
    "docs/**/*.md",
    "mkdocs.yml",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "LICENSE",
    "README.md",
    "pyproject.toml",
    "setup.py",
]
# A part of the suite (it imports conftest and brute_force) run from the unpacked sdist against
# the installed wheel; the full suite would take minutes.
SDIST_TESTS = ["tests/test_qr.py"]


def clean_env():
    """The environment without PYTHONPATH, so only the interpreter's own sys.path counts."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_python(python, code, cwd, env=None):
    """The last line of ``code``'s output from a fresh interpreter, parsed as JSON."""
    done = subprocess.run(
        [str(python), "-c", code],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def report(python, cwd, env=None):
    """``inverse_backend()``, the imported ``__file__`` and warnings, from a fresh interpreter."""
    return run_python(python, REPORT, cwd, env)


def test_repository_root_holds_no_package():
    """The src/ layout: nothing at the root that ``import normflows_emerging`` could pick up."""
    assert not (ROOT / "normflows_emerging").exists()
    assert (PACKAGE / "__init__.py").is_file()


def test_installed_package_is_this_checkout(tmp_path):
    """An installed normflows_emerging (imported away from the checkout) is this checkout."""
    probe = (
        "import importlib.util; spec = importlib.util.find_spec('normflows_emerging'); "
        "print(spec.origin if spec else '')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    origin = done.stdout.strip()
    if not origin:
        pytest.skip(
            "normflows-emerging is not installed in this interpreter; the tests import "
            "the checkout through PYTHONPATH=src"
        )
    if Path(origin).resolve() != PACKAGE / "__init__.py" and os.environ.get("PYTHONPATH"):
        pytest.skip(f"another checkout is installed ({origin}); this one runs through PYTHONPATH")
    assert Path(origin).resolve() == PACKAGE / "__init__.py", (
        f"the installed package {origin} is not this checkout; install it with `pip install -e .`"
    )


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python with this one's packages but no normflows_emerging: an editable install's import
    hook would otherwise supply the checkout's extension to a copy of the package."""
    return fresh_venv(tmp_path_factory.mktemp("bare") / "venv")


def copy_package(destination):
    """The checkout's package without any built extension, at ``destination``/normflows_emerging."""
    shutil.copytree(
        PACKAGE,
        destination / "normflows_emerging",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    return destination / "normflows_emerging"


def test_missing_extension_warning_names_the_copy_and_the_fix(tmp_path, bare_python):
    package = copy_package(tmp_path)
    got = report(bare_python, tmp_path)
    assert got["backend"] == "torch"
    (message,) = got["warnings"]
    assert f"imported from {package}" in message
    assert f"no _solve{EXTENSION_SUFFIX}" in message
    assert f"`pip install -e .` in {tmp_path}" in message


def test_missing_extension_warning_gives_the_import_error(tmp_path, bare_python):
    package = copy_package(tmp_path)
    (package / f"_solve{EXTENSION_SUFFIX}").write_bytes(b"not a shared library")
    got = report(bare_python, tmp_path)
    assert got["backend"] == "torch"
    (message,) = got["warnings"]
    assert "its extension failed to import" in message
    assert "_solve" in message and "not a shared library" not in message


def test_missing_extension_warning_names_a_shadowed_installed_copy(tmp_path, bare_python):
    """An unbuilt copy in the current directory hides the installed one: the warning says so."""
    checkout = tmp_path / "checkout"
    copy_package(checkout)
    site = tmp_path / "site"
    (site / "normflows_emerging").mkdir(parents=True)
    (site / "normflows_emerging" / "__init__.py").write_text("")
    info = site / "normflows_emerging-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: normflows-emerging\nVersion: 0.1.0\n"
    )
    env = dict(clean_env(), PYTHONPATH=str(site))
    got = report(bare_python, checkout, env=env)
    assert got["backend"] == "torch"
    (message,) = got["warnings"]
    assert f"installed copy in {site / 'normflows_emerging'} is shadowed" in message


def project_copy(destination):
    """The project's files without build products, so building does not touch the checkout."""
    shutil.copytree(
        ROOT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "runs",
            "site",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            "*.so",
            "*.pyd",
            "_solve.c",
        ),
    )
    return destination


def built_files(root, patterns):
    return sorted(
        {
            path.relative_to(root).as_posix()
            for pattern in patterns
            for path in root.glob(pattern)
            if path.is_file()
        }
    )


def fresh_venv(path):
    """A new virtual environment that reuses this interpreter's installed packages (torch ...)."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run(
        [str(python), "-c", purelib], capture_output=True, text=True, check=True
    ).stdout.strip()
    parents = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "_reuse_parent_packages.pth").write_text("\n".join(sorted(parents)) + "\n")
    return python


def pip_install(python, *arguments):
    """``pip install --no-deps`` into the environment of ``python`` (its dependencies are this
    interpreter's, reused by :func:`fresh_venv`)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
        + [str(argument) for argument in arguments],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_plain_install_imports_the_layers_without_the_application(tmp_path):
    """``pip install .`` (not editable): the compiled solve is built into site-packages, and
    ``import normflows_emerging`` loads nothing of the application or its dependencies."""
    source = project_copy(tmp_path / "source")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "--no-build-isolation", source)
    got = report(python, tmp_path)
    assert Path(got["file"]).is_relative_to(tmp_path / "venv"), got["file"]
    assert got["backend"] == "compiled", got["warnings"]
    # From the source tree's root too: the src/ layout leaves nothing there to shadow the install.
    assert Path(report(python, source)["file"]).is_relative_to(tmp_path / "venv")

    got = run_python(python, NEW_MODULES, tmp_path)
    assert got["error"] < 1e-4
    loaded = [
        name
        for name in got["added"]
        for package in APPLICATION_PACKAGES
        if name == package or name.startswith(package + ".")
    ]
    assert not loaded, f"import normflows_emerging loaded {loaded}"
    assert "normflows_emerging.flows.emerging" in got["added"]  # the check saw the import


def test_sdist_and_wheel_build_install_and_test(tmp_path):
    source = project_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        # The "data" filter exists from Python 3.12 (and 3.9-3.11 security releases).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp_path, **safe)
    unpacked = tmp_path / top
    missing = set(built_files(ROOT, SDIST_SOURCES)) - set(built_files(unpacked, SDIST_SOURCES))
    assert not missing, f"the sdist lacks {sorted(missing)}"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n")[0].splitlines()
    assert "License-Expression: MIT" in headers and "License-File: LICENSE" in headers
    assert f"normflows_emerging/_solve{EXTENSION_SUFFIX}" in names
    package_sources = set(built_files(ROOT / "src", ["normflows_emerging/**/*.py"]))
    assert package_sources <= names, f"the wheel lacks {sorted(package_sources - names)}"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)

    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    got = report(python, tmp_path)
    assert Path(got["file"]).is_relative_to(tmp_path / "venv"), got["file"]
    assert got["backend"] == "compiled", got["warnings"]
    subprocess.run(
        [str(tmp_path / "venv" / "bin" / "normflows-emerging"), "--help"],
        capture_output=True,
        check=True,
        timeout=120,
    )

    # The sdist's own tests, against the installed wheel (cwd outside the unpacked sdist, so its
    # unbuilt ./normflows_emerging cannot shadow the wheel).
    done = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            *[str(unpacked / test) for test in SDIST_TESTS],
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout.splitlines()[-1]
