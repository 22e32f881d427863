"""Tests of normflows_emerging.app.data on small files written in the real formats (no network)."""

import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from normflows_emerging.app.data import dataset_names, get_dataset
from optional_imports import import_or_skip

torchvision = import_or_skip("torchvision", "torchvision")
Image = pytest.importorskip("PIL.Image")

CIFAR_KEYS = {
    "batch_label",
    "labels",
    "data",
    "filenames",
    "num_cases_per_batch",
    "label_names",
    "num_vis",
}


def python2_pickle(obj, path):
    """Write ``obj`` as the CIFAR-10 files are written: a protocol-2 pickle from Python 2.

    Python 2 stored the dict keys as byte strings (opcode SHORT_BINSTRING), which load as
    ``b"data"`` with ``encoding="bytes"`` and as ``"data"`` with torchvision's
    ``encoding="latin1"``. Python 3 writes ``str`` as BINUNICODE, so those keys are rewritten.
    """
    data = pickle.dumps(obj, protocol=2)
    out, last = [], 0
    for op, arg, pos in pickletools.genops(data):
        if op.name == "BINUNICODE" and arg in CIFAR_KEYS:
            raw = arg.encode("ascii")
            out += [data[last:pos], b"U", bytes([len(raw)]), raw]
            last = pos + 5 + len(raw)
    out.append(data[last:])
    path.write_bytes(b"".join(out))


def write_cifar10(root, per_batch=4):
    """cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta; returns the data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {
            "batch_label": f"{name} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }
        python2_pickle(batch, folder / name)
        batches[name] = (data, labels)
    meta = {
        "num_cases_per_batch": per_batch,
        "label_names": [f"c{i}" for i in range(10)],
        "num_vis": 3072,
    }
    python2_pickle(meta, folder / "batches.meta")
    return batches


def write_idx(path, array):
    """An MNIST idx file: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def cifar_md5_skipped(monkeypatch):
    """torchvision checks the md5 sums of the real CIFAR-10 files, which small test files cannot
    match; for these tests only, its integrity check is replaced by an existence check."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


def test_names():
    assert dataset_names() == [
        "cifar10",
        "digits",
        "folder",
        "galaxy",
        "hubble",
        "imagenet32",
        "imagenet64",
        "mnist",
    ]


def test_bad_name_split_and_size():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10.*mnist"):
        get_dataset("cifar11", "train")
    with pytest.raises(ValueError, match=r"unknown split 'val'.*\['train', 'test'\]"):
        get_dataset("digits", "val")
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("digits", "train", image_size=0)


def test_cifar10_real_format(tmp_path, cifar_md5_skipped):
    batches = write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        keys = set(pickle.load(f, encoding="bytes"))
    assert keys == {b"batch_label", b"labels", b"data", b"filenames"}
    train = get_dataset("cifar10", "train", root=tmp_path)
    test = get_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 4)
    assert (train.num_bins, train.num_classes) == (256, 10)
    image, label = test[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    data, labels = batches["test_batch"]
    # Rows are channel-planar: 1024 red values, 1024 green, 1024 blue, each in raster order.
    assert torch.equal(image, torch.from_numpy(data[1].reshape(3, 32, 32)))
    assert label == labels[1] and isinstance(label, int)
    image, _ = train[5]  # second image of data_batch_2
    assert torch.equal(image, torch.from_numpy(batches["data_batch_2"][0][1].reshape(3, 32, 32)))
    assert get_dataset("cifar10", "test", image_size=16, root=tmp_path)[0][0].shape == (3, 16, 16)


def test_cifar10_md5_and_missing_files(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="corrupted"):  # the real md5 check is on here
        get_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*download=True"):
        get_dataset("cifar10", "train", root=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # nothing downloaded


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = {s: rng.integers(0, 256, (n, 28, 28)) for s, n in (("train", 6), ("t10k", 3))}
    labels = {s: rng.integers(0, 10, len(images[s])) for s in images}
    for s, pixels in images.items():
        write_idx(raw / f"{s}-images-idx3-ubyte", pixels)
        write_idx(raw / f"{s}-labels-idx1-ubyte", labels[s])
    train = get_dataset("mnist", "train", root=tmp_path)
    test = get_dataset("mnist", "test", root=tmp_path)
    assert (len(train), len(test), train.num_bins, train.num_classes) == (6, 3, 256, 10)
    image, label = test[2]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert torch.equal(image[0], torch.from_numpy(images["t10k"][2].astype(np.uint8)))
    assert label == labels["t10k"][2]
    assert get_dataset("mnist", "train", image_size=32, root=tmp_path)[0][0].shape == (1, 32, 32)
    with pytest.raises(FileNotFoundError, match=r"MNIST.raw.*t10k.*download=True"):
        get_dataset("mnist", "test", root=tmp_path / "empty")


def write_imagenet(root, size, batches=(1, 2, 10), per_file=3):
    """Imagenet{size}_train_npz/train_data_batch_*.npz and Imagenet{size}_val_npz/val_data.npz."""
    rng = np.random.default_rng(size)
    written = {}
    for name in [f"train_data_batch_{b}" for b in batches] + ["val_data"]:
        kind = "val" if name == "val_data" else "train"
        folder = root / f"Imagenet{size}_{kind}_npz"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.integers(0, 256, (per_file, 3 * size * size), dtype=np.uint8)
        labels = rng.integers(1, 1001, per_file).tolist()  # 1-based, stored as a list
        extra = {} if name == "val_data" else {"mean": data.mean(0)}
        np.savez(folder / f"{name}.npz", data=data, labels=labels, **extra)
        written[name] = (data, labels)
    return written


def test_imagenet32_npz(tmp_path):
    written = write_imagenet(tmp_path, 32)
    train = get_dataset("imagenet32", "train", root=tmp_path)
    test = get_dataset("imagenet32", "test", root=tmp_path)
    assert (len(train), len(test), train.num_bins, train.num_classes) == (9, 3, 256, 1000)
    image, label = train[3]  # batch 2 comes before batch 10
    data, labels = written["train_data_batch_2"]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert label == labels[0] - 1
    assert image[0, 0, 1] == data[0, 1]  # red plane first, raster order
    assert image[1, 0, 0] == data[0, 1024]  # then green
    assert image[2, 31, 31] == data[0, 3071]  # blue last
    assert train[8][1] == written["train_data_batch_10"][1][2] - 1
    assert torch.equal(test[-1][0], torch.from_numpy(written["val_data"][0][2].reshape(3, 32, 32)))
    assert get_dataset("imagenet32", "test", image_size=8, root=tmp_path)[0][0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 12288\) for ImageNet64"):
        get_dataset("imagenet64", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="val_data.npz"):
        get_dataset("imagenet64", "test", root=tmp_path / "empty")


def test_imagenet64_flat_folder(tmp_path):
    written = write_imagenet(tmp_path, 64, batches=(1,), per_file=2)
    for npz in tmp_path.glob("*/*.npz"):
        npz.rename(tmp_path / npz.name)
    train = get_dataset("imagenet64", "train", root=tmp_path)
    assert len(train) == 2 and train[1][0].shape == (3, 64, 64)
    expected = written["train_data_batch_1"][0][1].reshape(3, 64, 64)
    assert torch.equal(train[1][0], torch.from_numpy(expected))


def test_folder_with_split_and_class_folders(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(n):
                pixels = np.full((10, 14, 3), 50 * c + i, np.uint8)
                write_png(tmp_path / split / name / f"{i}.png", pixels)
    train = get_dataset("folder", "train", image_size=8, root=tmp_path)
    test = get_dataset("galaxy", "test", image_size=8, root=tmp_path)
    assert (len(train), len(test), train.num_classes, train.num_bins) == (6, 2, 2, 256)
    assert [label for _, label in train] == [0, 0, 0, 1, 1, 1]
    image, label = test[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    assert label == 1 and bool((image == 50).all())


def test_folder_hash_split_and_center_crop(tmp_path):
    stripes = np.zeros((20, 40, 3), np.uint8)
    stripes[:, 10:30] = 255  # white centre square, black sides
    for i in range(30):
        write_png(tmp_path / f"galaxy_{i:02d}.png", stripes)
    (tmp_path / "notes.txt").write_text("not an image")
    train = get_dataset("galaxy", "train", root=tmp_path)
    test = get_dataset("galaxy", "test", root=tmp_path)
    assert len(train) + len(test) == 30 and len(test) >= 1
    assert not set(train.files) & set(test.files)
    assert get_dataset("galaxy", "test", root=tmp_path).files == test.files  # deterministic
    image, label = train[0]
    assert image.shape == (3, 64, 64) and label == 0 and train.num_classes == 1
    assert bool((image == 255).all())  # centre cropped to the white square
    write_png(tmp_path / "classes" / "a.png", stripes)
    with pytest.raises(ValueError, match="class subfolders"):
        get_dataset("folder", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_dataset("folder", "train", root=tmp_path / "missing")


def test_hubble_regions_disjoint_and_deterministic():
    from skimage.data import hubble_deep_field

    full = torch.from_numpy(hubble_deep_field()).permute(2, 0, 1)
    train = get_dataset("hubble", "train")
    test = get_dataset("hubble", "test")
    assert (train.num_bins, train.num_classes) == (256, 1)
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 0
    # Patches of 32 at stride 16 in raster order: train inside columns 0..799, test 800..999.
    rows, train_cols, test_cols = (872 - 32) // 16 + 1, (800 - 32) // 16 + 1, (200 - 32) // 16 + 1
    assert (len(train), len(test)) == (rows * train_cols, rows * test_cols)
    for dataset, cols, first_column in ((train, train_cols, 0), (test, test_cols, 800)):
        for k, (patch, _) in enumerate(dataset):
            top, left = 16 * (k // cols), first_column + 16 * (k % cols)
            assert torch.equal(patch, full[:, top : top + 32, left : left + 32])
    assert 16 * (train_cols - 1) + 32 <= 800  # the last train patch ends before the test region
    assert torch.equal(get_dataset("hubble", "test")[100][0], test[100][0])
    assert get_dataset("hubble", "train", image_size=64)[0][0].shape == (3, 64, 64)


def test_digits():
    train = get_dataset("digits", "train")
    test = get_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert (train.num_bins, train.num_classes) == (17, 10)
    images = torch.stack([image for image, _ in train])
    assert images.dtype == torch.uint8 and images.shape == (1437, 1, 8, 8)
    assert images.max() == 16
    assert sorted({label for _, label in test}) == list(range(10))
    big, label = get_dataset("digits", "test", image_size=16)[0]
    small, _ = test[0]
    assert big.shape == (1, 16, 16) and label == test[0][1]
    assert torch.equal(big, small.repeat_interleave(2, 1).repeat_interleave(2, 2))  # nearest
