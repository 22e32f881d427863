"""Density convolution vs. the solve backends of a square autoregressive convolution.

Rows: the shapes of the paper's CIFAR-10 Glow (C=12 at 16x16, C=24 at 8x8, C=48 at 4x4) with
kernel sizes m=2 and m=3 (the two halves of emerging 3x3 and 5x5 convolutions) at batch 1, 16 and
64, plus C=96 at 32x32, batch 16. Per row, in one process and interleaved (rounds of every
contender in turn, merged by torch.utils.benchmark): the layer's density pass (``inverse``, a
convolution), its sampling pass (``forward``) with the compiled and torch solves, and the compiled
solve alone (``solve_autoregressive`` on a prepared right-hand side: the layer's own work is the
difference) in float32 and float64 (``solve64``; ``solve64/solve`` is the float64 solve's time over
the float32 one's). The layer is in eval mode, as when sampling: both directions reuse the kernel
assembled once (in training mode each call assembles it).
``--clock cpu`` times CPU time instead of wall-clock time (for a shared, loaded machine).
Headline with 1 thread, then (unless ``--threads 1``) the convolution and the compiled solve with
2 threads. Times are medians in ms with their interquartile range (IQR); ratios are medians over
rounds of the ratio within a round. The JSON records the CPU model and the instruction set of the
compiled kernels (``normflows_emerging._solve.instruction_set()``; the environment variable
NORMFLOWS_EMERGING_ISA=baseline|avx2|avx512 forces one).

    python benchmarks/inverse.py [--out FILE] [--quick] [--threads 1] [--clock cpu]
"""

import argparse
import functools
import os
import sys

import torch

from machine import cpu_model
from normflows_emerging import SquareAutoregressiveConv2d, _solve, inverse_backend, use_backend
from normflows_emerging.solve import solve_autoregressive
from timing import CLOCKS, benchmark, print_table, write_json

CASES = [
    (channels, side, size, batch)
    for size in (2, 3)
    for channels, side in ((12, 16), (24, 8), (48, 4))
    for batch in (1, 16, 64)
] + [(96, 32, 2, 16)]
NAIVE_CASE = (48, 4, 2, 1)


def sample_with(layer, y, backend):
    """The layer's sampling pass with the solve ``backend``."""
    with use_backend(backend):
        return layer(y)


def timed(contenders, threads, rounds, min_run_time, clock="wall"):
    """Time each callable in ``contenders`` in interleaved rounds.

    Returns:
      ({name: (median ms, IQR ms, ratio)}, per_round) where median and IQR are over all rounds
      merged, ratio is the median over rounds of the name's time / the first contender's time in
      the same round (robust to load that changes between rounds), and per_round is a list of
      {name: Measurement}, one per round. ``clock="cpu"`` times the CPU time of this thread
      instead of wall-clock time: on a machine shared with other work it does not count the time
      slices given to other processes (it still counts what they cost through shared caches)
    """
    per_round = []
    for _ in range(rounds):
        per_round.append({})
        for name, fn in contenders.items():
            timer = benchmark.Timer(
                "fn()",
                globals={"fn": fn},
                description=name,
                num_threads=threads,
                timer=CLOCKS[clock],
            )
            per_round[-1][name] = timer.blocked_autorange(min_run_time=min_run_time)
    merged = benchmark.Measurement.merge([m for r in per_round for m in r.values()])
    merged = {m.description: m for m in merged}
    baseline = next(iter(contenders))
    result = {}
    for name in contenders:
        ratios = torch.tensor([r[name].median / r[baseline].median for r in per_round])
        result[name] = (1e3 * merged[name].median, 1e3 * merged[name].iqr, ratios.median().item())
    return result, per_round


def round_ratio(per_round, name, baseline):
    """Median over rounds of ``name``'s time / ``baseline``'s in the same round."""
    return torch.tensor([r[name].median / r[baseline].median for r in per_round]).median().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "inverse.json")
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per row")
    parser.add_argument(
        "--min-time", type=float, default=0.02, help="seconds per contender and round"
    )
    parser.add_argument("--quick", action="store_true", help="batch-1 and 16 rows, m=2 only")
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated thread counts (default 1,2)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall-clock time, or this thread's CPU time (for a machine shared with other work)",
    )
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    rows = []
    cases = [c for c in CASES if not args.quick or (c[2] == 2 and c[3] < 64)]
    for channels, side, size, batch in cases:
        layer = SquareAutoregressiveConv2d(channels, size=size).eval()  # as when sampling
        with torch.no_grad():
            for p in layer.parameters():  # away from the initial values
                p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(batch, channels, side, side)
        with torch.no_grad():
            y, _ = layer.inverse(x)
            rhs, kernel = y - layer.bias[:, None, None], layer.causal_kernel()
            rhs64, kernel64 = rhs.double(), kernel.double()
            for threads in thread_counts:
                contenders = {
                    "conv": functools.partial(layer.inverse, x),
                    "compiled": functools.partial(sample_with, layer, y, "compiled"),
                    "solve": functools.partial(solve_autoregressive, rhs, kernel, 1, "compiled"),
                    "solve64": functools.partial(
                        solve_autoregressive, rhs64, kernel64, 1, "compiled"
                    ),
                }
                if threads == 1:
                    contenders["torch"] = functools.partial(sample_with, layer, y, "torch")
                times, per_round = timed(
                    contenders, threads, args.rounds, args.min_time, args.clock
                )
                row = {
                    "C": channels,
                    "HxW": f"{side}x{side}",
                    "m": size,
                    "batch": batch,
                    "threads": threads,
                }
                for name, (median, iqr, ratio) in times.items():
                    row[f"{name}_ms"], row[f"{name}_iqr"] = median, iqr
                    if name != "conv":
                        row[f"{name}/conv"] = ratio
                row["solve64/solve"] = round_ratio(per_round, "solve64", "solve")
                if threads == 1 and (channels, side, size, batch) == NAIVE_CASE:
                    naive = benchmark.Timer(
                        "fn()",
                        globals={"fn": functools.partial(sample_with, layer, y, "naive")},
                        num_threads=1,
                    ).timeit(1)
                    row["naive_ms"] = 1e3 * naive.median
                    row["naive/compiled"] = row["naive_ms"] / row["compiled_ms"]
                rows.append(row)
    columns = [
        "C",
        "HxW",
        "m",
        "batch",
        "threads",
        "conv_ms",
        "conv_iqr",
        "compiled_ms",
        "compiled_iqr",
        "solve_ms",
        "solve64_ms",
        "torch_ms",
        "naive_ms",
        "compiled/conv",
        "solve/conv",
        "solve64/solve",
        "torch/conv",
        "naive/compiled",
    ]
    print(
        f"torch {torch.__version__}, default CPU backend: {inverse_backend()}, compiled kernels: "
        f"{_solve.instruction_set()} ({cpu_model()}); medians and IQR in ms over {args.rounds} "
        "interleaved rounds; ratios: median over rounds"
    )
    for threads in thread_counts:
        print(f"\n{threads} thread(s)")
        print_table(
            [r for r in rows if r["threads"] == threads],
            [
                c
                for c in columns
                if threads == 1 or c not in ("torch_ms", "naive_ms", "torch/conv", "naive/compiled")
            ],
        )
    write_json(
        args.out,
        rows,
        benchmark="inverse",
        layer="SquareAutoregressiveConv2d",
        rounds=args.rounds,
        clock=args.clock,
        instruction_set=_solve.instruction_set(),
        instruction_sets_supported=list(_solve.supported_instruction_sets()),
        command=" ".join(["python", "benchmarks/inverse.py", *sys.argv[1:]]),
        # glibc settings such as MALLOC_TRIM_THRESHOLD_ change how often fresh output tensors
        # cost page faults, which on a virtual machine can outweigh the solve itself
        malloc_environment={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    )


if __name__ == "__main__":
    main()
