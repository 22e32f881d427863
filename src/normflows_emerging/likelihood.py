"""Likelihoods in bits per dimension, the unit of the paper's tables."""

from __future__ import annotations

import math
from numbers import Integral

import normflows as nf
import torch

from .flows.arguments import check_positive_int


def bits_per_dim_from_nll(
    nll: torch.Tensor | float, num_dims: int, num_bins: int
) -> torch.Tensor | float:
    """Bits per dimension of integer data from the NLL of its dequantised version in [0, 1).

    Args:
      nll: negative log-likelihood in nats (tensor or float)
      num_dims: dimensions per example, at least 1
      num_bins: intensity levels of the integer data, at least 2

    Returns:
      ``nll / (num_dims ln 2) + log2(num_bins)``, a tensor if ``nll`` is one

    Raises:
      ValueError: if ``num_dims`` or ``num_bins`` is out of range
    """
    check_positive_int("num_dims", num_dims)
    _check_num_bins(num_bins)
    return nll / (num_dims * math.log(2)) + math.log2(num_bins)


def bits_per_dim(
    model: torch.nn.Module,
    x: torch.Tensor,
    num_bins: int = 256,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bits per dimension of dequantised data under a model.

    For data with ``num_bins`` levels per dimension scaled and dequantised to [0, 1):
    ``-log p(x) / (D·ln 2) + log2(num_bins)``, with D the number of dimensions per example.

    Args:
      model: ``normflows.MultiscaleFlow`` or another normflows model with ``log_prob``
      x: data in [0, 1), shape (batch, ...)
      num_bins: number of discrete levels of the original data (256 for 8-bit images)
      y: class labels of shape (batch,) for class-conditional models, else None

    Returns:
      tensor of shape (batch,)

    Raises:
      ValueError: if ``x`` is outside [0, 1) or ``num_bins`` is not an int above 1
    """
    _check_num_bins(num_bins)
    if not ((x >= 0) & (x < 1)).all():  # also refuses NaN
        raise ValueError("bits_per_dim expects dequantised data in [0, 1)")
    if isinstance(model, nf.MultiscaleFlow) or y is not None:
        log_p = model.log_prob(x, y)
    else:
        log_p = model.log_prob(x)
    return bits_per_dim_from_nll(-log_p, math.prod(x.shape[1:]), num_bins)


def _check_num_bins(num_bins: object) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, Integral) or num_bins < 2:
        raise ValueError(f"num_bins must be an int of at least 2, got {num_bins!r}")
