"""Host synchronisations and aten operations of one ``sample(1)`` on the GPU code path.

Counted on the CPU: every aten op under a ``TorchDispatchMode``, with CPU tensors made to take
the path the layers take on a GPU (``tests/sync_counting.py``). Model: the paper's CIFAR-10 Glow,
``build_multiscale_flow((3, 32, 32), levels=3, flows_per_level=32, hidden_channels=512)``, in
eval mode after one warm-up sample (caches filled, ActNorms initialised), with the mixing layers
1x1 (normflows), periodic and emerging (torch wavefront solve, the GPU fallback). A sync is
``.item()``, ``bool(t)``, ``int(t)``, ``torch.equal`` or ``nonzero`` of a tensor; op names are
listed per count.

    python benchmarks/syncs.py [--out benchmarks/results/syncs.json] [--small]
"""

import argparse
import os
import sys

import torch

from normflows_emerging import build_multiscale_flow, use_backend
from timing import write_json

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from sync_counting import SyncCounter, accelerator_path  # noqa: E402

PAPER = dict(input_shape=(3, 32, 32), levels=3, flows_per_level=32, hidden_channels=512)
SMALL = dict(input_shape=(3, 16, 16), levels=2, flows_per_level=2, hidden_channels=16)
MIXINGS = ("1x1", "periodic", "emerging")


def count(model) -> SyncCounter:
    """Counts of one sample(1) along the GPU path, after a warm-up sample."""
    with torch.no_grad(), use_backend("torch"), accelerator_path():
        model.sample(1)
        with SyncCounter() as counter:
            model.sample(1)
    return counter


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/syncs.json")
    parser.add_argument("--small", action="store_true", help="a small model (a quick check)")
    args = parser.parse_args()
    config = SMALL if args.small else PAPER
    rows = []
    for mixing in MIXINGS:
        torch.manual_seed(0)
        model = build_multiscale_flow(**config, mixing=mixing).eval()
        counter = count(model)
        rows.append(
            dict(mixing=mixing, aten_ops=counter.ops, syncs=counter.total_syncs, **counter.syncs)
        )
        print(rows[-1])
    write_json(args.out, rows, model={**config, "input_shape": list(config["input_shape"])})


if __name__ == "__main__":
    main()
