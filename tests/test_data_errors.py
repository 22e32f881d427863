"""What the user has to fix gets a one-line error naming it: a missing optional package
(MissingDependencyError, with the pip command) or missing data files (FileNotFoundError, with the
path and what was expected)."""

import sys

import numpy as np
import pytest
import torch

from normflows_emerging.app.data import ArrayImageDataset, get_dataset
from normflows_emerging.app.errors import MissingDependencyError
from optional_imports import import_or_skip


@pytest.mark.parametrize(
    "name, module, package",
    [
        ("digits", "sklearn.datasets", "scikit-learn"),
        ("hubble", "skimage.data", "scikit-image"),
        ("cifar10", "torchvision.datasets", "torchvision"),
        ("mnist", "torchvision.datasets", "torchvision"),
        ("folder", "PIL.Image", "pillow"),
        ("galaxy", "PIL.Image", "pillow"),
    ],
)
def test_missing_package(tmp_path, monkeypatch, name, module, package):
    (tmp_path / "a.png").write_bytes(b"")  # the folder needs Pillow once it has an image
    monkeypatch.setitem(sys.modules, module, None)  # import of a None entry raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        get_dataset(name, "train", root=tmp_path)
    message = str(caught.value)
    assert f"needs {package}, which is not installed: pip install {package} " in message
    # a command that works from a clone and a wheel (the package is on no index: issue 24)
    assert message.endswith(
        "(or, for every dataset: pip install torchvision scikit-learn scikit-image pillow)"
    )
    assert "\n" not in message and isinstance(caught.value, ImportError)


def test_missing_files(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"no images in the subfolder .*train: expected "
        r"files ending in \.jpg",
    ):
        (tmp_path / "train").mkdir(), (tmp_path / "test").mkdir()
        get_dataset("folder", "train", root=tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no images in the hash-based test split of .*other"
    ):
        get_dataset("galaxy", "test", root=tmp_path / "other")
    with pytest.raises(
        FileNotFoundError,
        match=r"no downsampled ImageNet32 files "
        r"train_data_batch_\*.npz in .*missing",
    ):
        get_dataset("imagenet32", "train", root=tmp_path / "missing")
    import_or_skip("torchvision", "torchvision")
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py: expected data_batch_1"):
        get_dataset("cifar10", "test", root=tmp_path / "missing")


def test_array_values_outside_the_levels():
    images = np.zeros((2, 1, 3, 3), np.int64)
    images[1, 0, 2, 2] = 17
    data = ArrayImageDataset([images], [0, 1], 17, 2, name="digits")
    assert int(data[0][0].max()) == 0
    with pytest.raises(ValueError, match="digits image 1 has values 0 .. 17, outside the 0 .. 16"):
        data[1]
    with pytest.raises(ValueError, match="integer pixel values, got float32"):
        ArrayImageDataset([images.astype(np.float32)], [0, 1], 17, 2)


def test_imagenet_values_beyond_8_bits(tmp_path):
    data = np.zeros((2, 3 * 32 * 32), np.int64)  # a re-saved file with a wider dtype
    data[1, 5] = 256
    np.savez(tmp_path / "val_data.npz", data=data, labels=[1, 2])
    dataset = get_dataset("imagenet32", "test", root=tmp_path)
    assert dataset[0][0].dtype == torch.uint8
    with pytest.raises(
        ValueError,
        match="ImageNet32 image 1 has values 0 .. 256, outside the 0 .. 255 of its 256 levels",
    ):
        dataset[1]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_named(tmp_path, suffix):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / f"{i}{suffix}")
    bad = tmp_path / "train" / f"1{suffix}"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    # Cut in the pixels (PNG), the error comes on reading the image; in the header (this JPEG,
    # whose tables fill its first half), when the dataset is built.
    with pytest.raises(OSError, match=rf"cannot read image {tmp_path / 'train'}.1\{suffix}: "):
        data = get_dataset("folder", "train", 8, root=tmp_path)
        assert data[0][0].shape == (3, 8, 8)
        data[1]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", None])
def test_a_damaged_imagenet_file_is_named(tmp_path, content):
    path = tmp_path / "val_data.npz"
    if content is None:  # a valid .npz without the expected keys
        np.savez(path, images=np.zeros((1, 3 * 32 * 32), np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(OSError, match=f"cannot read {path} as an ImageNet32 .npz file"):
        get_dataset("imagenet32", "test", root=tmp_path)
