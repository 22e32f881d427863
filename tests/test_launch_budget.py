"""Kernel launches of sampling, counted on the CPU along the CUDA code path: an emerging model
launches at most 1.2x what the 1x1 model launches (issue 17's budget), Triton launches included.

The counter is ``benchmarks/dispatch_count.py``; the paper model's counts are in
``benchmarks/results/dispatch_count_paper.json``.
"""

import pathlib
import sys

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("interpreted_triton")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import dispatch_count  # noqa: E402
from normflows_emerging import EmergingConv2d, use_backend  # noqa: E402

SHAPE, LEVELS, STEPS, HIDDEN = (3, 8, 8), 2, 2, 8


def test_emerging_sampling_launches_within_budget_of_1x1():
    baseline = dispatch_count.sample_counts(
        dispatch_count.make_model("1x1", SHAPE, LEVELS, STEPS, HIDDEN), 1
    )
    model = dispatch_count.make_model("emerging", SHAPE, LEVELS, STEPS, HIDDEN)
    counts = dispatch_count.sample_counts(model, 1, "triton")
    layers = sum(isinstance(m, EmergingConv2d) for m in model.modules())
    assert counts["triton"] == layers  # one fused launch per sampling step
    assert counts["launches"] <= 1.2 * baseline["launches"], (counts, baseline)


def test_counter_counts_launches_syncs_and_triton():
    layer = EmergingConv2d(2).eval()
    z = torch.randn(1, 2, 3, 3)

    def run():
        with torch.no_grad(), use_backend("triton"):
            layer(z)
            float(z.sum())  # one more launch (sum) and one sync

    counts = dispatch_count.count_launches(run, cuda_caches=False)  # no torch.equal syncs
    assert counts["triton"] == 1
    assert counts["top_ops"]["_local_scalar_dense"] == counts["syncs"] >= 2
    assert counts["launches"] >= counts["triton"] + 1
