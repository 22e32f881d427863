"""Held-out honesty: the test split of every bundled or folder dataset shares no image with its
train split, and together they hold all the data."""

import numpy as np
import pytest

from normflows_emerging.app.data import get_dataset

Image = pytest.importorskip("PIL.Image")


def contents(dataset):
    return [image.numpy().tobytes() for image, _ in dataset]


def test_digits_splits_disjoint_and_complete():
    from sklearn.datasets import load_digits

    everything = sorted(image.tobytes() for image in load_digits().images.astype(np.uint8))
    train, test = contents(get_dataset("digits", "train")), contents(get_dataset("digits", "test"))
    assert not set(train) & set(test)
    assert sorted(train + test) == everything


def test_hubble_splits_disjoint():
    train = set(contents(get_dataset("hubble", "train", image_size=16)))
    test = contents(get_dataset("hubble", "test", image_size=16))
    assert len(test) > 100 and not train & set(test)


def test_folder_hash_split_disjoint_and_complete(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (4, 4), np.uint8)).save(tmp_path / f"{i:02d}.png")
    train = get_dataset("folder", "train", image_size=4, root=tmp_path)
    test = get_dataset("folder", "test", image_size=4, root=tmp_path)
    assert len(test) >= 1 and not set(train.files) & set(test.files)
    assert sorted(train.files + test.files) == sorted(tmp_path.glob("*.png"))
    assert not set(contents(train)) & set(contents(test))
