"""benchmarks/gpu_check.py, the prepared GPU check, imports everywhere and says in one line that
it needs CUDA where there is none; its last line says whether everything passed, and any failing
test, error beyond its limit, self-check or step makes it fail."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_exits_with_one_line():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "needs a CUDA device" in done.stderr


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def passing_result(gpu_check):
    error = {key: limit / 10 for key, limit in gpu_check.MAX_ERRORS.items()}
    timing = [dict(task=task, ratio=1.0) for task in gpu_check.TARGET_RATIOS]
    return {
        "device": "NVIDIA H200",
        "errors": [],
        "cuda_tests": {"returncode": 0, "summary": "40 passed in 50.0s", "failed": []},
        "float64_reference": [dict(C=12, kernel_size=3, **error)],
        "self_checks": {"solve torch.float32 on cuda:0": "passed"},
        "models": {"3x8x256": {"timing": timing}},
    }


def test_summary_line_passes_and_names_the_ratios():
    gpu_check = load_gpu_check()
    line = gpu_check.summary_line(passing_result(gpu_check), "out.json")
    assert line.startswith("gpu_check: passed on NVIDIA H200: 40 passed") and "\n" not in line
    assert "3x8x256 sample b1 1.00x (met 1.3x)" in line


@pytest.mark.parametrize("fault", ["tests", "timeout", "reference", "nan", "self-check", "step"])
def test_any_failure_fails_with_one_line(fault):
    gpu_check = load_gpu_check()
    result = passing_result(gpu_check)
    if fault == "tests":
        result["cuda_tests"] = {"returncode": 1, "summary": "1 failed, 39 passed", "failed": []}
    elif fault == "timeout":
        result["cuda_tests"] = {"returncode": None, "summary": "timed out after 120 s"}
    elif fault in ("reference", "nan"):
        value = 1.0 if fault == "reference" else float("nan")
        result["float64_reference"][0]["sampling_error"] = value
    elif fault == "self-check":
        result["self_checks"]["solve torch.float32 on cuda:0"] = "off by 0.58"
    else:
        result["errors"].append("float64_reference: RuntimeError: CUDA error")
    line = gpu_check.summary_line(result, "out.json")
    assert line.startswith("gpu_check: FAILED: ") and "\n" not in line
    assert gpu_check.failures_of(result)
