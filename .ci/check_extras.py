"""Each extra of pyproject.toml on its own, in a fresh virtual environment: install the wheel
with that extra only, run what the extra is for, delete the environment.

``examples`` and ``test`` are the README's two commands (``.ci/run_readme.py``) and ``docs`` is
the docs build (``.ci/run``); the others are checked here. torch comes with every environment
(a core dependency): from ``--find-links`` and pip's configuration as the caller sets them.

    python3 .ci/check_extras.py [EXTRA ...]     # default: all of CHECKS
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A two-step training run of a tiny model on the bundled digits, then evaluate and sample it.
TRAIN = """
set -e
normflows-emerging train --levels 1 --flows-per-level 1 --hidden-channels 4 --steps 2 \\
    --eval-every 2 --out "$WORK/run" --no-progress
normflows-emerging evaluate --checkpoint "$WORK/run"
normflows-emerging sample --checkpoint "$WORK/run" --num 4 --out "$WORK/samples.png"
"""
NFLOWS = """
import torch
from nflows.transforms import CompositeTransform
from normflows_emerging.nflows import EmergingConv2dTransform, QR1x1Transform

transform = CompositeTransform([QR1x1Transform(4), EmergingConv2dTransform(4)])
x = torch.randn(2, 4, 5, 6)
with torch.no_grad():
    z, logabsdet = transform(x)
    back, _ = transform.inverse(z)
assert logabsdet.shape == (2,) and (back - x).abs().max() < 1e-4
print("nflows adapters: round trip", float((back - x).abs().max()))
"""
# Every dataset's reader, then the loader tests (CIFAR-10 and MNIST in their real file formats)
# with the torchvision that this extra installs: README command 2's environment may hold a
# torchvision that does not import (PyTorch's CPU-only torch beside PyPI's CUDA torchvision),
# where those tests skip. Here a skip fails the check.
DATA = """
set -eo pipefail
python -c '
import torchvision.datasets  # cifar10 and mnist
from normflows_emerging.app.data import get_dataset

for name in ("digits", "hubble"):
    data = get_dataset(name, "test", image_size=8 if name == "hubble" else None)
    print(name, len(data), tuple(data[0][0].shape), data.num_bins, "levels")
'
pip install --quiet pytest hypothesis
cd "$ROOT"
pytest -q -p no:cacheprovider -rs tests/test_data.py tests/test_data_levels.py \
    tests/test_data_errors.py | tee "$WORK/data-tests.log"
! grep -q SKIPPED "$WORK/data-tests.log"
"""
TRITON = """
import torch
from normflows_emerging import EmergingConv2d, use_backend

layer = EmergingConv2d(4, kernel_size=3).eval()
x = torch.randn(2, 4, 5, 6)
with torch.no_grad():
    z, _ = layer.inverse(x)
    with use_backend("triton"):
        back, _ = layer(z)
assert (back - x).abs().max() < 1e-4
print("triton solve (interpreter): round trip", float((back - x).abs().max()))
"""
# extra -> (command, environment variables)
CHECKS = {
    "nflows": (["python", "-c", NFLOWS], {}),
    "train": (["bash", "-c", TRAIN], {}),
    "data": (["bash", "-c", DATA], {}),
    "triton": (["python", "-c", TRITON], {"TRITON_INTERPRET": "1"}),
}
# Extras checked elsewhere in CI.
ELSEWHERE = {"examples": "README command 1", "test": "README command 2", "docs": "the docs build"}


def check(extra, wheel, work):
    """Install ``wheel[extra]`` into a fresh environment under ``work`` and run its check."""
    venv = work / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", f"{wheel}[{extra}]"], check=True)
    command, variables = CHECKS[extra]
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        WORK=str(work),
        ROOT=str(ROOT),
    )
    env.pop("PYTHONPATH", None)
    done = subprocess.run(command, cwd=work, env={**env, **variables})
    shutil.rmtree(venv)
    return done.returncode


def main(argv):
    extras = argv or list(CHECKS)
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), "."],
            cwd=ROOT,
            check=True,
        )
        (wheel,) = work.glob("normflows_emerging-*.whl")
        failed = []
        for extra in extras:
            print(f"CI: extra {extra!r} alone", flush=True)
            if check(extra, wheel, work):
                failed.append(extra)
    if failed:
        print(f"CI: these extras fail on their own: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
