"""The settings of a training run (:class:`TrainConfig`) and what they build: model and data.

A :class:`TrainConfig` is stored in every checkpoint; :func:`check_resumable` says which of its
settings a resumed run may change.
"""

from __future__ import annotations

import dataclasses

import torch

from ..multiscale import build_multiscale_flow
from .data import get_dataset
from .errors import IncompatibleResumeError

# Settings that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batch_size", "workers", "data_root", "download")
# Deepest intensity resolution a dataset can be asked for (16-bit images).
MAX_BITS = 16
# Largest learning rate: far above any that trains (a diverging run is reported as such), and
# below the about 3e37 at which Adamax's own first update (the rate over its bias correction)
# overflows float32 and raises inside the optimizer.
MAX_LR = 1e30
# torch.manual_seed takes an unsigned 64-bit seed.
MAX_SEED = 2**64 - 1


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint).

    Args:
      dataset: dataset name, see ``normflows_emerging.app.data.dataset_names()``
      mixing: mixing layer name, see ``normflows_emerging.mixing_layers()``
      levels: number of levels of the multiscale model
      flows_per_level: Glow steps per level
      hidden_channels: hidden channels of the coupling networks
      image_size: side length of the images (None: the dataset's own)
      bits: intensity resolution of the data in bits, 1 .. 16: the images are quantised to
        ``2**bits`` levels (None: the dataset's native depth); bits/dim are computed for the
        levels the dataset reports
      batch_size: examples per step and process
      steps: total number of optimisation steps
      lr: learning rate of Adamax after the warm-up, in (0, MAX_LR]
      warmup: steps of linear learning-rate warm-up (0: none)
      seed: seed of the initialisation, data order, dequantisation noise and samples,
        0 .. 2**64 - 1
      num_classes: number of classes of a class-conditional model, or None
      mixing_kwargs: keyword arguments of the mixing layer (e.g. ``{"kernel_size": 5}``)
      eval_every: steps between test-set evaluations (and checkpoints); the last step is always
        evaluated
      eval_batch_size: batch size of the evaluations
      data_root: folder of the dataset files (None: ``data/<dataset>``)
      download: let torchvision download the dataset
      workers: data-loading worker processes

    Raises:
      ValueError: for a value out of range or of the wrong type
    """

    dataset: str = "digits"
    mixing: str = "emerging"
    levels: int = 2
    flows_per_level: int = 4
    hidden_channels: int = 64
    image_size: int | None = None
    bits: int | None = None
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    num_classes: int | None = None
    mixing_kwargs: dict = dataclasses.field(default_factory=dict)
    eval_every: int = 250
    eval_batch_size: int = 256
    data_root: str | None = None
    download: bool = False
    workers: int = 0

    def __post_init__(self):
        for name in (
            "levels",
            "flows_per_level",
            "hidden_channels",
            "batch_size",
            "steps",
            "eval_every",
            "eval_batch_size",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup", "workers"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        for name in ("image_size", "num_classes"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.bits is not None:
            _check_int("bits", self.bits, minimum=1, maximum=MAX_BITS)
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not (0 < self.lr <= MAX_LR)
        ):
            raise ValueError(f"lr must be a number in (0, {MAX_LR}], got {self.lr!r}")


def _check_int(name, value, minimum, maximum=None):
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f"at least {minimum}" if maximum is None else f"in {minimum} .. {maximum}"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Raise if a setting other than ``RESUMABLE_CHANGES`` differs from the checkpoint's.

    Args:
      saved: the checkpoint's config as a dict
      config: the settings asked for now

    Raises:
      IncompatibleResumeError: naming every differing setting with both values
    """
    current = dataclasses.asdict(config)
    changed = [
        key for key in current if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]
    ]
    if changed:
        details = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}" for k in changed
        )
        raise IncompatibleResumeError(f"cannot resume with different settings ({details})")


def build_model(config: TrainConfig, input_shape) -> torch.nn.Module:
    """The multiscale model a config describes (``build_multiscale_flow``).

    Args:
      config: :class:`TrainConfig`
      input_shape: (channels, height, width) of the data

    Returns:
      ``normflows.MultiscaleFlow``
    """
    return build_multiscale_flow(
        tuple(input_shape),
        config.levels,
        config.flows_per_level,
        config.hidden_channels,
        mixing=config.mixing,
        num_classes=config.num_classes,
        **config.mixing_kwargs,
    )


def load_datasets(config: TrainConfig):
    """Train and test splits of the config's dataset, checked against ``num_classes``.

    Returns:
      (train set, test set), datasets of (integer image, label) with ``num_bins``

    Raises:
      ValueError: if the dataset has more classes than ``config.num_classes``
    """
    splits = [
        get_dataset(
            config.dataset,
            split,
            config.image_size,
            config.data_root,
            config.download,
            bits=config.bits,
        )
        for split in ("train", "test")
    ]
    if config.num_classes is not None and config.num_classes < splits[0].num_classes:
        raise ValueError(
            f"dataset {config.dataset!r} has {splits[0].num_classes} classes, more than "
            f"num_classes={config.num_classes}"
        )
    return splits
