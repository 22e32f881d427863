"""Paired differences over seeds with a t confidence interval, for the comparison examples."""

from __future__ import annotations

import dataclasses
import statistics

from scipy import stats


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences ``value - baseline`` and its confidence interval.

    Args:
      mean: mean difference
      low, high: ends of the confidence interval (None with a single seed)
      seeds: number of paired seeds
      confidence: confidence level of the interval
    """

    mean: float
    low: float | None
    high: float | None
    seeds: int
    confidence: float

    def verdict(self, baseline: str) -> str:
        """Words for the table: whether the interval excludes zero (lower is better)."""
        if self.seeds < 2:
            return "one seed: no interval"
        if self.high < 0:
            return f"lower than {baseline} beyond noise"
        if self.low > 0:
            return f"higher than {baseline} beyond noise"
        return "within noise"


def paired_difference(
    values: list[float], baseline: list[float], confidence: float = 0.95
) -> PairedDifference:
    """Paired difference of two equally long lists (entry i of each: the same seed).

    The interval is the paired Student-t interval of the n differences,
    ``scipy.stats.ttest_rel(values, baseline).confidence_interval(confidence)``.

    Args:
      values: results of the contender, one per seed
      baseline: results of the baseline, same seeds in the same order
      confidence: confidence level in (0, 1)

    Returns:
      :class:`PairedDifference`

    Raises:
      ValueError: if the lists are empty or of different lengths, or ``confidence`` is not in
        (0, 1)
    """
    if len(values) != len(baseline) or not values:
        raise ValueError(
            f"expected two non-empty lists of the same length, got {len(values)} "
            f"and {len(baseline)} values"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    differences = [v - b for v, b in zip(values, baseline)]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return PairedDifference(mean, None, None, 1, confidence)
    interval = stats.ttest_rel(values, baseline).confidence_interval(confidence)
    return PairedDifference(
        mean, float(interval.low), float(interval.high), len(differences), confidence
    )
