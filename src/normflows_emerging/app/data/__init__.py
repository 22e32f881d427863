"""Image datasets for training and evaluating flows, at a stated bit depth.

Every dataset returned by :func:`get_dataset` yields ``(image, label)`` pairs where ``image`` is an
integer tensor of shape (channels, height, width) holding intensity levels ``0 .. num_bins - 1``
(``torch.uint8`` for up to 256 levels, else ``torch.int32``) and ``label`` is an ``int``. Each
dataset object also carries

* ``num_bins``: the number of intensity levels, which is what uniform dequantisation and
  bits/dim must use: the data's own levels (256 for 8-bit images, 65536 for 16-bit PNG/TIFF
  files, 17 for ``digits``) or ``2**bits`` when ``bits`` is given;
* ``bits``: ``log2(num_bins)``, or ``None`` when ``num_bins`` is not a power of two (``digits``);
* ``num_classes``: the number of distinct labels (1 for unlabelled data).

Names (see :func:`dataset_names`):

* ``cifar10``, ``mnist``: torchvision's readers, downloaded only with ``download=True``.
* ``imagenet32``, ``imagenet64``: downsampled ImageNet, read from its ``.npz`` files
  (``train_data_batch_1.npz`` ... and ``val_data.npz``; the validation set is the test split).
* ``folder``, ``galaxy``: a folder of images (e.g. the galaxy images used in the paper), read at
  their full depth (8 bits, or 16 bits for 16-bit grey PNG/TIFF), centre cropped to a square and
  resized. Alpha channels are dropped; the images have one channel when every file is grey
  (palette files count as colour), else three. See :class:`ImageFileDataset`.
* ``hubble``: patches of scikit-image's bundled Hubble Deep Field image, train patches from the
  left of the image and test patches from the right; works offline.
* ``digits``: scikit-learn's bundled 8x8 digits, with 17 grey levels.

The test split never shares an image with the train split. When ``root`` is not given, files are
looked for in ``data/<name>`` below the working directory. torchvision, Pillow, scikit-learn and
scikit-image are imported only by the datasets that use them (the ``data`` extra installs them
all: ``pip install ".[data]"`` from a clone).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .arrays import ArrayImageDataset
from .folder import FOLDER_TEST_FRACTION, SPLITS, ImageFileDataset, folder_dataset
from .levels import check_bits
from .sources import (
    DIGITS_TEST_EVERY,
    HUBBLE_TRAIN_FRACTION,
    digits,
    hubble,
    imagenet,
    torchvision_dataset,
)

__all__ = [
    "DIGITS_TEST_EVERY",
    "FOLDER_TEST_FRACTION",
    "HUBBLE_TRAIN_FRACTION",
    "SPLITS",
    "ArrayImageDataset",
    "ImageFileDataset",
    "dataset_names",
    "get_dataset",
]

_NAMES = ("cifar10", "digits", "folder", "galaxy", "hubble", "imagenet32", "imagenet64", "mnist")


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_dataset`.

    Returns:
      sorted list of dataset names
    """
    return sorted(_NAMES)


def get_dataset(
    name: str,
    split: str,
    image_size: int | None = None,
    root: str | Path | None = None,
    download: bool = False,
    bits: int | None = None,
) -> Dataset:
    """Load one split of a dataset.

    Args:
      name: dataset name, one of :func:`dataset_names`
      split: ``"train"`` or ``"test"``
      image_size: side length of the (square) images returned. ``None`` keeps the native size of
        ``cifar10`` (32), ``mnist`` (28), ``imagenet32``/``imagenet64`` and ``digits`` (8), and
        means 64 for ``folder``/``galaxy`` and 32 for ``hubble``. For ``hubble`` it is the patch
        size; ``digits`` are upsampled by nearest neighbour, so they keep their levels;
        everything else is resized with antialiased bilinear interpolation at the data's own
        depth (nothing is clipped).
      root: directory holding the files (default ``data/<name>``): torchvision's root for
        ``cifar10`` (containing ``cifar-10-batches-py``) and ``mnist`` (containing
        ``MNIST/raw``); the directory of the ``.npz`` files, or a directory with them in
        subfolders (such as ``Imagenet32_train_npz``), for ``imagenet32``/``imagenet64``; the
        image folder for ``folder``/``galaxy``. Unused by ``hubble`` and ``digits``.
      download: let torchvision download ``cifar10``/``mnist`` into ``root`` when missing.
        The other datasets are bundled with their libraries or must be placed in ``root``.
      bits: ``None`` keeps the data's own levels (``num_bins`` 256 for 8-bit data, 65536 for
        16-bit image files, 17 for ``digits``); an int from 1 to 16 rescales them to
        ``2**bits`` levels, ``floor((v + 1/2) 2**bits / levels)`` (for 8-bit data
        ``v >> (8 - bits)``, as in the paper's 5-bit runs). It may not exceed the data's depth
        (at most 4 for ``digits``).

    Returns:
      a :class:`torch.utils.data.Dataset` of ``(integer tensor C x H x W, int label)`` with
      ``num_bins``, ``bits`` and ``num_classes`` attributes

    Raises:
      ValueError: for an unknown name or split, a bad ``image_size`` or ``bits``, or image files
        whose depths do not fit ``bits``
      TypeError: for a ``bits`` that is not an int
      FileNotFoundError: when the dataset's files are not where they are expected
      MissingDependencyError: when the package that reads the dataset is not installed
    """
    if name not in _NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    check_bits(bits)
    root = Path("data", name) if root is None else Path(root)
    if name == "cifar10":
        return torchvision_dataset("CIFAR10", split, image_size, root, download, bits)
    if name == "mnist":
        return torchvision_dataset("MNIST", split, image_size, root, download, bits)
    if name in ("imagenet32", "imagenet64"):
        return imagenet(int(name[len("imagenet") :]), split, image_size, root, bits)
    if name in ("folder", "galaxy"):
        return folder_dataset(split, 64 if image_size is None else image_size, root, bits)
    if name == "hubble":
        return hubble(split, 32 if image_size is None else image_size, bits)
    return digits(split, image_size, bits)
