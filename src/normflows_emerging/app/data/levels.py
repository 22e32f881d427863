"""Intensity levels of integer images: choosing the depth, rescaling levels, resizing.

A dataset yields integer images with values in ``0 .. num_bins - 1``. The data's own levels
(``source_bins``: 256 for 8-bit files, 65536 for 16-bit ones, 17 for ``digits``) are kept, or
rescaled to ``2**bits`` levels: level ``v`` of ``n`` goes to the level of ``m`` whose interval
contains the centre of ``v``'s interval, ``floor((v + 1/2) m / n)``. For powers of two this is
``v >> (log2 n - bits)``, the quantisation of Glow's and the paper's 5-bit runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_BITS = 16


def check_bits(bits: int | None) -> None:
    """Check the ``bits`` option of :func:`~normflows_emerging.app.data.get_dataset`.

    Raises:
      TypeError: if ``bits`` is neither ``None`` nor an int
      ValueError: if ``bits`` is outside 1 .. 16
    """
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int from 1 to {MAX_BITS} or None, got {bits!r}")
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be from 1 to {MAX_BITS} or None, got {bits}")


def chosen_bins(bits: int | None, source_bins: int, what: str) -> int:
    """Number of levels a dataset yields: ``source_bins`` for ``bits=None``, else ``2**bits``.

    Args:
      bits: requested bits per value, or ``None`` for the data's own depth
      source_bins: levels of the stored data
      what: the data, for the error message

    Raises:
      ValueError: if ``2**bits`` is more than ``source_bins``: the extra levels would stay empty
        while bits/dim counted them
    """
    if bits is None:
        return source_bins
    max_bits = int(math.log2(source_bins))
    if bits > max_bits:
        raise ValueError(
            f"bits={bits} is more than {what} has: {source_bins} levels, so at most "
            f"bits={max_bits} (or bits=None for all {source_bins})"
        )
    return 2**bits


def bits_of(num_bins: int) -> int | None:
    """``log2(num_bins)`` when ``num_bins`` is a power of two, else ``None`` (``digits``' 17)."""
    return num_bins.bit_length() - 1 if num_bins & (num_bins - 1) == 0 else None


def level_dtype(num_bins: int) -> torch.dtype:
    """``torch.uint8`` for up to 256 levels, else ``torch.int32`` (torch's uint16 is limited)."""
    return torch.uint8 if num_bins <= 256 else torch.int32


def check_levels(image: torch.Tensor, source_bins: int, where: str) -> None:
    """Raise ValueError unless every value of the integer ``image`` is in 0 .. source_bins - 1."""
    low, high = int(image.min()), int(image.max())
    if low < 0 or high >= source_bins:
        raise ValueError(
            f"{where} has values {low} .. {high}, outside the 0 .. {source_bins - 1} of its "
            f"{source_bins} levels"
        )


def to_levels(
    image: torch.Tensor, source_bins: int, num_bins: int, image_size: int | None, nearest: bool
) -> torch.Tensor:
    """Resize an integer image at its own depth, then rescale its levels.

    Args:
      image: integer tensor (C, H, W) with values in 0 .. source_bins - 1
      source_bins: levels of ``image``
      num_bins: levels of the result
      image_size: side length of the (square) result, or ``None`` to keep (H, W)
      nearest: resize by nearest neighbour (keeps the set of levels) instead of antialiased
        bilinear interpolation (computed in float and rounded to ``source_bins`` levels)

    Returns:
      tensor (C, image_size, image_size) of :func:`level_dtype` with values in
      0 .. num_bins - 1
    """
    if image_size is not None and image.shape[1:] != (image_size, image_size):
        x = image.unsqueeze(0).float()  # float32 holds every 16-bit level exactly
        if nearest:
            x = F.interpolate(x, size=(image_size, image_size), mode="nearest-exact")
        else:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        image = x.round().clamp(0, source_bins - 1).to(torch.int64).squeeze(0)
    if num_bins != source_bins:
        image = image.to(torch.int64)  # (2 v + 1) m overflows int32 for 16-bit data
        image = torch.div((2 * image + 1) * num_bins, 2 * source_bins, rounding_mode="floor")
    return image.to(level_dtype(num_bins))
