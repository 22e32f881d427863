"""What the ``evaluate`` and ``sample`` commands do with a checkpoint (see :mod:`.cli`)."""

import math
import warnings

from ..diagnostics import NumericalInvertibilityWarning, inverse_error, warn_if_not_invertible
from ..parameters import count_parameters
from .checkpoint import load_checkpoint
from .data import get_dataset
from .errors import NonFiniteError
from .evaluation import (
    check_png_path,
    evaluate_bpd,
    parameter_dtype,
    probe_batch,
    sample,
    sample_timing,
    save_image_grid,
)
from .train import check_device

# Images of the evaluated split in the round-trip check.
PROBE_IMAGES = 64
# Most images :func:`sample_checkpoint` puts in one grid (64 x 64 cells; drawn in one batch).
MAX_SAMPLE_IMAGES = 4096
# Keys of :func:`evaluate_checkpoint`'s result kept for one release under their 0.1 names
# (removed in 0.3): old name -> the key that holds the same number.
DEPRECATED_KEYS = {"parameters": "degrees_of_freedom", "parameters_stored": "parameters_total"}


class EvaluationResult(dict):
    """The dict :func:`evaluate_checkpoint` returns; reading a key of ``DEPRECATED_KEYS``
    (``result["parameters"]``, ``result.get("parameters")``) warns with a DeprecationWarning
    naming the key to read instead."""

    def __getitem__(self, key):
        _warn_if_deprecated(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        _warn_if_deprecated(key)
        return super().get(key, default)


def _warn_if_deprecated(key):
    if key in DEPRECATED_KEYS:
        warnings.warn(
            f"the evaluation key {key!r} is deprecated and will be removed in "
            f"normflows-emerging 0.3; read {DEPRECATED_KEYS[key]!r} (the same number)",
            DeprecationWarning,
            stacklevel=3,
        )


def evaluate_checkpoint(
    path,
    dataset=None,
    split="test",
    device="cpu",
    data_root=None,
    num_samples=16,
    timing_repeats=7,
    download=False,
) -> dict:
    """Bits/dim over a whole split, sampling speed and round-trip error of a checkpoint.

    Args:
      path: checkpoint written by training
      dataset: dataset name (None: the one it was trained on); images are resized to the
        checkpoint's input size and quantised to its number of levels
      split: ``"train"`` or ``"test"``
      device: device to evaluate on
      data_root: folder of the dataset files (None: the checkpoint's)
      num_samples: batch size of the sampling-speed measurement
      timing_repeats: number of timed sampling draws
      download: let torchvision download ``cifar10``/``mnist`` when missing (``--download``)

    Returns:
      dict with ``<split>_bpd``, ``sample_ms_per_image`` (median over the timed runs) and
      ``sample_ms_per_image_iqr`` (their interquartile range), both None with the reason in
      ``sampling_error`` when the model cannot sample (a layer's solve overflows; a
      ``NumericalInvertibilityWarning`` says so), ``inverse_error`` (largest round-trip error of
      the model on the split's first images, data units, ``inf`` when a layer fails),
      ``inverse_error_worst_flow`` (the flow with the largest error) and
      ``inverse_error_worst_flow_value`` (its error on its own input),
      ``degrees_of_freedom`` and ``parameters_total`` (see
      :func:`~normflows_emerging.parameters.count_parameters`; also under their deprecated
      names ``parameters`` and ``parameters_stored``, whose reading warns) and ``step``; a
      ``NumericalInvertibilityWarning`` when the round-trip error is above
      ``diagnostics.INVERSE_ERROR_THRESHOLD``

    Raises:
      FileNotFoundError, CheckpointError: for a missing or unusable checkpoint
      ValueError: if the dataset's images do not have the model's shape or levels
    """
    device = check_device(device)
    model, checkpoint = load_checkpoint(path, device)
    config = checkpoint["config"]
    data = get_dataset(
        dataset or config.dataset,
        split,
        checkpoint["input_shape"][-1],
        data_root if data_root is not None else config.data_root,
        download=download,
        bits=config.bits,
    )
    if list(data[0][0].shape) != list(checkpoint["input_shape"]):
        raise ValueError(
            f"dataset images have shape {tuple(data[0][0].shape)}, the model "
            f"expects {tuple(checkpoint['input_shape'])}"
        )
    if data.num_bins != checkpoint["num_bins"]:
        raise ValueError(
            f"dataset images have {data.num_bins} levels, the model was trained "
            f"on {checkpoint['num_bins']}"
        )
    probe = probe_batch(data, PROBE_IMAGES, config.seed, parameter_dtype(model)).to(device)
    errors = inverse_error(model, probe)
    warn_if_not_invertible(errors, f"({path})")
    try:
        timing = sample_timing(model, num_samples, device, seed=config.seed, repeats=timing_repeats)
        sampling = {
            "sample_ms_per_image": 1000 * timing.median / num_samples,
            "sample_ms_per_image_iqr": 1000 * timing.iqr / num_samples,
            "sampling_error": None,
        }
    except NonFiniteError as err:  # a layer cannot sample: the likelihood is still measured
        warnings.warn(
            f"{path}: sampling not timed: {err}", NumericalInvertibilityWarning, stacklevel=2
        )
        sampling = dict.fromkeys(("sample_ms_per_image", "sample_ms_per_image_iqr"))
        sampling["sampling_error"] = " ".join(str(err).split())
    count = count_parameters(model)
    values = {
        f"{split}_bpd": evaluate_bpd(
            model, data, config.eval_batch_size, device, config.seed, config.num_classes is not None
        ),
        **sampling,
        "inverse_error": errors["model"],
        "inverse_error_worst_flow": errors["worst_flow"],
        "inverse_error_worst_flow_value": max(errors["flows"].values()),
        "degrees_of_freedom": count.degrees_of_freedom,
        "parameters_total": count.total,
        "step": checkpoint["step"],
    }
    values.update({old: values[new] for old, new in DEPRECATED_KEYS.items()})
    return EvaluationResult(values)


def sample_checkpoint(path, out, num_samples=16, temperature=1.0, seed=0, device="cpu") -> None:
    """Draw samples of a checkpoint and save them as a PNG grid.

    Args:
      path: checkpoint written by training
      out: output file, ending in ``.png``
      num_samples: number of images, 1 .. ``MAX_SAMPLE_IMAGES``
      temperature: sampling temperature, finite and positive
      seed: seed of the samples
      device: device to sample on

    Raises:
      FileNotFoundError, CheckpointError: for a missing or unusable checkpoint
      ValueError: for an ``out`` that is not a ``.png`` file name, or a number of images or
        temperature out of range (checked before the checkpoint is read)
      NonFiniteError: if a sample is NaN or infinite (nothing is written)
    """
    check_png_path(out)
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int)
        or not (1 <= num_samples <= MAX_SAMPLE_IMAGES)
    ):
        raise ValueError(
            f"num_samples must be an int in 1 .. {MAX_SAMPLE_IMAGES}, got {num_samples!r}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and positive, got {temperature!r}")
    device = check_device(device)
    model, _ = load_checkpoint(path, device)
    images = sample(model, num_samples, temperature, seed, device)
    save_image_grid([images], out, [f"temperature {temperature}"])
