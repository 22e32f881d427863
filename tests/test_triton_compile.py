"""The triton backend's kernels compile ahead of time for sm_90 (H100/H200) and sm_80 (A100)
without a GPU, and use no local memory for register spills at C <= 48 (the register counts:
``python benchmarks/triton_offline.py`` writes them to ``results/triton_registers.json``)."""

import pathlib
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

from triton_offline import kernel_report  # noqa: E402

# The largest register needs at C <= 48 (the fused step holds both solves and the 1x1 pass).
CASES = [
    ("emerging_step_kernel", 48, 32, 32, 3, "float32"),
    ("emerging_step_kernel", 48, 32, 32, 3, "float64"),
    ("solve_kernel", 48, 32, 32, 3, "float64"),
]


@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda case: f"{case[0]}-C{case[1]}-m{case[4]}-{case[5]}"
)
def test_compiles_without_spills(case, capability):
    report = kernel_report(*case, capability)
    assert report["spill_stores"] == 0 and report["spill_loads"] == 0, report
    assert 0 < report["registers"] <= 255
