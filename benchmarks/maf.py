"""Sampling speed of the image MAF: naive vs accelerated layer, and MAF vs Glow vs emerging models.

Run as ``python benchmarks/maf.py [--threads N]``; writes ``benchmarks/results/maf.json``. Timings
are per image (batch time divided by the batch size), with gradients off. The naive layer solve
reruns the whole network for each of the H*W*C elements, so it is timed once, at batch 1. On a
busy machine ``--threads 1`` avoids torch's intra-op threads waiting on each other in the many
small operations of a sequential solve.
"""

import argparse
import os

import torch

from normflows_emerging.flows.maf import MaskedAffineAutoregressiveConv2d
from timing import measure, print_table, write_json

CHANNELS, SIZE, HIDDEN = 12, 16, 96  # CIFAR-10 after one squeeze, the paper's MAF width
MODEL = dict(input_shape=(3, 32, 32), levels=2, flows_per_level=2, hidden_channels=64)
PAPER_MS_PER_SAMPLE = {"maf_naive": 3000, "maf_accelerated": 650, "emerging": 39, "glow": 5}


def layer_rows():
    torch.manual_seed(0)
    layer = MaskedAffineAutoregressiveConv2d(CHANNELS, HIDDEN)
    with torch.no_grad():  # away from the identity init, like a trained layer
        for param in layer.parameters():
            param.add_(0.02 * torch.randn_like(param))
    rows = []
    with torch.no_grad():
        z = torch.randn(1, CHANNELS, SIZE, SIZE)
        naive_outputs = []  # the one naive run is both timed and checked against the fast one
        layer.solver = "naive"
        naive = measure(lambda: naive_outputs.append(layer(z)[0]), warmup=0, max_repeat=1)
        x_naive = naive_outputs[0]
        layer.solver = "fast"
        fast = measure(lambda: layer(z), min_time=1.0, warmup=1)
        x_fast, _ = layer(z)
        max_diff = (x_fast - x_naive).abs().max().item()
        rows.append(
            dict(what="MAF layer", backend="naive", batch=1, ms_per_image=1e3 * naive, speedup=1.0)
        )
        rows.append(
            dict(
                what="MAF layer",
                backend="fast",
                batch=1,
                ms_per_image=1e3 * fast,
                speedup=naive / fast,
                max_abs_diff=max_diff,
            )
        )
        z = torch.randn(16, CHANNELS, SIZE, SIZE)
        fast16 = measure(lambda: layer(z), min_time=1.0, warmup=1) / 16
        rows.append(
            dict(
                what="MAF layer",
                backend="fast",
                batch=16,
                ms_per_image=1e3 * fast16,
                speedup=naive / fast16,
            )
        )
    return rows


def model_rows(batch=16):
    try:
        from normflows_emerging.multiscale import build_multiscale_flow
    except ImportError as error:
        print(f"skipping the model comparison: {error}")
        return []
    rows = []
    for mixing in ("plu", "emerging", "maf"):
        torch.manual_seed(0)
        model = build_multiscale_flow(**MODEL, mixing=mixing).eval()
        num_params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            seconds = (
                measure(lambda model=model: model.sample(batch), min_time=1.0, warmup=1) / batch
            )
        rows.append(
            dict(
                what=f"model ({mixing})",
                backend="default",
                batch=batch,
                ms_per_image=1e3 * seconds,
                params=num_params,
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = layer_rows() + model_rows()
    print_table(
        rows, ["what", "backend", "batch", "ms_per_image", "speedup", "params", "max_abs_diff"]
    )
    here = os.path.dirname(os.path.abspath(__file__))
    write_json(
        os.path.join(here, "results", "maf.json"),
        rows,
        layer=dict(channels=CHANNELS, height=SIZE, width=SIZE, hidden_channels=HIDDEN),
        model=dict(MODEL, input_shape=list(MODEL["input_shape"])),
        paper_ms_per_sample=PAPER_MS_PER_SAMPLE,
    )


if __name__ == "__main__":
    main()
