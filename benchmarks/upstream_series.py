"""Timings for the normflows patch series (upstream/normflows/): the numbers its PRs quote.

Needs the patched normflows tree, which ``upstream/check --keep DIR`` leaves in DIR; it is put
first on ``sys.path`` (the plugin then runs over the patched normflows too). In one process, with
one thread, interleaved (rounds of every contender in turn, see ``inverse.timed``), all layers in
eval mode under ``torch.no_grad()`` as when sampling, float32, parameters moved away from their
initial values, at the paper's CIFAR-10 Glow shapes (C=12 at 16x16, C=48 at 4x4) and batch 1 and
16:

* ``emerging``: the upstream ``EmergingConv2d(C, 3)``'s density direction (``inverse``, three
  convolutions), its sampling direction (``forward``, the torch wavefront solve) and the plugin's
  sampling direction with its default solve (``"compiled"`` where the extension is built) on the
  same state dict;
* ``periodic``: the upstream ``PeriodicConv2d(C, 3)`` in both directions, without and with
  ``use_cache()`` (patch 0006);
* ``qr``: the upstream ``QR1x1(C)`` in both directions without and with ``use_cache()``, and
  normflows' ``Invertible1x1Conv(C, use_lu=True)`` for comparison;
* ``naive``: the reference solve of the patch's tests (one element at a time) against the
  wavefront solve, at one small shape (C=12, 8x8, batch 1, m=2), a few calls each.

Times are medians in ms with their interquartile range; ratios are medians over rounds of the
ratio within a round. ``--clock cpu`` times this thread's CPU time instead of wall-clock time
(for a machine shared with other work). Writes ``benchmarks/results/upstream_series.json`` with
the machine.

    python benchmarks/upstream_series.py --tree DIR [--quick] [--clock cpu] [--out FILE]
"""

import argparse
import copy
import functools
import os
import sys
import time

import torch

CASES = [(12, 16, 1), (12, 16, 16), (48, 4, 1), (48, 4, 16)]
NAIVE_CASE = (12, 8, 1)


def import_patched(tree):
    """The patched normflows from ``tree``, the plugin over it and the reference solve."""
    tree = os.path.abspath(tree)
    sys.path.insert(0, tree)
    import normflows

    if not os.path.abspath(normflows.__file__).startswith(tree + os.sep):
        raise SystemExit(f"upstream_series: normflows comes from {normflows.__file__}, not {tree}")
    if not hasattr(normflows.flows, "EmergingConv2d"):
        raise SystemExit(f"upstream_series: {tree} is not patched (no EmergingConv2d)")
    from normflows.flows.emerging_test import naive_solve

    import normflows_emerging

    return normflows, normflows_emerging, naive_solve


def perturbed(layer, scale=0.05):
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return layer.eval()


def cached_copy(layer):
    """A copy of ``layer`` with ``use_cache()`` on (eval mode)."""
    layer = copy.deepcopy(layer)
    layer.use_cache()
    return layer.eval()


def row_for(group, channels, side, batch, times):
    row = {"group": group, "C": channels, "HxW": f"{side}x{side}", "batch": batch}
    for name, (median, iqr, ratio) in times.items():
        row[f"{name}_ms"], row[f"{name}_iqr"], row[f"{name}/first"] = median, iqr, ratio
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, help="the patched normflows tree")
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "results", "upstream_series.json"),
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per row")
    parser.add_argument(
        "--min-time", type=float, default=0.02, help="seconds per contender and round"
    )
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 rounds")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall-clock time, or this thread's CPU time (for a machine shared with other work)",
    )
    args = parser.parse_args()
    normflows, plugin, naive_solve = import_patched(args.tree)
    from inverse import timed
    from timing import print_table, write_json

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rounds = 3 if args.quick else args.rounds
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    cases = [case for case in CASES if not args.quick or case[2] == 1]
    rows = []
    with torch.no_grad():
        for channels, side, batch in cases:
            x = torch.randn(batch, channels, side, side)

            upstream = perturbed(normflows.flows.EmergingConv2d(channels, 3))
            theirs = plugin.EmergingConv2d(channels, 3).eval()
            theirs.load_state_dict(upstream.state_dict())
            y, _ = upstream.inverse(x)
            contenders = {
                "density": functools.partial(upstream.inverse, x),
                "wavefront": functools.partial(upstream, y),
                "plugin": functools.partial(theirs, y),
            }
            times, _ = timed(contenders, 1, rounds, args.min_time, args.clock)
            rows.append(row_for("emerging", channels, side, batch, times))

            periodic = perturbed(normflows.flows.PeriodicConv2d(channels, 3))
            periodic_cached = cached_copy(periodic)
            contenders = {
                "forward": functools.partial(periodic, x),
                "forward_cached": functools.partial(periodic_cached, x),
                "inverse": functools.partial(periodic.inverse, x),
                "inverse_cached": functools.partial(periodic_cached.inverse, x),
            }
            times, _ = timed(contenders, 1, rounds, args.min_time, args.clock)
            rows.append(row_for("periodic", channels, side, batch, times))

            qr = perturbed(normflows.flows.QR1x1(channels))
            qr_cached = cached_copy(qr)
            lu = normflows.flows.Invertible1x1Conv(channels, use_lu=True).eval()
            contenders = {
                "forward": functools.partial(qr, x),
                "forward_cached": functools.partial(qr_cached, x),
                "inverse": functools.partial(qr.inverse, x),
                "inverse_cached": functools.partial(qr_cached.inverse, x),
                "lu_forward": functools.partial(lu, x),
                "lu_inverse": functools.partial(lu.inverse, x),
            }
            times, _ = timed(contenders, 1, rounds, args.min_time, args.clock)
            rows.append(row_for("qr", channels, side, batch, times))
            print(f"done C={channels} {side}x{side} batch {batch}", flush=True)

        channels, side, batch = NAIVE_CASE
        layer = perturbed(normflows.flows.SquareAutoregressiveConv2d(channels, 2))
        rhs = torch.randn(batch, channels, side, side)
        kernel = layer.causal_kernel()
        seconds = {}
        for name, solve in [
            ("wavefront", normflows.flows.emerging.solve_autoregressive),
            ("naive", naive_solve),
        ]:
            start = clock()
            for _ in range(3):
                solve(rhs, kernel)
            seconds[name] = (clock() - start) / 3
        rows.append(
            {
                "group": "naive",
                "C": channels,
                "HxW": f"{side}x{side}",
                "batch": batch,
                "wavefront_ms": 1e3 * seconds["wavefront"],
                "naive_ms": 1e3 * seconds["naive"],
                "naive/wavefront": seconds["naive"] / seconds["wavefront"],
            }
        )

    for group in ("emerging", "periodic", "qr", "naive"):
        group_rows = [r for r in rows if r["group"] == group]
        columns = ["C", "HxW", "batch"] + [
            key for key in group_rows[0] if key.endswith(("_ms", "/first", "/wavefront"))
        ]
        print(f"\n{group}")
        print_table(group_rows, columns)
    write_json(args.out, rows, threads=1, rounds=rounds, clock=args.clock)


if __name__ == "__main__":
    main()
