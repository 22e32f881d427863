"""Loaders of the array datasets: torchvision's CIFAR-10 and MNIST, downsampled ImageNet, and the
Hubble Deep Field and digits images bundled with scikit-image and scikit-learn."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from .arrays import ArrayImageDataset
from .optional import import_optional

# Fraction of the Hubble image's width (from the left) that train patches are cut from.
HUBBLE_TRAIN_FRACTION = 0.8
# Every DIGITS_TEST_EVERY-th digit (by index in scikit-learn's order) is in the test split.
DIGITS_TEST_EVERY = 5
# scikit-learn's digits are counts of 0 .. 16 set pixels in 4 x 4 blocks.
DIGITS_LEVELS = 17


def torchvision_dataset(
    class_name: str,
    split: str,
    image_size: int | None,
    root: Path,
    download: bool,
    bits: int | None,
) -> ArrayImageDataset:
    """torchvision's ``CIFAR10`` or ``MNIST``, 8 bits per value.

    Raises:
      MissingDependencyError: without torchvision
      FileNotFoundError: when the files are missing or corrupted and ``download`` is false
      OSError: when ``download`` is true and the download fails (no network, say); what the
        attempt created in ``root`` is removed again
    """
    datasets = import_optional("torchvision.datasets", "torchvision", f"the {class_name} dataset")
    cls = getattr(datasets, class_name)
    if class_name == "CIFAR10":
        where = root / "cifar-10-batches-py"
        files = "data_batch_1 .. data_batch_5, test_batch and batches.meta"
    else:
        where = root / "MNIST" / "raw"
        files = "{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte"
    created = _Created(root)
    try:
        tv = cls(root=str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"{class_name} not found (or corrupted) in {where}: expected {files} there. "
            f"Pass --download (download=True) to download it into {root}. (torchvision: {err})"
        ) from err
    except OSError as err:  # urllib's URLError, a refused connection, a full disk ...
        if not download:
            raise
        created.remove()
        reason = getattr(err, "reason", None) or err
        raise OSError(
            f"downloading {class_name} into {root} failed ({reason}); check the network "
            f"connection and retry, or put the files there yourself ({files} in {where})"
        ) from err
    data = np.asarray(tv.data)
    if data.ndim == 3:  # MNIST: N x H x W
        data = data[:, None]
    else:  # CIFAR-10: N x H x W x C
        data = data.transpose(0, 3, 1, 2)
    return ArrayImageDataset(
        [data], np.asarray(tv.targets), 256, len(tv.classes), image_size, bits=bits, name=class_name
    )


class _Created:
    """What a download adds below ``root``, to remove it when the download fails: ``root``
    itself if it did not exist, else the entries that were not there before."""

    def __init__(self, root: Path):
        self.root = root
        self.before = set(root.iterdir()) if root.is_dir() else None

    def remove(self) -> None:
        if self.before is None:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for path in set(self.root.iterdir()) - self.before if self.root.is_dir() else ():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def imagenet(
    size: int, split: str, image_size: int | None, root: Path, bits: int | None
) -> ArrayImageDataset:
    """Downsampled ImageNet (32 or 64) from its ``.npz`` files, 8 bits per value.

    Raises:
      FileNotFoundError: when there are no ``.npz`` files of the split in ``root``
      OSError: naming the file, when one cannot be read (truncated, damaged, keys missing)
      ValueError: when a file's ``data`` has the wrong shape
    """
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data.npz"
    files = sorted(root.glob(pattern)) + sorted(root.glob(f"*/{pattern}"))
    if not files:
        raise FileNotFoundError(
            f"no downsampled ImageNet{size} files {pattern} in {root} or its subfolders. "
            f"Download Imagenet{size}_train_npz / Imagenet{size}_val_npz from "
            "https://image-net.org/download-images (needs a login) and unpack them there."
        )
    if split == "train":
        files.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    chunks, labels = [], []
    for path in files:
        try:
            with np.load(path) as npz:
                data, file_labels = npz["data"], npz["labels"]
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
            # numpy's messages (e.g. "File is not a zip file") omit the file
            raise OSError(
                f"cannot read {path} as an ImageNet{size} .npz file with 'data' and 'labels': {err}"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3 * size * size:
            raise ValueError(
                f"{path}: expected 'data' of shape (N, {3 * size * size}) for ImageNet{size}, "
                f"got {data.shape}"
            )
        # Rows are channel-planar: all red values, then green, then blue, each row-major.
        chunks.append(data.reshape(-1, 3, size, size))
        labels.append(np.asarray(file_labels, dtype=np.int64) - 1)  # stored 1-based
    return ArrayImageDataset(
        chunks, np.concatenate(labels), 256, 1000, image_size, bits=bits, name=f"ImageNet{size}"
    )


def hubble(split: str, patch_size: int, bits: int | None) -> ArrayImageDataset:
    """Patches of the Hubble Deep Field: train from the left of the image, test from the right.

    Raises:
      MissingDependencyError: without scikit-image
      ValueError: when the patches do not fit the split's region, or the image is not 8-bit
    """
    data = import_optional("skimage.data", "scikit-image", "the hubble dataset")
    image = data.hubble_deep_field()  # H x W x 3
    if image.dtype != np.uint8:
        raise ValueError(f"expected scikit-image's Hubble Deep Field as uint8, got {image.dtype}")
    boundary = round(HUBBLE_TRAIN_FRACTION * image.shape[1])
    region = image[:, :boundary] if split == "train" else image[:, boundary:]
    if patch_size > min(region.shape[:2]):
        raise ValueError(
            f"hubble patches of size {patch_size} do not fit the {split} region "
            f"({region.shape[0]} x {region.shape[1]} pixels)"
        )
    stride = max(patch_size // 2, 1)
    # windows[i, j] is the patch with top-left corner (i * stride, j * stride), shape 3 x P x P.
    windows = np.lib.stride_tricks.sliding_window_view(region, (patch_size, patch_size), (0, 1))
    patches = windows[::stride, ::stride].reshape(-1, 3, patch_size, patch_size)
    return ArrayImageDataset([patches], np.zeros(len(patches)), 256, 1, bits=bits, name="hubble")


def digits(split: str, image_size: int | None, bits: int | None) -> ArrayImageDataset:
    """scikit-learn's 8 x 8 digits with 17 levels, every 5th in the test split.

    Raises:
      MissingDependencyError: without scikit-learn
    """
    loaded = import_optional("sklearn.datasets", "scikit-learn", "the digits dataset").load_digits()
    test = np.arange(len(loaded.target)) % DIGITS_TEST_EVERY == 0
    keep = test if split == "test" else ~test
    images = loaded.images[keep]  # float64 counts 0 .. 16
    if not np.array_equal(images, np.round(images)):
        raise ValueError("expected scikit-learn's digits to be whole numbers 0 .. 16")
    return ArrayImageDataset(
        [images.astype(np.int64)[:, None]],
        loaded.target[keep],
        DIGITS_LEVELS,
        10,
        image_size,
        nearest=True,
        bits=bits,
        name="digits",
    )
