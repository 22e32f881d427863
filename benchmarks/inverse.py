"""Density convolution vs. the solve backends of a square autoregressive convolution.

Shapes of the paper's CIFAR-10 Glow (C=12 at 16x16, C=24 at 8x8, C=48 at 4x4), size-2 kernels,
batch 1, 16 and 64, all measured side by side in one run (naive only on the smallest case).

    python benchmarks/inverse.py [--out benchmarks/results/inverse.json]
"""

import argparse
import os

import torch

from timing import measure, print_table, write_json
from normflows_emerging import SquareAutoregressiveConv2d, inverse_backend

SHAPES = [(12, 16), (24, 8), (48, 4)]
BATCHES = [1, 16, 64]
NAIVE_CASE = (48, 4, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "inverse.json"))
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds spent timing each entry")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for channels, side in SHAPES:
        for batch in BATCHES:
            layer = SquareAutoregressiveConv2d(channels, size=2)
            x = torch.randn(batch, channels, side, side)
            row = {"C": channels, "HxW": f"{side}x{side}", "batch": batch}
            with torch.no_grad():
                y, _ = layer.inverse(x)
                row["conv_ms"] = 1e3 * measure(lambda: layer.inverse(x), args.min_time)
                for backend in ("compiled", "torch"):
                    row[f"{backend}_ms"] = 1e3 * measure(lambda: layer(y, backend=backend),
                                                         args.min_time)
                if (channels, side, batch) == NAIVE_CASE:
                    row["naive_ms"] = 1e3 * measure(lambda: layer(y, backend="naive"), 0, 0, 3)
                    row["naive/compiled"] = row["naive_ms"] / row["compiled_ms"]
            row["compiled/conv"] = row["compiled_ms"] / row["conv_ms"]
            row["torch/conv"] = row["torch_ms"] / row["conv_ms"]
            rows.append(row)
    columns = ["C", "HxW", "batch", "conv_ms", "compiled_ms", "torch_ms", "naive_ms",
               "compiled/conv", "torch/conv", "naive/compiled"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"default CPU backend: {inverse_backend()}")
    print_table(rows, columns)
    write_json(args.out, rows, benchmark="inverse", layer="SquareAutoregressiveConv2d(size=2)")


if __name__ == "__main__":
    main()
