"""Image datasets for training and evaluating flows.

Every dataset returned by :func:`get_dataset` yields ``(image, label)`` pairs where ``image`` is a
``torch.uint8`` tensor of shape (channels, height, width) holding integer intensity levels
``0 .. num_bins - 1`` and ``label`` is an ``int``. Each dataset object also carries

* ``num_bins``: the number of intensity levels (256 for 8-bit images, 17 for ``digits``), which
  is what uniform dequantisation and bits/dim must use;
* ``num_classes``: the number of distinct labels (1 for unlabelled data).

Names (see :func:`dataset_names`):

* ``cifar10``, ``mnist``: torchvision's readers, downloaded only with ``download=True``.
* ``imagenet32``, ``imagenet64``: downsampled ImageNet, read from its ``.npz`` files
  (``train_data_batch_1.npz`` ... and ``val_data.npz``; the validation set is the test split).
* ``folder``, ``galaxy``: a folder of images (e.g. the galaxy images used in the paper), centre
  cropped to a square and resized.
* ``hubble``: patches of scikit-image's bundled Hubble Deep Field image, train patches from the
  left of the image and test patches from the right; works offline.
* ``digits``: scikit-learn's bundled 8x8 digits, with 17 grey levels.

When ``root`` is not given, files are looked for in ``data/<name>`` below the working directory.
torchvision, Pillow, scikit-learn and scikit-image are imported only by the datasets that use them
(``pip install normflows-emerging[data]`` installs them all).
"""

import bisect
import hashlib
import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLITS = ("train", "test")

_NUM_BINS = {
    "cifar10": 256,
    "digits": 17,
    "folder": 256,
    "galaxy": 256,
    "hubble": 256,
    "imagenet32": 256,
    "imagenet64": 256,
    "mnist": 256,
}

# Fraction of the Hubble image's width (from the left) that train patches are cut from.
HUBBLE_TRAIN_FRACTION = 0.8
# Every DIGITS_TEST_EVERY-th digit (by index in scikit-learn's order) is in the test split.
DIGITS_TEST_EVERY = 5
# Without train/ and test/ subfolders, a folder's images go to the test split with this
# probability, decided by a hash of the file's path relative to the root.
FOLDER_TEST_FRACTION = 0.1


def dataset_names():
    """Names accepted by :func:`get_dataset`.

    Returns:
      sorted list of dataset names
    """
    return sorted(_NUM_BINS)


def num_bins(name):
    """Number of intensity levels of a dataset's pixels.

    Args:
      name: dataset name, one of :func:`dataset_names`

    Returns:
      256 for 8-bit image data, 17 for ``digits`` (values 0 .. 16)
    """
    _check_name(name)
    return _NUM_BINS[name]


def get_dataset(name, split, image_size=None, root=None, download=False):
    """Load one split of a dataset.

    Args:
      name: dataset name, one of :func:`dataset_names`
      split: ``"train"`` or ``"test"``
      image_size: side length of the (square) images returned. ``None`` keeps the native size of
        ``cifar10`` (32), ``mnist`` (28), ``imagenet32``/``imagenet64`` and ``digits`` (8), and
        means 64 for ``folder``/``galaxy`` and 32 for ``hubble``. For ``hubble`` it is the patch
        size; ``digits`` are upsampled by nearest neighbour, so they keep their 17 levels;
        everything else is resized with antialiased bilinear interpolation.
      root: directory holding the files (default ``data/<name>``): torchvision's root for
        ``cifar10`` (containing ``cifar-10-batches-py``) and ``mnist`` (containing
        ``MNIST/raw``); the directory of the ``.npz`` files, or a directory with them in
        subfolders (such as ``Imagenet32_train_npz``), for ``imagenet32``/``imagenet64``; the
        image folder for ``folder``/``galaxy``. Unused by ``hubble`` and ``digits``.
      download: let torchvision download ``cifar10``/``mnist`` into ``root`` when missing.
        The other datasets are bundled with their libraries or must be placed in ``root``.

    Returns:
      a :class:`torch.utils.data.Dataset` of ``(uint8 tensor C x H x W, int label)`` with
      ``num_bins`` and ``num_classes`` attributes

    Raises:
      ValueError: for an unknown name or split, or a bad ``image_size``
      FileNotFoundError: when the dataset's files are not where they are expected
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    root = Path("data", name) if root is None else Path(root)
    if name == "cifar10":
        return _torchvision_dataset("CIFAR10", split, image_size, root, download)
    if name == "mnist":
        return _torchvision_dataset("MNIST", split, image_size, root, download)
    if name in ("imagenet32", "imagenet64"):
        return _imagenet(int(name[len("imagenet"):]), split, image_size, root)
    if name in ("folder", "galaxy"):
        return _folder(split, 64 if image_size is None else image_size, root)
    if name == "hubble":
        return _hubble(split, 32 if image_size is None else image_size)
    return _digits(split, image_size)


class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 arrays, optionally resized when read.

    Args:
      chunks: list of uint8 arrays of shape (n_i, C, H, W), read as one dataset in order (so
        that large datasets stored in several files need not be concatenated)
      labels: integer array with one label per image
      num_bins: number of intensity levels of the pixels
      num_classes: number of distinct labels
      image_size: side length to resize to, or ``None`` to keep (H, W)
      nearest: resize by nearest neighbour (keeps the set of levels) instead of bilinear
    """

    def __init__(self, chunks, labels, num_bins, num_classes, image_size=None, nearest=False):
        self.chunks = chunks
        self.labels = np.asarray(labels, dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(chunk) for chunk in chunks]).tolist()
        if self.offsets[-1] != len(self.labels):
            raise ValueError(f"{self.offsets[-1]} images but {len(self.labels)} labels")
        self.num_bins = num_bins
        self.num_classes = num_classes
        self.image_size = image_size
        self.nearest = nearest

    def __len__(self):
        return self.offsets[-1]

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        c = bisect.bisect_right(self.offsets, index) - 1
        image = torch.tensor(self.chunks[c][index - self.offsets[c]])
        if self.image_size is not None:
            image = _resize(image, self.image_size, self.nearest)
        return image, int(self.labels[index])


class ImageFileDataset(Dataset):
    """Image files read with Pillow as RGB, centre cropped to a square and resized.

    Args:
      files: list of image paths
      labels: one integer label per file
      num_classes: number of distinct labels
      image_size: side length of the returned images
    """

    num_bins = 256

    def __init__(self, files, labels, num_classes, image_size):
        self.files = list(files)
        self.labels = list(labels)
        self.num_classes = num_classes
        self.image_size = image_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        image_module = _import("PIL.Image", "pillow")
        with image_module.open(self.files[index]) as img:
            array = np.asarray(img.convert("RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        height, width = image.shape[1:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[:, top : top + side, left : left + side]
        return _resize(image, self.image_size, nearest=False), self.labels[index]


def _check_name(name):
    if name not in _NUM_BINS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()}")


def _import(module, package):
    """Import an optional dependency, naming the package to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this dataset needs {package}: pip install {package} "
            "(or pip install normflows-emerging[data])"
        ) from err


def _resize(image, size, nearest):
    """Resize a uint8 C x H x W image to C x size x size."""
    if image.shape[1:] == (size, size):
        return image
    x = image.unsqueeze(0).float()
    if nearest:
        x = F.interpolate(x, size=(size, size), mode="nearest-exact")
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).squeeze(0)


def _torchvision_dataset(class_name, split, image_size, root, download):
    datasets = _import("torchvision.datasets", "torchvision")
    cls = getattr(datasets, class_name)
    try:
        tv = cls(root=str(root), train=split == "train", download=download)
    except RuntimeError as err:
        if class_name == "CIFAR10":
            where = root / "cifar-10-batches-py"
            files = "data_batch_1 .. data_batch_5, test_batch and batches.meta"
        else:
            where = root / "MNIST" / "raw"
            files = "{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte"
        raise FileNotFoundError(
            f"{class_name} not found (or corrupted) in {where}: expected {files} there. "
            f"Pass download=True to download it into {root}. (torchvision: {err})"
        ) from err
    data = np.asarray(tv.data)
    if data.ndim == 3:  # MNIST: N x H x W
        data = data[:, None]
    else:  # CIFAR-10: N x H x W x C
        data = data.transpose(0, 3, 1, 2)
    return ArrayImageDataset([data], np.asarray(tv.targets), 256, len(tv.classes), image_size)


def _imagenet(size, split, image_size, root):
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
        with np.load(path) as npz:
            data, file_labels = npz["data"], npz["labels"]
        if data.ndim != 2 or data.shape[1] != 3 * size * size:
            raise ValueError(
                f"{path}: expected 'data' of shape (N, {3 * size * size}) for ImageNet{size}, "
                f"got {data.shape}"
            )
        # Rows are channel-planar: all red values, then green, then blue, each row-major.
        chunks.append(data.reshape(-1, 3, size, size))
        labels.append(np.asarray(file_labels, dtype=np.int64) - 1)  # stored 1-based
    return ArrayImageDataset(chunks, np.concatenate(labels), 256, 1000, image_size)


def _folder(split, image_size, root):
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    split_dirs = all((root / s).is_dir() for s in SPLITS)
    bases = [root / s for s in SPLITS] if split_dirs else [root]
    classes = sorted({d.name for base in bases for d in base.iterdir() if _has_images(d)})
    base = root / split if split_dirs else root
    if classes:
        loose = [p for p in base.iterdir() if _is_image(p)]
        if loose:
            raise ValueError(
                f"{base} has both class subfolders {classes} and loose images such as "
                f"{loose[0].name}; put every image in a class subfolder or none"
            )
        entries = [
            (path, label)
            for label, name in enumerate(classes)
            if (base / name).is_dir()
            for path in sorted((base / name).rglob("*"))
            if _is_image(path)
        ]
    else:
        entries = [(path, 0) for path in sorted(base.iterdir()) if _is_image(path)]
    if not split_dirs:
        want_test = split == "test"
        entries = [e for e in entries if _in_test_split(e[0].relative_to(root)) == want_test]
    if not entries:
        how = f"subfolder {base}" if split_dirs else f"hash-based {split} split of {root}"
        raise ValueError(f"no images in the {how}")
    files, labels = zip(*entries)
    return ImageFileDataset(files, labels, max(len(classes), 1), image_size)


def _is_image(path):
    extensions = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
    return path.is_file() and path.suffix.lower() in extensions


def _has_images(directory):
    return directory.is_dir() and any(_is_image(p) for p in directory.rglob("*"))


def _in_test_split(relative_path):
    digest = hashlib.sha1(relative_path.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < FOLDER_TEST_FRACTION


def _hubble(split, patch_size):
    image = _import("skimage.data", "scikit-image").hubble_deep_field()  # H x W x 3 uint8
    height, width = image.shape[:2]
    boundary = round(HUBBLE_TRAIN_FRACTION * width)
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
    return ArrayImageDataset([patches], np.zeros(len(patches)), 256, 1)


def _digits(split, image_size):
    digits = _import("sklearn.datasets", "scikit-learn").load_digits()
    test = np.arange(len(digits.target)) % DIGITS_TEST_EVERY == 0
    keep = test if split == "test" else ~test
    images = digits.images[keep].astype(np.uint8)[:, None]  # N x 1 x 8 x 8, values 0 .. 16
    return ArrayImageDataset([images], digits.target[keep], 17, 10, image_size, nearest=True)
