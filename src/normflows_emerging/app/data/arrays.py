"""Datasets of images held in memory as integer arrays."""

from __future__ import annotations

import bisect

import numpy as np
import torch
from torch.utils.data import Dataset

from .levels import bits_of, check_levels, chosen_bins, to_levels


class ArrayImageDataset(Dataset):
    """Images held in memory as integer arrays, resized and rescaled to ``num_bins`` levels on read.

    Args:
      chunks: list of integer arrays of shape (n_i, C, H, W) with values in
        0 .. source_bins - 1, read as one dataset in order (so that large datasets stored in
        several files need not be concatenated)
      labels: integer array with one label per image
      source_bins: number of intensity levels of the stored pixels (256 for 8-bit data)
      num_classes: number of distinct labels
      image_size: side length to resize to, or ``None`` to keep (H, W)
      nearest: resize by nearest neighbour (keeps the set of levels) instead of bilinear
      bits: rescale to ``2**bits`` levels (see :mod:`normflows_emerging.app.data.levels`), or
        ``None`` to keep ``source_bins``
      name: the data's name, for error messages

    Attributes:
      num_bins: levels of the images returned, ``source_bins`` or ``2**bits``
      bits: ``log2(num_bins)``, or ``None`` when ``num_bins`` is not a power of two

    Raises:
      ValueError: if the labels do not match the images, a chunk is not integer, or ``bits``
        asks for more levels than ``source_bins``; when reading, if an image has values outside
        0 .. source_bins - 1
    """

    def __init__(
        self,
        chunks: list[np.ndarray],
        labels: np.ndarray,
        source_bins: int,
        num_classes: int,
        image_size: int | None = None,
        nearest: bool = False,
        bits: int | None = None,
        name: str = "the data",
    ):
        for chunk in chunks:
            if not np.issubdtype(chunk.dtype, np.integer):
                raise ValueError(f"{name}: expected integer pixel values, got {chunk.dtype}")
        self.chunks = chunks
        self.labels = np.asarray(labels, dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(chunk) for chunk in chunks]).tolist()
        if self.offsets[-1] != len(self.labels):
            raise ValueError(f"{self.offsets[-1]} images but {len(self.labels)} labels")
        self.source_bins = source_bins
        # Only values of types wider than source_bins can fall outside; those are checked on read.
        self.needs_check = [
            chunk.dtype.kind != "u" or np.iinfo(chunk.dtype).max >= source_bins for chunk in chunks
        ]
        self.num_bins = chosen_bins(bits, source_bins, name)
        self.bits = bits_of(self.num_bins)
        self.num_classes = num_classes
        self.image_size = image_size
        self.nearest = nearest
        self.name = name

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        c = bisect.bisect_right(self.offsets, index) - 1
        image = torch.tensor(self.chunks[c][index - self.offsets[c]])
        if self.needs_check[c]:
            check_levels(image, self.source_bins, f"{self.name} image {index}")
        image = to_levels(image, self.source_bins, self.num_bins, self.image_size, self.nearest)
        return image, int(self.labels[index])
