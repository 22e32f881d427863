"""Kernel launches of a training step, counted on the CPU along the CUDA code path: issue 26's
budget against the 1x1 model (emerging <= 1.5x, periodic <= 1.3x, qr <= 1.2x, no more host
syncs), on a small model of the same structure (2 levels of 4 steps; the paper-size model's
counts are in ``benchmarks/results/training.json``, from ``benchmarks/training.py``).

Steps per level matter (a level's layers share one grouped computation): the budget holds here
with half the steps of the model the issue counted.
"""

import pytest

import training

SHAPE, LEVELS, STEPS, HIDDEN, BATCH = (3, 16, 16), 2, 4, 4, 2
BUDGET = {"qr": 1.2, "periodic": 1.3, "emerging": 1.5}


@pytest.fixture(scope="module")
def baseline():
    return training.step_counts(training.make_model("1x1", SHAPE, LEVELS, STEPS, HIDDEN), BATCH)


@pytest.mark.parametrize("mixing", BUDGET)
def test_training_step_launches_within_budget_of_1x1(mixing, baseline):
    counts = training.step_counts(training.make_model(mixing, SHAPE, LEVELS, STEPS, HIDDEN), BATCH)
    assert counts["launches"] <= BUDGET[mixing] * baseline["launches"], (counts, baseline)
    assert counts["syncs"] <= baseline["syncs"], counts["sync_ops"]
