"""Training steps on a GPU's terms: kernel launches, eager and compiled, and the CPU step time.

Counts (``dispatch_count.py``'s method: on the CPU along the CUDA code path, every aten operation
that is not a view or an allocation is one launch) one forward and backward of a training loss,
``-model.log_prob(x).mean()`` at ``--batch`` in training mode, gradients set to None first (as
``optimizer.zero_grad()`` does), no optimizer step, for models from ``build_multiscale_flow``
(3 levels x 8 steps, 256 hidden channels, 3x32x32 by default; ``--paper`` for 3 x 32 steps with
512) with the mixing layers 1x1 (normflows' ``Invertible1x1Conv``, the baseline of every ratio),
qr, periodic and emerging:

* ``launches``: the model's own ``log_prob``, which groups its layers' parameter-side work
  (:mod:`normflows_emerging.flows.grouped`);
* ``ungrouped``: the same model through ``normflows.MultiscaleFlow.log_prob`` (what a
  hand-built normflows model does without ``grouped_weights``; it also skips the model's one
  finiteness check, one launch and one sync);
* ``compiled`` (with ``--compiled``): the kernels ``torch.compile`` (inductor) generates for the
  same step on the CPU, fused C++ kernels plus library calls (convolutions, matrix products,
  solves) in the forward and backward graphs: an estimate of a compiled GPU step's launches
  (inductor fuses differently for Triton), and minutes of compilation per model.

Per mixing layer (C = 12, 16x16, batch 16, forward and backward of a loss on its output and
log-det): alone, and per layer in a group of 8 of the same shape (as in one level of the model).

Then the CPU training step (log_prob + backward + Adamax step at ``--batch``), timed in
``--rounds`` interleaved rounds (contenders in rotated order, about ``--min-time`` seconds of
steps each), each ratio taken against the 1x1 time of the same round: median and range of the
ratios over the rounds, for wall-clock time and for the thread's CPU time (see
:func:`per_call`). ``--device cuda`` times on a GPU instead (torch.utils.benchmark), eager and
compiled, at each ``--batch``.

    python benchmarks/training.py [--paper] [--compiled] [--rounds 7] [--threads 1]
    python benchmarks/training.py --device cuda --batch 16 64 --compiled   # on a GPU machine

writes ``benchmarks/results/training[_paper].json`` (``training_cuda.json`` on a GPU).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import normflows as nf

import dispatch_count
from dispatch_count import RESULTS, DispatchCount, accelerator_path, count_launches
from normflows_emerging import EmergingConv2d, PeriodicConv2d, QR1x1
from timing import print_table, timed, write_json

MIXINGS = ("1x1", "qr", "periodic", "emerging")
LAYERS = {
    "1x1": lambda c: nf.flows.Invertible1x1Conv(c, use_lu=False),
    "qr": QR1x1,
    "periodic": PeriodicConv2d,
    "emerging": EmergingConv2d,
}


def make_model(mixing, shape, levels, steps, hidden, device="cpu"):
    """``dispatch_count.make_model``'s model (ActNorms initialised, parameters off their
    initial values by 1e-3) in training mode on ``device``."""
    return dispatch_count.make_model(mixing, shape, levels, steps, hidden).to(device).train()


def loss_and_backward(model, x, grouped=True):
    """One forward and backward of the training loss, gradients set to None first; with
    ``grouped=False`` through normflows' ``MultiscaleFlow.log_prob`` (no grouping)."""
    for p in model.parameters():
        p.grad = None
    log_prob = model.log_prob(x, None) if grouped else nf.MultiscaleFlow.log_prob(model, x, None)
    (-log_prob.mean()).backward()


def step_counts(model, batch, grouped=True) -> dict:
    """Launches and syncs of :func:`loss_and_backward` on the CUDA code path."""
    x = torch.rand(batch, *model.input_shape)
    return count_launches(lambda: loss_and_backward(model, x, grouped))


def compiled_kernels(model, batch) -> dict:
    """Kernels of inductor's CPU code for the compiled training step (forward and backward
    graphs): ``fused`` generated C++ kernels, ``library`` calls (``extern_kernels.*``, aten
    operators), ``kernels`` both."""
    from torch._inductor.utils import run_and_get_code

    x = torch.rand(batch, *model.input_shape)
    compiled = torch.compile(lambda x: -model.log_prob(x, None).mean())

    def step():
        for p in model.parameters():
            p.grad = None
        compiled(x).backward()

    torch._dynamo.reset()
    _, codes = run_and_get_code(step)
    fused = library = 0
    for code in codes:
        body = code[code.index("def call(") :]
        body = body[: body.index("\ndef ", 1)] if "\ndef " in body[1:] else body
        fused += len(re.findall(r"^\s+cpp_fused_\w+\(", body, re.M))
        library += len(
            re.findall(r"^\s+(?:\w+(?:, \w+)* = )?(?:extern_kernels|torch\.ops|aten)\.", body, re.M)
        )
    return dict(kernels=fused + library, fused=fused, library=library, graphs=len(codes))


def layer_counts(mixing, channels=12, size=16, batch=16, group=8) -> dict:
    """Launches of one layer's forward and backward, alone and per layer in a group."""
    from normflows_emerging import grouped_weights

    def counted(layers):
        x = torch.randn(batch, channels, size, size, requires_grad=True)

        def run():
            for p in [x, *layers.parameters()]:
                p.grad = None
            y, log_det = x, 0
            with grouped_weights(layers):
                for layer in layers:
                    y, part = layer.inverse(y)
                    log_det = log_det + part
            (y.square().mean() - log_det.mean()).backward()

        with accelerator_path():
            run()
            counter = DispatchCount()
            with counter:
                run()
        return counter

    torch.manual_seed(0)
    alone = counted(torch.nn.ModuleList([LAYERS[mixing](channels)]).train())
    grouped = counted(torch.nn.ModuleList([LAYERS[mixing](channels) for _ in range(group)]))
    return dict(
        layer=mixing,
        alone=alone.launches,
        per_layer_in_group=round(grouped.launches / group, 1),
        top_ops_alone=dict(collections.Counter(alone.ops).most_common(12)),
    )


def step_runner(model, batch, compiled=False):
    """A training step (zero_grad, loss, backward, Adamax step) on the model's device."""
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-6)
    x = torch.rand(batch, *model.input_shape, device=next(model.parameters()).device)

    def loss(x):
        return -model.log_prob(x, None).mean()

    loss_fn = torch.compile(loss) if compiled else loss

    def run():
        optimizer.zero_grad()
        loss_fn(x).backward()
        optimizer.step()

    return run


def per_call(run, device, min_time) -> tuple[float, float | None]:
    """Seconds per call of ``run()``: wall-clock and, on the CPU, the calling thread's CPU time
    (with one torch thread all of a step's work runs in it; unlike wall-clock time it leaves
    out the time other processes hold the core, the noise of a shared machine). On other
    devices torch.utils.benchmark's wall-clock median (it synchronises) and None."""
    if device != "cpu":
        return timed(run, min_time).median, None
    calls, wall, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall < min_time or calls == 0:
        run()
        calls += 1
    return (time.perf_counter() - wall) / calls, (time.thread_time() - cpu) / calls


def step_times(args, shape, levels, steps, hidden) -> list:
    """Rows per (batch, eager/compiled, mixing): median ms per step over the rounds, median
    and range of the per-round ratios to the 1x1 model, wall-clock and (CPU) thread CPU time."""
    modes = [False, True] if args.compiled and args.device != "cpu" else [False]
    runs = {}
    for batch in args.batch:
        for compiled in modes:
            for mixing in MIXINGS:
                model = make_model(mixing, shape, levels, steps, hidden, args.device)
                runs[batch, compiled, mixing] = step_runner(model, batch, compiled)
                runs[batch, compiled, mixing]()  # warm-up (and compilation)
    seconds = {key: [] for key in runs}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", flush=True)
        order = list(runs)
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for key in order:
            seconds[key].append(per_call(runs[key], args.device, args.min_time))
    rows = []
    for (batch, compiled, mixing), values in seconds.items():
        row = dict(
            device=args.device,
            batch=batch,
            mode="compiled" if compiled else "eager",
            mixing=mixing,
            rounds=args.rounds,
        )
        for clock, index in (("wall", 0), ("cpu", 1)):
            times = [value[index] for value in values]
            if times[0] is None:
                continue
            base = [value[index] for value in seconds[batch, compiled, "1x1"]]
            ratios = [t / b for t, b in zip(times, base)]
            row[f"{clock}_ms"] = round(1e3 * statistics.median(times), 1)
            row[f"{clock}_ratio"] = round(statistics.median(ratios), 3)
            row[f"{clock}_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
        rows.append(row)
    return rows


def launch_rows(args, shape, levels, steps, hidden) -> list:
    rows, baseline = [], None
    for mixing in MIXINGS:
        model = make_model(mixing, shape, levels, steps, hidden)
        counts = step_counts(model, args.batch[0])
        ungrouped = step_counts(model, args.batch[0], grouped=False)
        baseline = baseline or counts
        row = dict(
            mixing=mixing,
            batch=args.batch[0],
            launches=counts["launches"],
            ratio_to_1x1=round(counts["launches"] / baseline["launches"], 3),
            ungrouped=ungrouped["launches"],
            ungrouped_ratio=round(ungrouped["launches"] / baseline["launches"], 3),
            syncs=counts["syncs"],
            aten_ops=counts["aten_ops"],
        )
        if args.compiled:
            row["compiled"] = compiled_kernels(model, args.batch[0])
        rows.append(row)
        print(row, flush=True)
    if args.compiled:
        base = rows[0]["compiled"]["kernels"]
        for row in rows:
            row["compiled_ratio_to_1x1"] = round(row["compiled"]["kernels"] / base, 3)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help="3 levels x 32 steps, 512 hidden")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="where steps are timed (cpu, cuda)")
    parser.add_argument("--compiled", action="store_true", help="also torch.compile the step")
    parser.add_argument("--no-timing", action="store_true", help="counts only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (3, 32, 32)
    levels, steps, hidden = (3, 32, 512) if args.paper else (3, 8, 256)
    payload = dict(
        what="one forward and backward of -model.log_prob(x).mean() (launches counted on the "
        "CPU along the CUDA code path, benchmarks/training.py) and the training step time",
        model=dict(shape=shape, levels=levels, flows_per_level=steps, hidden_channels=hidden),
    )
    if args.device == "cpu":
        payload["layers"] = [layer_counts(mixing) for mixing in MIXINGS]
        print_table(payload["layers"], ["layer", "alone", "per_layer_in_group"])
        rows = launch_rows(args, shape, levels, steps, hidden)
        columns = ["mixing", "launches", "ratio_to_1x1", "ungrouped", "ungrouped_ratio", "syncs"]
        print_table(rows, columns + (["compiled_ratio_to_1x1"] if args.compiled else []))
    else:
        rows = []
    if not args.no_timing:
        payload["steps"] = step_times(args, shape, levels, steps, hidden)
        columns = ["device", "batch", "mode", "mixing", "wall_ms", "wall_ratio", "cpu_ratio"]
        print_table(payload["steps"], columns)
    suffix = "_paper" if args.paper else ""
    if args.device != "cpu":
        suffix += f"_{args.device}"
    write_json(os.path.join(RESULTS, f"training{suffix}.json"), rows, **payload)


if __name__ == "__main__":
    main()
