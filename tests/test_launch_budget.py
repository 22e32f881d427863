"""Kernel launches of sampling, counted on the CPU along the CUDA code path: an emerging model
launches at most 1.2x what the 1x1 model launches (issue 17's budget), Triton launches included.

The counter is ``benchmarks/dispatch_count.py``; the paper model's counts are in
``benchmarks/results/dispatch_count_paper.json``.
"""

import pytest
import torch

pytest.importorskip("triton")
import dispatch_count
from normflows_emerging import EmergingConv2d, use_backend

pytestmark = pytest.mark.usefixtures("interpreted_triton")

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

    counts = dispatch_count.count_launches(run)
    assert counts["triton"] == 1
    assert counts["sync_ops"] == {"_local_scalar_dense": 1}  # the float(); the layer reads none
    assert counts["launches"] >= counts["triton"] + 1
