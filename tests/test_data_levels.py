"""Intensity levels: every dataset yields exactly the levels its ``num_bins`` says, for every image
mode read from real files, at the data's own depth or rescaled with ``bits``."""

import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normflows_emerging.app.data import get_dataset
from normflows_emerging.app.data.levels import to_levels
from optional_imports import import_or_skip

Image = pytest.importorskip("PIL.Image")
SIDE = 6  # images are SIDE x SIDE and loaded at image_size=SIDE, so nothing is resized


def ramp(high, shape=(SIDE, SIDE), dtype=np.int64):
    """Values spread evenly over 0 .. high, both ends included."""
    return np.linspace(0, high, int(np.prod(shape))).round().astype(dtype).reshape(shape)


def write_png16(path, array, color_type):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): 2 = RGB, 4 = grey+alpha."""
    height, width = array.shape[:2]
    rows = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def folder(tmp_path, images, **kwargs):
    """The train split of a folder whose train/ and test/ both hold ``images`` (file name ->
    Pillow image or writer function), as a dataset of SIDE x SIDE images."""
    for split in ("train", "test"):
        (tmp_path / split).mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            if callable(image):
                image(tmp_path / split / name)
            else:
                image.save(tmp_path / split / name)
    return get_dataset("folder", "train", image_size=SIDE, root=tmp_path, **kwargs)


def chw(array):
    return torch.from_numpy(np.asarray(array, np.int64)).permute(2, 0, 1)


GREY8 = ramp(255)
RGB8 = np.stack([ramp(255), ramp(255)[::-1], ramp(255).T], axis=-1)
GREY16 = ramp(65535)


def test_16bit_grey_png_kept_at_full_depth(tmp_path):
    """The reported fault: this came out with 2 grey levels while num_bins said 256."""
    data = folder(tmp_path, {"a.png": Image.fromarray(GREY16.astype(np.uint16))})
    image, _ = data[0]
    assert len(image.unique()) == SIDE * SIDE and data.num_bins == 65536
    assert torch.equal(image[0].long(), torch.from_numpy(GREY16))
    assert image.dtype == torch.int32 and image.shape == (1, SIDE, SIDE)
    assert (data.bits, data.channels) == (16, 1)


@pytest.mark.parametrize("bits", [8, 5, 1])
def test_16bit_grey_rescaled_not_clipped(tmp_path, bits):
    data = folder(tmp_path, {"a.png": Image.fromarray(GREY16.astype(np.uint16))}, bits=bits)
    image, _ = data[0]
    assert (data.num_bins, data.bits) == (2**bits, bits) and image.dtype == torch.uint8
    assert torch.equal(image[0].long(), torch.from_numpy(GREY16 >> (16 - bits)))
    assert (int(image.min()), int(image.max())) == (0, 2**bits - 1)  # the whole range, unclipped


@pytest.mark.parametrize(
    "file_name, make",
    [
        ("a.tif", lambda: Image.fromarray(GREY16.astype(np.uint16))),  # I;16
        ("a.tif", lambda: Image.fromarray(GREY16.astype(">u2"))),  # I;16B
        ("a.tif", lambda: Image.fromarray(GREY16.astype(np.int32))),  # I, 32-bit
    ],
    ids=["I;16 tiff", "I;16B tiff", "I tiff"],
)
def test_16bit_grey_tiff_modes(tmp_path, file_name, make):
    image = make()
    data = folder(tmp_path, {file_name: image})
    with Image.open(tmp_path / "train" / file_name) as read:
        assert read.mode == image.mode  # the mode under test is what Pillow reads back
    assert (data.num_bins, data.channels) == (65536, 1)
    assert torch.equal(data[0][0][0].long(), torch.from_numpy(GREY16))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.fromarray(GREY8.astype(np.uint8)), GREY8[None]),
        (
            lambda: Image.fromarray(np.stack([GREY8, 255 - GREY8], -1).astype(np.uint8), "LA"),
            GREY8[None],
        ),  # alpha dropped
        (lambda: Image.fromarray(GREY8 > 100), 255 * (GREY8[None] > 100)),  # mode "1"
    ],
    ids=["L", "LA", "1"],
)
def test_8bit_grey_modes_keep_one_channel(tmp_path, make, expected):
    data = folder(tmp_path, {"a.png": make()})
    image, _ = data[0]
    assert (data.num_bins, data.bits, data.channels) == (256, 8, 1)
    assert image.dtype == torch.uint8 and torch.equal(image.long(), torch.from_numpy(expected))


def test_8bit_colour_modes(tmp_path):
    alpha = np.full((SIDE, SIDE, 1), 7, np.uint8)
    palette = Image.fromarray(RGB8.astype(np.uint8)).quantize(colors=16)
    images = {
        "a_rgb.png": Image.fromarray(RGB8.astype(np.uint8)),
        "b_rgba.png": Image.fromarray(np.concatenate([RGB8.astype(np.uint8), alpha], -1)),
        "c_palette.png": palette,
        "d_grey.png": Image.fromarray(GREY8.astype(np.uint8)),
    }
    data = folder(tmp_path, images)
    assert (data.num_bins, data.channels, len(data)) == (256, 3, 4)
    assert torch.equal(data[0][0].long(), chw(RGB8))
    assert torch.equal(data[1][0].long(), chw(RGB8))  # alpha dropped
    lookup = np.asarray(palette.getpalette(), np.int64).reshape(-1, 3)
    assert torch.equal(data[2][0].long(), chw(lookup[np.asarray(palette)]))
    assert torch.equal(data[3][0].long(), torch.from_numpy(GREY8).expand(3, -1, -1))  # repeated
    copy = pickle.loads(pickle.dumps(data))  # as DataLoader workers started by spawn get it
    assert torch.equal(copy[2][0], data[2][0])


def test_16bit_colour_png_needs_bits(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 65536, (SIDE, SIDE, 3))
    with pytest.raises(ValueError, match="16-bit colour.*only at 8 bits.*bits=8"):
        folder(tmp_path, {"a.png": lambda p: write_png16(p, rgb, 2)})
    for bits in (8, 3):
        data = folder(tmp_path, {"a.png": lambda p: write_png16(p, rgb, 2)}, bits=bits)
        assert (data.num_bins, data.channels) == (2**bits, 3)
        assert torch.equal(data[0][0].long(), chw(rgb >> (16 - bits)))
    with pytest.raises(ValueError, match="bits=9 is more than .*a.png has: 256 levels"):
        folder(tmp_path, {"a.png": lambda p: write_png16(p, rgb, 2)}, bits=9)


def write_bmp565(path, pixels):
    """A 16-bit-per-pixel BMP with 5-6-5 bit colour (BI_BITFIELDS), whose values are 8-bit."""
    height, width = pixels.shape
    data = pixels[::-1].astype("<u2").tobytes()  # rows bottom-up; 2 * width must divide by 4
    offset = 14 + 40 + 12
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(data), 2835, 2835, 0, 0)
    path.write_bytes(header + info + struct.pack("<III", 0xF800, 0x07E0, 0x001F) + data)


def test_16bit_per_pixel_bmp_is_8bit_colour(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (SIDE, SIDE))
    data = folder(tmp_path, {"a.bmp": lambda p: write_bmp565(p, pixels)})
    with Image.open(tmp_path / "train" / "a.bmp") as img:
        assert img.tile[0][3][0] == "BGR;16"  # the 16 is bits per pixel, not per value
        expected = chw(np.asarray(img.convert("RGB")))
    assert (data.num_bins, data.channels) == (256, 3)
    assert torch.equal(data[0][0].long(), expected)


def test_16bit_grey_alpha_png_is_grey(tmp_path):
    grey_alpha = np.stack([GREY16, GREY16[::-1]], axis=-1)
    data = folder(tmp_path, {"a.png": lambda p: write_png16(p, grey_alpha, 4)}, bits=6)
    assert (data.num_bins, data.channels) == (64, 1)
    assert torch.equal(data[0][0][0].long(), torch.from_numpy(GREY16 >> 10))


def test_mixed_depths_need_bits(tmp_path):
    images = {
        "a.png": Image.fromarray(GREY8.astype(np.uint8)),
        "b.png": Image.fromarray(GREY16.astype(np.uint16)),
    }
    with pytest.raises(ValueError, match=r"different bit depths \(a.png: 8 bits, b.png: 16 bits"):
        folder(tmp_path, images)
    data = folder(tmp_path, images, bits=8)
    assert torch.equal(data[0][0][0].long(), torch.from_numpy(GREY8))
    assert torch.equal(data[1][0][0].long(), torch.from_numpy(GREY16 >> 8))
    with pytest.raises(ValueError, match="bits=12 is more than .*a.png"):
        folder(tmp_path, images, bits=12)


def test_splits_agree_on_channels_and_depth(tmp_path):
    """A folder whose train files are grey 16-bit and whose test file is 8-bit colour: both splits
    have the same channels and levels, or neither loads."""
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.fromarray(GREY16.astype(np.uint16)).save(tmp_path / "train" / "0.png")
    Image.fromarray(RGB8.astype(np.uint8)).save(tmp_path / "test" / "0.png")
    for split in ("train", "test"):
        with pytest.raises(ValueError, match="different bit depths"):
            get_dataset("folder", split, image_size=SIDE, root=tmp_path)
    train, test = (
        get_dataset("folder", s, image_size=SIDE, root=tmp_path, bits=8) for s in ("train", "test")
    )
    assert (train.num_bins, train.channels, test.num_bins, test.channels) == (256, 3, 256, 3)
    assert train[0][0].shape == test[0][0].shape == (3, SIDE, SIDE)
    assert torch.equal(train[0][0].long(), torch.from_numpy(GREY16 >> 8).expand(3, -1, -1))


def test_images_without_levels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode 'F'"):
        folder(tmp_path, {"a.tif": Image.fromarray(np.ones((SIDE, SIDE), np.float32))})
    too_big = folder(
        tmp_path / "big", {"a.tif": Image.fromarray(np.full((SIDE, SIDE), 70000, np.int32))}
    )
    with pytest.raises(ValueError, match="70000 .. 70000, outside the 0 .. 65535"):
        too_big[0]


def test_resizing_keeps_16bit_depth(tmp_path):
    """Bilinear resizing at 16 bits matches Pillow's own 16-bit resize, and nothing is clipped."""
    wide = np.tile(np.linspace(0, 65535, 40).round().astype(np.uint16), (40, 1))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.fromarray(wide).save(tmp_path / "train" / "wide.png")
    Image.fromarray(wide).save(tmp_path / "test" / "wide.png")
    image = get_dataset("folder", "train", image_size=10, root=tmp_path)[0][0][0].long()
    expected = np.asarray(Image.fromarray(wide).resize((10, 10), Image.BILINEAR), np.int64)
    assert int(image.max()) > 60000
    assert (image - torch.from_numpy(expected)).abs().max() <= 1


@pytest.mark.parametrize("bits", [5, 1])
def test_mnist_and_cifar_bits(tmp_path, bits, monkeypatch):
    from test_data import write_cifar10, write_idx

    torchvision = import_or_skip("torchvision", "torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    pixels = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for s in ("train", "t10k"):
        write_idx(raw / f"{s}-images-idx3-ubyte", pixels)
        write_idx(raw / f"{s}-labels-idx1-ubyte", np.arange(3))
    mnist = get_dataset("mnist", "test", root=tmp_path, bits=bits)
    assert (mnist.num_bins, mnist.bits) == (2**bits, bits)
    assert torch.equal(mnist[1][0][0].long(), torch.from_numpy(pixels[1] >> (8 - bits)))
    assert mnist[1][0].dtype == torch.uint8

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    batches = write_cifar10(tmp_path)
    cifar = get_dataset("cifar10", "test", root=tmp_path, bits=bits, image_size=32)
    expected = batches["test_batch"][0][0].reshape(3, 32, 32).astype(np.int64) >> (8 - bits)
    assert cifar.num_bins == 2**bits and torch.equal(cifar[0][0].long(), torch.from_numpy(expected))
    with pytest.raises(ValueError, match="bits=9 is more than CIFAR10 has: 256 levels"):
        get_dataset("cifar10", "test", root=tmp_path, bits=9)


def test_imagenet_bits(tmp_path):
    from test_data import write_imagenet

    written = write_imagenet(tmp_path, 32, batches=(1,), per_file=2)
    data = get_dataset("imagenet32", "test", root=tmp_path, bits=4)
    expected = written["val_data"][0][1].reshape(3, 32, 32).astype(np.int64) >> 4
    assert data.num_bins == 16 and torch.equal(data[1][0].long(), torch.from_numpy(expected))


def test_hubble_bits():
    from skimage.data import hubble_deep_field

    full = torch.from_numpy(hubble_deep_field().astype(np.int64)).permute(2, 0, 1)
    native = get_dataset("hubble", "train", image_size=16)
    five = get_dataset("hubble", "train", image_size=16, bits=5)
    assert (native.num_bins, native.bits, five.num_bins, five.bits) == (256, 8, 32, 5)
    assert torch.equal(five[0][0].long(), full[:, :16, :16] >> 3)
    assert torch.equal(native[0][0].long(), full[:, :16, :16])


def test_digits_levels_and_bits():
    from sklearn.datasets import load_digits

    test_images = load_digits().images[::5].astype(np.int64)
    native = get_dataset("digits", "test")
    assert (native.num_bins, native.bits) == (17, None)
    assert sorted(torch.stack([x for x, _ in native]).unique().tolist()) == list(range(17))
    four = get_dataset("digits", "test", bits=4)
    # 17 levels into 16: the two middle levels 8 and 9 share level 8, the others keep their order.
    table = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15])
    assert (four.num_bins, four.bits) == (16, 4)
    assert torch.equal(four[3][0][0].long(), torch.from_numpy(table[test_images[3]]))
    two = get_dataset("digits", "test", bits=2, image_size=16)
    big = torch.from_numpy((test_images[0] * 8 + 4) // 34)  # floor((v + 1/2) 4 / 17)
    assert torch.equal(two[0][0][0].long(), big.repeat_interleave(2, 0).repeat_interleave(2, 1))
    with pytest.raises(
        ValueError, match="bits=5 is more than digits has: 17 levels, so at most bits=4"
    ):
        get_dataset("digits", "train", bits=5)


@pytest.mark.parametrize(
    "bits, error",
    [(0, ValueError), (17, ValueError), (True, TypeError), ("5", TypeError), (5.0, TypeError)],
)
def test_bad_bits(bits, error):
    with pytest.raises(error, match="bits must be"):
        get_dataset("digits", "train", bits=bits)


@settings(max_examples=60, deadline=None)
@given(source_bins=st.integers(2, 70000), data=st.data())
def test_rescaling_is_monotone_onto_and_shifts_powers_of_two(source_bins, data):
    num_bins = data.draw(st.integers(2, source_bins))
    levels = torch.arange(source_bins).reshape(1, 1, -1)
    out = to_levels(levels, source_bins, num_bins, None, nearest=False).long().flatten()
    assert int(out[0]) == 0 and int(out[-1]) == num_bins - 1
    steps = out.diff()
    assert bool(((steps == 0) | (steps == 1)).all())  # monotone, and every level 0 .. m-1 used
    if source_bins & (source_bins - 1) == 0 and num_bins & (num_bins - 1) == 0:
        shift = source_bins.bit_length() - num_bins.bit_length()
        assert torch.equal(out, levels.flatten() >> shift)
