"""A folder of image files read with Pillow at their full bit depth."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .levels import bits_of, chosen_bins, to_levels
from .optional import import_optional

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Without train/ and test/ subfolders, a folder's images go to the test split with this
# probability, decided by a hash of the file's path relative to the root.
FOLDER_TEST_FRACTION = 0.1

# Pillow modes by how they are read: grey 8-bit (alpha dropped), grey 16-bit, colour 8-bit
# (alpha dropped; palette images count as colour).
GREY_8 = ("1", "L", "LA")
GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 32-bit int, as older Pillow reads PNGs
COLOUR_8 = ("P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")


class PixelFormat(NamedTuple):
    """How an image file stores its pixels, from its header."""

    grey: bool
    depth: int  # bits per value in the file
    readable_depth: int  # bits per value Pillow returns: 8 for 16-bit colour or grey+alpha


class ImageFileDataset(Dataset):
    """Image files read with Pillow at their full bit depth, centre cropped to a square and resized.

    8-bit files have 256 levels, 16-bit grey PNG/TIFF files (Pillow modes ``I;16``, ``I;16B``,
    ``I``) 65536. Alpha channels are dropped. When every file is grey the images have one
    channel, else three (grey files repeated). Pillow reads 16-bit colour and 16-bit grey+alpha
    files only at 8 bits (their high byte, which is exactly their 8-bit rescaling), so those need
    ``bits`` of 8 or fewer.

    Args:
      files: list of image paths
      labels: one integer label per file
      num_classes: number of distinct labels
      image_size: side length of the returned images; resized with antialiased bilinear
        interpolation at the files' own depth
      bits: rescale to ``2**bits`` levels, or ``None`` to keep the files' depth (which must then
        be the same for every file)
      other_files: files of the other split, which decide ``channels`` and ``num_bins`` together
        with ``files``, so that both splits agree

    Attributes:
      formats: the :class:`PixelFormat` of each file
      channels: 1 when every file is grey, else 3
      file_bins: levels of each file as read (list of 256 or 65536)
      num_bins: levels of the images returned
      bits: ``log2(num_bins)``

    Raises:
      MissingDependencyError: without Pillow
      ValueError: for an image mode that has no integer levels (such as ``F``), files of
        different depths with ``bits=None``, 16-bit colour files with ``bits=None``, or ``bits``
        above the depth of a file
    """

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        num_classes: int,
        image_size: int,
        bits: int | None = None,
        other_files: tuple[Path, ...] = (),
    ):
        _pillow()  # fail now, not in the middle of training
        self.files = list(files)
        self.labels = list(labels)
        self.num_classes = num_classes
        self.image_size = image_size
        self.formats = [_pixel_format(path) for path in self.files]
        all_files = self.files + list(other_files)
        formats = self.formats + [_pixel_format(path) for path in other_files]
        self.channels = 1 if all(f.grey for f in formats) else 3
        self.file_bins = [2**f.readable_depth for f in self.formats]
        if bits is None:
            depths = {f.depth: path for f, path in zip(formats, all_files)}
            if len(depths) > 1:
                examples = ", ".join(f"{path.name}: {d} bits" for d, path in sorted(depths.items()))
                raise ValueError(
                    f"the images have different bit depths ({examples}); pass bits={min(depths)} "
                    "(or fewer) to rescale them all to the same depth"
                )
            truncated = [p for f, p in zip(formats, all_files) if f.readable_depth < f.depth]
            if truncated:
                raise ValueError(
                    f"{truncated[0]} is a 16-bit colour (or grey+alpha) image, which Pillow reads "
                    "only at 8 bits: pass bits=8 (or fewer) to rescale it"
                )
        smallest = min(range(len(formats)), key=lambda i: formats[i].readable_depth)
        self.num_bins = chosen_bins(
            bits, 2 ** formats[smallest].readable_depth, str(all_files[smallest])
        )
        self.bits = bits_of(self.num_bins)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """The image (integer tensor (channels, image_size, image_size)) and label of a file.

        Raises:
          OSError: naming the file, if Pillow cannot decode it (truncated, damaged)
          ValueError: for a 32-bit integer image with values outside 0 .. 65535
        """
        path = self.files[index]
        try:
            array = self._read(path, index)
        except OSError as err:  # Pillow's messages ("image file is truncated") omit the file
            raise OSError(f"cannot read image {path}: {err}") from err
        image = torch.from_numpy(array.astype(np.int64))
        if image.shape[0] < self.channels:
            image = image.expand(self.channels, -1, -1)
        height, width = image.shape[1:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[:, top : top + side, left : left + side]
        return to_levels(
            image, self.file_bins[index], self.num_bins, self.image_size, nearest=False
        ), self.labels[index]

    def _read(self, path: Path, index: int) -> np.ndarray:
        """The decoded pixels of a file, (channels, height, width)."""
        with _pillow().open(path) as img:
            if img.mode in GREY_16:
                array = np.asarray(img).astype(np.int64)[None]
                if img.mode == "I" and (array.min() < 0 or array.max() > 65535):
                    raise ValueError(
                        f"{path}: 32-bit integer image with values {array.min()} .. "
                        f"{array.max()}, outside the 0 .. 65535 of 16-bit images"
                    )
            elif self.formats[index].grey:
                # Grey+alpha 16-bit files come as RGBA with R = G = B; "1" becomes 0 and 255.
                array = np.asarray(img.convert("RGB"))[None, :, :, 0]
            else:
                array = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        return array


def _pixel_format(path: Path) -> PixelFormat:
    """The pixel format of an image file, from its header.

    Raises:
      OSError: naming the file, if its header cannot be read
      ValueError: for a mode without integer levels
    """
    try:
        with _pillow().open(path) as img:  # reads the header only
            mode = img.mode
            tile = img.tile[0][3] if img.tile else ""  # the decoder's arguments
    except OSError as err:  # e.g. "Truncated File Read", which omits the file
        raise OSError(f"cannot read image {path}: {err}") from err
    rawmode = tile if isinstance(tile, str) else str(tile[0])
    if mode in GREY_16:
        return PixelFormat(grey=True, depth=16, readable_depth=16)
    if mode in GREY_8 + COLOUR_8:
        grey = mode in GREY_8 or rawmode.startswith(("L;", "LA;"))
        # 16 bits per value: PNG's "RGB;16B", "LA;16B", TIFF's "RGB;16L" ...
        # (not BMP's 5-6-5 "BGR;16")
        sixteen = rawmode.rsplit(";", 1)[-1] in ("16B", "16L", "16N")
        return PixelFormat(grey, depth=16 if sixteen else 8, readable_depth=8)
    raise ValueError(
        f"{path}: Pillow image mode {mode!r} has no integer intensity levels this loader "
        f"reads; expected one of {list(GREY_8 + GREY_16 + COLOUR_8)} (8- or 16-bit integers)"
    )


def _pillow():
    """Pillow's Image module, imported when used (kept off the dataset, so that it pickles)."""
    return import_optional("PIL.Image", "pillow", "reading image files")


def folder_dataset(split: str, image_size: int, root: Path, bits: int | None) -> ImageFileDataset:
    """One split of a folder of images (see :func:`normflows_emerging.app.data.get_dataset`).

    The channels and depth are decided over both splits, so that train and test images agree.

    Raises:
      FileNotFoundError: if ``root`` does not exist or the split has no images
      ValueError: if a folder has both class subfolders and loose images
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    split_dirs = all((root / s).is_dir() for s in SPLITS)
    bases = [root / s for s in SPLITS] if split_dirs else [root]
    classes = sorted({d.name for base in bases for d in base.iterdir() if _has_images(d)})
    entries = {s: _split_entries(root, s, split_dirs, classes) for s in SPLITS}
    if not entries[split]:
        how = f"subfolder {root / split}" if split_dirs else f"hash-based {split} split of {root}"
        raise FileNotFoundError(
            f"no images in the {how}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    files, labels = zip(*entries[split])
    other_files = tuple(path for s in SPLITS if s != split for path, _ in entries[s])
    return ImageFileDataset(files, labels, max(len(classes), 1), image_size, bits, other_files)


def _split_entries(
    root: Path, split: str, split_dirs: bool, classes: list[str]
) -> list[tuple[Path, int]]:
    """(path, label) of the images of one split, in sorted order."""
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
    return entries


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _has_images(directory: Path) -> bool:
    return directory.is_dir() and any(_is_image(p) for p in directory.rglob("*"))


def _in_test_split(relative_path: Path) -> bool:
    digest = hashlib.sha1(relative_path.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < FOLDER_TEST_FRACTION
