"""Evaluation and sampling of trained flows.

* :func:`dequantize`: uniform dequantisation of integer images (also used by training); bits/dim
  come from :func:`normflows_emerging.likelihood.bits_per_dim_from_nll`.
* :func:`evaluate_bpd` (bits/dim over a dataset with fixed noise), :func:`probe_batch` (fixed
  dequantised images, e.g. for :func:`normflows_emerging.diagnostics.inverse_error`),
  :func:`sample`, :func:`sample_timing` and :func:`sample_ms_per_image` (seeded samples, timing).
* :func:`tile_images`, :func:`save_image_grid` and :func:`save_samples`: PNG grids of samples.

Models are ``normflows.MultiscaleFlow``\\ s or any module with the same two methods:
``forward(x, y)`` returning the negative log-likelihood of each example (labels ``y`` or None)
and ``sample(num_samples, y=None, temperature=None)`` returning ``(x, log_q)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from ..likelihood import bits_per_dim_from_nll
from ..modes import eval_mode
from ..solve import use_backend
from .checkpoint import EVAL_NOISE, SAMPLING, atomic_write, derive_seed
from .errors import NonFiniteError

if TYPE_CHECKING:
    from torch.utils import benchmark

SAMPLE_TEMPERATURES = (1.0, 0.7)


def parameter_dtype(model) -> torch.dtype:
    """The floating-point dtype of a model's parameters (float32 for a model without any): the
    dtype its data must have."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def dequantize(images, num_bins, noise=None, dtype=torch.float32):
    """Uniform dequantisation ``(k + u) / num_bins`` of integer images, u ~ U[0, 1).

    For a power of two ``num_bins`` (8- or 16-bit data) the result is the correctly rounded
    value of ``dtype``: ``k + u`` is rounded once and the division by ``num_bins`` is exact.

    Args:
      images: integer tensor (uint8, int32, ...) with values in 0 .. num_bins - 1
      num_bins: number of intensity levels
      noise: the values u, a float tensor of the images' shape (None: drawn with ``torch.rand``
        in float32, so that both dtypes see the same noise for the same seed)
      dtype: floating-point dtype of the result, that of the model (see
        :func:`parameter_dtype`)

    Returns:
      tensor of ``dtype`` and the images' shape with values in [0, 1)
    """
    if noise is None:
        noise = torch.rand(images.shape)
    # Clamp below 1: rounding can turn (num_bins - 1 + u) / num_bins into exactly 1.
    top = 1 - torch.finfo(dtype).eps / 2
    return ((images.to(dtype) + noise.to(dtype)) / num_bins).clamp(max=top)


@torch.no_grad()
def evaluate_bpd(model, dataset, batch_size=256, device="cpu", seed=0, class_cond=False):
    """Bits/dim averaged over a whole dataset, with fixed dequantisation noise.

    Args:
      model: model, see the module docstring (run in eval mode, its modes restored); the images
        are dequantised in the dtype of its parameters
      batch_size: examples per forward pass
      device: device of the model
      seed: seed of the dequantisation noise (the same seed gives the same noise)
      class_cond: pass the labels to the model

    Returns:
      float
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, EVAL_NOISE))
    total, count = 0.0, 0
    with eval_mode(model):
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            noise = torch.rand(images.shape, generator=generator)
            x = dequantize(images, dataset.num_bins, noise, parameter_dtype(model)).to(device)
            y = labels.to(device) if class_cond else None
            total += model(x, y).double().sum().item()
            count += len(images)
    return bits_per_dim_from_nll(total / count, dataset[0][0].numel(), dataset.num_bins)


def class_labels(model, num_samples, device="cpu"):
    """Labels for a batch of samples: 0, 1, ..., num_classes - 1, 0, 1, ... (every class in turn,
    one per image) for a class-conditional model, None otherwise.

    A model is class-conditional when its ``class_cond`` is true; its number of classes is its
    ``num_classes`` or that of its first base distribution (``normflows.MultiscaleFlow``).
    """
    if not getattr(model, "class_cond", False):
        return None
    num_classes = getattr(model, "num_classes", None) or model.q0[0].num_classes
    return torch.arange(num_samples, device=device) % num_classes


@torch.no_grad()
def sample(model, num_samples, temperature=1.0, seed=0, device="cpu", y=None):
    """Samples of a model, clamped to [0, 1], without touching the global random state.

    Args:
      model: model, see the module docstring
      num_samples: number of images
      temperature: standard deviation factor of the base distributions
      seed: seed of the samples
      device: device of the model
      y: class labels of a class-conditional model, shape (num_samples,) (None: every class in
        turn, see :func:`class_labels`); one class per image at every level

    Returns:
      float tensor (num_samples, C, H, W) on the CPU

    Raises:
      NonFiniteError: from the model, if a sample holds a NaN or an infinity (clamping here
        would hide it), or if a layer cannot invert (its ``torch.linalg.LinAlgError``, e.g. an
        overflowing solve): either way the model cannot sample
    """
    if y is None:
        y = class_labels(model, num_samples, device)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, SAMPLING))
        try:
            x, _ = model.sample(num_samples, y, temperature=temperature)
        except torch.linalg.LinAlgError as err:
            raise NonFiniteError(f"the model cannot sample: {err}") from err
    return x.clamp(0, 1).cpu()


def tile_images(images, padding=1):
    """Arrange a batch of images in a square-ish grid with white gaps.

    torchvision's ``make_grid`` does it where torchvision is installed (the ``data`` extra);
    without it, or where it does not import (a torchvision built for another torch raises a
    RuntimeError), the same grid is laid out here.

    Args:
      images: float tensor (n, C, H, W) in [0, 1]
      padding: gap in pixels around each image

    Returns:
      tensor (H_grid, W_grid, C) ready for ``imshow``
    """
    n, channels, height, width = images.shape
    cols = math.ceil(math.sqrt(n))
    make_grid = _torchvision_make_grid()
    if make_grid is not None:
        # make_grid leaves 2 * padding between cells and around the grid: the outer half goes;
        # it repeats a single channel three times: one is kept.
        grid = make_grid(images, nrow=cols, padding=2 * padding, pad_value=1.0)[:channels]
        return grid[
            :, padding : grid.shape[1] - padding, padding : grid.shape[2] - padding
        ].permute(1, 2, 0)
    rows = math.ceil(n / cols)
    canvas = images.new_ones(rows * cols, channels, height + 2 * padding, width + 2 * padding)
    canvas[:n, :, padding : padding + height, padding : padding + width] = images
    grid = canvas.view(rows, cols, channels, height + 2 * padding, width + 2 * padding)
    return grid.permute(0, 3, 1, 4, 2).reshape(
        rows * canvas.shape[2], cols * canvas.shape[3], channels
    )


def _torchvision_make_grid():
    """``torchvision.utils.make_grid``, or None where torchvision is absent or fails to import."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        from torchvision.utils import make_grid
    except (ImportError, RuntimeError):  # e.g. PyPI's CUDA torchvision beside a CPU-only torch
        return None
    return make_grid


def check_png_path(path) -> None:
    """Refuse an output name that is not a ``.png`` file (before any work is done).

    Raises:
      ValueError: if ``path`` is empty, names a folder or does not end in ``.png``
    """
    if not str(path) or Path(path).is_dir():
        raise ValueError(f"output {str(path)!r} is not a file name; expected a name ending in .png")
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"output {path} does not end in .png; sample grids are written as PNG")


def save_image_grid(images, path, titles=None):
    """Save images as a PNG grid, one panel per group, written atomically.

    Args:
      images: list of float tensors (n, C, H, W) in [0, 1], one per panel
      path: output file, ending in ``.png``
      titles: one title per panel, or None

    Raises:
      ValueError: for a ``path`` refused by :func:`check_png_path`
      NonFiniteError: if an image holds a NaN or an infinity (nothing is written)
    """
    from matplotlib.figure import Figure  # the train extra's, imported where a PNG is drawn

    check_png_path(path)
    if not all(torch.isfinite(batch).all() for batch in images):
        raise NonFiniteError(f"not writing {path}: the images hold NaN or infinite values")
    fig = Figure(figsize=(4 * len(images), 4))
    axes = fig.subplots(1, len(images), squeeze=False)
    for i, (ax, batch) in enumerate(zip(axes[0], images)):
        grid = tile_images(batch).numpy()
        if grid.shape[2] == 1:
            ax.imshow(grid[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i])
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def save_samples(model, path, num_samples=16, seed=0, device="cpu"):
    """``samples.png``: a panel of samples at each of the temperatures 1.0 and 0.7.

    Args:
      model: model, see the module docstring
      path: output PNG
      num_samples: images per temperature
      seed: seed of the samples
      device: device of the model

    Raises:
      NonFiniteError: if the model cannot sample (see :func:`sample`); nothing is written
    """
    grids = [sample(model, num_samples, t, seed, device) for t in SAMPLE_TEMPERATURES]
    save_image_grid(grids, path, [f"temperature {t}" for t in SAMPLE_TEMPERATURES])


def import_torch_benchmark():
    """``torch.utils.benchmark``, imported on first use and without the warning "No CUDA runtime
    is found, using CUDA_HOME=..." that its import logs where a CUDA toolkit is installed but no
    GPU is usable (it concerns compiling CUDA extensions, not timing)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


@torch.no_grad()
def sample_timing(
    model, num_samples=16, device="cpu", backend=None, seed=0, repeats=7
) -> benchmark.Measurement:
    """Time drawing a batch of samples with ``torch.utils.benchmark`` (wall clock).

    One untimed draw warms up (caches, compiled code); then ``repeats`` draws are timed one by
    one with the current number of threads (CUDA is synchronised), so the result carries a
    median and a spread over several runs rather than one noisy reading.

    Args:
      model: model, see the module docstring
      num_samples: batch size of the timed draws
      device: device of the model
      backend: solve backend of autoregressive convolutions (``use_backend``), None: default
      seed: seed of the samples
      repeats: number of timed draws (at least 1)

    Returns:
      ``torch.utils.benchmark.Measurement`` of one draw of ``num_samples`` images (seconds):
      ``median``, ``iqr``, ``times``

    Raises:
      NonFiniteError: if the model cannot sample (see :func:`sample`)
    """
    benchmark = import_torch_benchmark()
    timer = benchmark.Timer(
        stmt="sample(model, num_samples, 1.0, seed, device)",
        globals={
            "sample": sample,
            "model": model,
            "num_samples": num_samples,
            "seed": seed,
            "device": device,
        },
        num_threads=torch.get_num_threads(),
        label="sampling",
        description=f"{num_samples} samples",
    )
    with use_backend(backend) if backend else contextlib.nullcontext():
        sample(model, num_samples, 1.0, seed, device)
        (measurement,) = benchmark.Measurement.merge([timer.timeit(1) for _ in range(repeats)])
    return measurement


def sample_ms_per_image(
    model, num_samples=16, device="cpu", backend=None, seed=0, repeats=7
) -> float:
    """Median wall-clock milliseconds per image of drawing a batch (see :func:`sample_timing`).

    Returns:
      float
    """
    measurement = sample_timing(model, num_samples, device, backend, seed, repeats)
    return 1000 * measurement.median / num_samples


def probe_batch(dataset, num_images=64, seed=0, dtype=torch.float32) -> torch.Tensor:
    """The first images of a dataset, dequantised with fixed noise: a reproducible probe.

    Args:
      dataset: dataset of (integer image, label) with ``num_bins``
      num_images: how many of its first images to use (fewer if it is smaller)
      seed: seed of the dequantisation noise
      dtype: floating-point dtype of the result (the model's, see :func:`parameter_dtype`)

    Returns:
      tensor (n, C, H, W) of ``dtype`` in [0, 1) on the CPU
    """
    images = torch.stack([dataset[i][0] for i in range(min(num_images, len(dataset)))])
    generator = torch.Generator().manual_seed(derive_seed(seed, EVAL_NOISE))
    noise = torch.rand(images.shape, generator=generator)
    return dequantize(images, dataset.num_bins, noise, dtype)
