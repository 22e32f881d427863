"""The prepared GPU check of issue 17: one run, under 5 minutes on one H200, writes one JSON.

1. the suite's CUDA tests (``pytest -k cuda``: tests/test_triton_cuda.py and the CUDA tests of
   the layers);
2. both directions of EmergingConv2d, float32 on the GPU against a float64 CPU reference (max
   abs error), and the float32 round trip on data in [0, 1);
3. sampling (batch 1 and 16) and training-step (batch 16) time of the emerging model (triton
   solve) against the 1x1 model, for the 3x8x256 model and the paper's 3x32x512 model,
   interleaved rounds with torch.utils.benchmark, the ratio per round, median and range;
4. peak memory of a sampling call (batch 16) beyond what the model holds;
5. kernels launched and host syncs of one ``sample(1)``, from torch.profiler.

Needs CUDA (exits with one line otherwise) and no network; the package from an install or from
``src/`` of this checkout.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"3x8x256": (3, 8, 256), "paper 3x32x512": (3, 32, 512)}
SHAPE = (3, 32, 32)
SYNC_NAMES = ("aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero")


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
        return {"returncode": None, "summary": f"timed out after {timeout} s"}
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="1 round, 0.1 s per timing")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_check: needs a CUDA device (torch.cuda.is_available() is False); nothing run",
            file=sys.stderr,
        )
        sys.exit(2)
    _import_package()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import normflows_emerging

    start = time.time()
    result = {
        "device": torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "backend": normflows_emerging.inverse_backend("cuda"),
    }
    if not args.skip_tests:
        result["cuda_tests"] = run_cuda_tests(timeout=120)
        print(result["cuda_tests"], flush=True)
    result["float64_reference"] = directions_against_float64()
    rounds, min_time = (1, 0.1) if args.quick else (3, 0.3)
    result["models"] = {}
    for name, (levels, steps, hidden) in MODELS.items():
        result["models"][name] = speed(levels, steps, hidden, rounds, min_time)
    result["seconds"] = time.time() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} after {result['seconds']:.0f} s")


def _version(name):
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
