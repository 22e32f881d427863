"""The prepared GPU check of issues 17 and 25: one run, under 5 minutes on one H200, writes one
JSON and ends with one line: "gpu_check: passed ..." (exit 0) or "gpu_check: FAILED ..." (exit 1).

1. the suite's CUDA tests (``pytest -k cuda``: tests/test_triton_cuda.py and the CUDA tests of
   the layers);
2. both directions of EmergingConv2d, float32 on the GPU against a float64 CPU reference (max
   abs error, each within ``MAX_ERRORS``), and the float32 round trip on data in [0, 1);
3. the triton backend's self-check on this GPU: every variant passed, and its one-off cost per
   variant in a fresh process, with Triton's cache empty (the check compiles its kernel) and
   filled (a later process);
4. sampling (batch 1 and 16) and training-step (batch 16) time of the emerging model (triton
   solve) against the 1x1 model, for the 3x8x256 model and the paper's 3x32x512 model,
   interleaved rounds with torch.utils.benchmark, the ratio per round, median and range, and
   whether it meets ``TARGET_RATIOS`` (reported, not a failure);
5. peak memory of a sampling call (batch 16) beyond what the model holds;
6. kernels launched and host syncs of one ``sample(1)``, from torch.profiler.

It fails (exit 1) when a CUDA test fails or the tests time out, an error exceeds its
``MAX_ERRORS`` entry, a self-check fails, or a step raises. Needs CUDA (exits with one line,
exit 2, otherwise) and no network; the package from an install or from ``src/`` of this
checkout.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"3x8x256": (3, 8, 256), "paper 3x32x512": (3, 32, 512)}
SHAPE = (3, 32, 32)
SYNC_NAMES = ("aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero")
# Largest errors accepted against the float64 CPU reference (float32 on the GPU, layers moved off
# their initial values, data in [0, 1)): about 100 times float32 rounding at these sizes; the
# round trip as tests/test_triton_cuda.py asserts it.
MAX_ERRORS = {
    "density_error": 1e-4,
    "log_det_error": 1e-3,
    "sampling_error": 1e-4,
    "round_trip_error": 1e-5,
}
# Emerging model / 1x1 model times the issue aims at (issue 25), reported with each run.
TARGET_RATIOS = {"sample b1": 1.3, "sample b16": 1.3, "train b16": 1.15}
TESTS_TIMEOUT = 120  # seconds


def _import_package():
    try:
        import normflows_emerging  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(ROOT, "src"))
        import normflows_emerging  # noqa: F401


def run_cuda_tests(timeout):
    """``pytest -k cuda`` over the suite: (return code, last summary line)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "src"), os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")]
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda"]
    command.append(os.path.join(ROOT, "tests"))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s", "failed": []}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "failed": failures,
    }


def directions_against_float64():
    """Max abs errors of EmergingConv2d in float32 on the GPU against float64 on the CPU."""
    from brute_force import perturb_
    from normflows_emerging import EmergingConv2d

    rows = []
    for channels, size, kernel_size in ((12, 16, 3), (24, 8, 3), (48, 4, 3), (12, 16, 5)):
        torch.manual_seed(0)
        layer = perturb_(EmergingConv2d(channels, kernel_size).double()).eval()
        x = torch.rand(16, channels, size, size, dtype=torch.float64)
        with torch.no_grad():
            y64, ld64 = layer.inverse(x)
            z64, _ = layer(y64)
            gpu = layer.float().cuda()
            y32, ld32 = gpu.inverse(x.float().cuda())
            z32, _ = gpu(y64.float().cuda())
            round_trip, _ = gpu(y32)
        rows.append(
            dict(
                C=channels,
                size=size,
                kernel_size=kernel_size,
                density_error=(y32.double().cpu() - y64).abs().max().item(),
                log_det_error=(ld32.double().cpu() - ld64).abs().max().item(),
                sampling_error=(z32.double().cpu() - z64).abs().max().item(),
                round_trip_error=(round_trip.double().cpu() - x).abs().max().item(),
            )
        )
        print(rows[-1], flush=True)
    return rows


def make_model(mixing, levels, steps, hidden):
    from normflows_emerging import build_multiscale_flow

    torch.manual_seed(0)
    model = build_multiscale_flow(SHAPE, levels, steps, hidden, mixing=mixing)
    with torch.no_grad():
        model.log_prob(torch.rand(16, *SHAPE), None)
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    return model.cuda()


def _timer(fn, min_time):
    from torch.utils import benchmark

    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time)


def speed(levels, steps, hidden, rounds, min_time):
    """Per-round ratios emerging / 1x1 of sampling (batch 1, 16) and training (batch 16)."""
    models = {name: make_model(name, levels, steps, hidden) for name in ("1x1", "emerging")}

    def sample(model, batch):
        def run():
            with torch.no_grad():
                model.sample(batch)

        return run

    def train(model, batch):
        optimizer = torch.optim.Adamax(model.parameters(), lr=1e-6)
        x = torch.rand(batch, *SHAPE, device="cuda")

        def run():
            optimizer.zero_grad()
            (-model.log_prob(x, None).mean()).backward()
            optimizer.step()

        return run

    tasks = {"sample b1": (sample, 1, True), "sample b16": (sample, 16, True)}
    tasks["train b16"] = (train, 16, False)
    times = {(task, name): [] for task in tasks for name in models}
    for model in models.values():  # warm-up: Triton compiles, caches fill
        for make, batch, evaluate in tasks.values():
            model.train(not evaluate)
            make(model, batch)()
    torch.cuda.synchronize()
    for round_ in range(rounds):
        for task, (make, batch, evaluate) in tasks.items():
            order = list(models) if round_ % 2 == 0 else list(models)[::-1]
            for name in order:
                model = models[name]
                model.train(not evaluate)
                times[task, name].append(_timer(make(model, batch), min_time).median)
    rows = []
    for task in tasks:
        ratios = [e / b for e, b in zip(times[task, "emerging"], times[task, "1x1"])]
        rows.append(
            dict(
                task=task,
                ms_1x1=1e3 * statistics.median(times[task, "1x1"]),
                ms_emerging=1e3 * statistics.median(times[task, "emerging"]),
                ratio=statistics.median(ratios),
                ratio_range=[min(ratios), max(ratios)],
            )
        )
        print(rows[-1], flush=True)
    peak = sampling_peak_memory(models["emerging"], 16)
    counts = {name: profiled_counts(model) for name, model in models.items()}
    return {"timing": rows, "sampling_peak_memory_bytes": peak, "profiler_counts": counts}


def sampling_peak_memory(model, batch):
    """Bytes allocated at the peak of ``sample(batch)`` beyond what was allocated before."""
    model.eval()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model.sample(batch)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def profiled_counts(model):
    """CUDA kernels and sync operations of one ``sample(1)`` (eval, caches filled), profiled."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    with torch.no_grad():
        model.sample(1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.sample(1)
            torch.cuda.synchronize()
    kernels = syncs = stream_syncs = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif event.name in SYNC_NAMES:
            syncs += 1
        elif event.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize"):
            stream_syncs += 1
    return {"cuda_kernels": kernels, "sync_ops": syncs, "cuda_synchronize_calls": stream_syncs}


def self_check_cost(timeout=300):
    """Seconds of the triton backend's self-check per variant and dtype, each in a fresh process
    with its own Triton cache: "cold" (the cache empty, so the check compiles its kernel, as on a
    machine's first use) and "warm" (a later process: the binaries on disk)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    runs = {}
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        for name in ("cold", "warm"):
            command = [sys.executable, os.path.abspath(__file__), "--time-self-check"]
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
                raise RuntimeError(f"the timing process failed: {lines[-1]}")
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return runs


def _time_self_check():
    """Run in a fresh process by :func:`self_check_cost`: prints one JSON line of rows."""
    _import_package()
    from normflows_emerging.backends import triton_solve

    device = torch.device("cuda", torch.cuda.current_device())
    kernels = triton_solve._kernels(torch.empty(1, device=device))  # CUDA and triton started
    torch.cuda.synchronize()
    rows = []
    for dtype in (torch.float32, torch.float64):
        checks = {
            "solve": functools.partial(triton_solve._check_solve, kernels, device, dtype, False),
            "emerging step with W^-1": functools.partial(
                triton_solve._check_step, kernels, device, dtype, True, False
            ),
            "emerging step": functools.partial(
                triton_solve._check_step, kernels, device, dtype, False, False
            ),
        }
        for variant, check in checks.items():
            start = time.perf_counter()
            error = check()  # reads its result on the host: the GPU has finished
            seconds = time.perf_counter() - start
            rows.append(dict(variant=variant, dtype=str(dtype), seconds=seconds, error=error))
    print(json.dumps(rows))


def self_check_outcomes():
    """The self-checks this process ran: "passed" or the failure's message, by variant."""
    from normflows_emerging.backends import triton_self_check

    return {
        f"{'/'.join(map(str, variant))} {dtype} on {device}": message or "passed"
        for device, dtype, variant, message in triton_self_check.outcomes()
    }


def failures_of(result):
    """What failed, one short phrase each (empty: everything passed)."""
    failures = list(result.get("errors", []))
    tests = result.get("cuda_tests")
    if tests is not None and tests["returncode"] != 0:
        failures.append(f"CUDA tests: {tests['summary']}")
    for row in result.get("float64_reference", []):
        for key, limit in MAX_ERRORS.items():
            if not row[key] <= limit:  # NaN fails too
                failures.append(
                    f"{key} {row[key]:.2g} > {limit:g} (C={row['C']}, kernel {row['kernel_size']})"
                )
    for variant, outcome in result.get("self_checks", {}).items():
        if outcome != "passed":
            failures.append(f"self-check of {variant} failed")
    return failures


def summary_line(result, out):
    """The one line the script ends with."""
    failures = failures_of(result)
    if failures:
        return f"gpu_check: FAILED: {'; '.join(failures)} (details in {out})"
    ratios = []
    for model, measured in result.get("models", {}).items():
        for row in measured["timing"]:
            target = TARGET_RATIOS[row["task"]]
            met = "met" if row["ratio"] <= target else "missed"
            ratios.append(f"{model} {row['task']} {row['ratio']:.2f}x ({met} {target}x)")
    tests = result.get("cuda_tests", {}).get("summary", "tests skipped")
    return (
        f"gpu_check: passed on {result['device']}: {tests}; errors within MAX_ERRORS; "
        f"self-checks passed; {', '.join(ratios)}; wrote {out}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="1 round, 0.1 s per timing")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--time-self-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_check: needs a CUDA device (torch.cuda.is_available() is False); nothing run",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.time_self_check:
        _time_self_check()
        return
    _import_package()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import normflows_emerging

    start = time.time()
    result = {
        "device": torch.cuda.get_device_name(),
        "capability": "sm_{}{}".format(*torch.cuda.get_device_capability()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "backend": normflows_emerging.inverse_backend("cuda"),
        "max_errors": MAX_ERRORS,
        "target_ratios": TARGET_RATIOS,
        "errors": [],
    }

    def step(name, function, *arguments):
        try:
            result[name] = function(*arguments)
            print(name, result[name], flush=True)
        except Exception as error:  # the other steps still run; the run fails
            result["errors"].append(f"{name}: {type(error).__name__}: {error}")
            print(result["errors"][-1], flush=True)

    if not args.skip_tests:
        step("cuda_tests", run_cuda_tests, TESTS_TIMEOUT)
    step("float64_reference", directions_against_float64)
    step("self_check_cost_seconds", self_check_cost)
    rounds, min_time = (1, 0.1) if args.quick else (3, 0.3)
    result["models"] = {}
    for name, (levels, steps, hidden) in MODELS.items():
        try:
            result["models"][name] = speed(levels, steps, hidden, rounds, min_time)
        except Exception as error:
            result["errors"].append(f"model {name}: {type(error).__name__}: {error}")
    result["self_checks"] = self_check_outcomes()
    result["seconds"] = time.time() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    line = summary_line(result, args.out)
    print(line)
    sys.exit(1 if failures_of(result) else 0)


def _version(name):
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
