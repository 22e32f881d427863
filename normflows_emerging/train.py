"""Training of multiscale flows on image datasets, and evaluation/sampling of its checkpoints.

The command line (``python -m normflows_emerging train|evaluate|sample``) and the examples are
thin layers over these functions (the evaluation and sampling functions themselves live in
:mod:`normflows_emerging.evaluation`, checkpoint writing and random state in
:mod:`normflows_emerging.checkpoint`):

* :func:`train` builds the model and datasets of a :class:`TrainConfig` and runs :func:`fit`:
  Adamax with a linear learning-rate warm-up, uniform dequantisation ``x = (k + u) / num_bins``,
  data-dependent ActNorm initialisation on the first batch, periodic test-set evaluation,
  ``checkpoint.pt``, ``metrics.jsonl`` and ``samples.png`` in the output folder, exact resumption
  and DistributedDataParallel when started with ``torchrun``.
* :func:`read_checkpoint` and :func:`load_checkpoint` read a checkpoint written by :func:`train`
  (with its :class:`TrainConfig` and rebuilt model); :func:`evaluate_checkpoint` and
  :func:`sample_checkpoint` evaluate and sample one.

Models are ``normflows.MultiscaleFlow``\\ s or any module with the same two methods:
``forward(x, y)`` returning the negative log-likelihood of each example (labels ``y`` or None)
and ``sample(num_samples, y=None, temperature=None)`` returning ``(x, log_q)``.
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .architectures import bits_per_dim_from_nll, build_multiscale_flow
from .checkpoint import (DATA_ORDER, TRAIN_NOISE, derive_seed, rng_state, save_checkpoint,
                         set_rng_state)
from .data import get_dataset
from .evaluation import (dequantize, evaluate_bpd, inverse_error, sample, sample_ms_per_image,
                         save_image_grid, save_samples)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SAMPLES = "samples.png"
# Settings that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batch_size", "workers", "data_root",
                     "download")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint).

    Args:
      dataset: dataset name, see ``normflows_emerging.data.dataset_names()``
      mixing: mixing layer name, see ``normflows_emerging.architectures.mixing_layers()``
      levels: number of levels of the multiscale model
      flows_per_level: Glow steps per level
      hidden_channels: hidden channels of the coupling networks
      image_size: side length of the images (None: the dataset's own)
      batch_size: examples per step and process
      steps: total number of optimisation steps
      lr: learning rate of Adamax after the warm-up
      warmup: steps of linear learning-rate warm-up (0: none)
      seed: seed of the initialisation, data order, dequantisation noise and samples
      num_classes: number of classes of a class-conditional model, or None
      mixing_kwargs: keyword arguments of the mixing layer (e.g. ``{"kernel_size": 5}``)
      eval_every: steps between test-set evaluations (and checkpoints); the last step is always
        evaluated
      eval_batch_size: batch size of the evaluations
      data_root: folder of the dataset files (None: ``data/<dataset>``)
      download: let torchvision download the dataset
      workers: data-loading worker processes
    """

    dataset: str = "digits"
    mixing: str = "emerging"
    levels: int = 2
    flows_per_level: int = 4
    hidden_channels: int = 64
    image_size: int = None
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    num_classes: int = None
    mixing_kwargs: dict = dataclasses.field(default_factory=dict)
    eval_every: int = 250
    eval_batch_size: int = 256
    data_root: str = None
    download: bool = False
    workers: int = 0

    def __post_init__(self):
        for name in ("levels", "flows_per_level", "hidden_channels", "batch_size", "steps",
                     "eval_every", "eval_batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup", "seed", "workers"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("image_size", "num_classes"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}")


class BatchOrder:
    """Shuffled training batches as a function of the step number.

    Every epoch is a fresh permutation of the dataset, seeded by (seed, epoch), cut into global
    batches of ``batch_size * world_size`` examples (the incomplete last one is dropped); process
    ``rank`` takes its slice of each. Because the order depends only on the step, a resumed run
    reads exactly the batches the uninterrupted run would have read.

    Args:
      num_examples: size of the training set
      batch_size: examples per step and process
      seed: seed of the order
      rank: index of this process
      world_size: number of processes
    """

    def __init__(self, num_examples, batch_size, seed, rank=0, world_size=1):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.offset = rank * batch_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_examples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_examples} examples, fewer than one batch of "
                f"{self.global_batch} (batch size x processes)"
            )
        self._epoch, self._permutation = None, None

    def state(self, step):
        """Where in the data the given step starts.

        Returns:
          dict with ``epoch`` and ``position`` (index of its first example in the epoch's order)
        """
        return {"epoch": step // self.steps_per_epoch,
                "position": step % self.steps_per_epoch * self.global_batch}

    def indices(self, step, whole=False):
        """Indices of the examples this process reads at ``step``.

        Args:
          step: step number
          whole: return the whole global batch (all processes' slices) instead

        Returns:
          list of ``batch_size`` ints (``batch_size * world_size`` with ``whole``)
        """
        state = self.state(step)
        if state["epoch"] != self._epoch:
            generator = torch.Generator().manual_seed(
                derive_seed(self.seed, DATA_ORDER, state["epoch"]))
            self._permutation = torch.randperm(self.num_examples, generator=generator)
            self._epoch = state["epoch"]
        if whole:
            start, stop = state["position"], state["position"] + self.global_batch
        else:
            start = state["position"] + self.offset
            stop = start + self.batch_size
        return self._permutation[start:stop].tolist()

    def batches(self, start, stop):
        """Index lists of steps ``start .. stop - 1``, a ``batch_sampler`` for a DataLoader."""
        return _StepBatches(self, start, stop)


class _StepBatches:
    """Sized iterable over the index lists of a range of steps."""

    def __init__(self, order, start, stop):
        self.order, self.start, self.stop = order, start, stop

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        return (self.order.indices(step) for step in range(self.start, self.stop))


def build_model(config, input_shape):
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


def count_parameters(model):
    """Number of trainable parameters of a module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_datasets(config):
    """Train and test splits of the config's dataset, checked against ``num_classes``.

    Returns:
      (train set, test set)
    """
    splits = [
        get_dataset(config.dataset, split, config.image_size, config.data_root, config.download)
        for split in ("train", "test")
    ]
    if config.num_classes is not None and config.num_classes < splits[0].num_classes:
        raise ValueError(
            f"dataset {config.dataset!r} has {splits[0].num_classes} classes, more than "
            f"num_classes={config.num_classes}"
        )
    return splits


def train_step(model, optimizer, x, y, num_bins, lr):
    """One Adamax (or other optimizer) step on the mean bits/dim of a batch.

    A non-finite loss or gradient is never trained on: the gradients are dropped and the
    parameters left unchanged. Under DistributedDataParallel every process takes the same
    decision.

    Args:
      model: model (possibly wrapped in DistributedDataParallel), see the module docstring
      optimizer: its optimizer
      x: dequantised batch in [0, 1)
      y: labels or None
      num_bins: intensity levels of the data
      lr: learning rate of this step

    Returns:
      (mean NLL in nats, mean bits/dim) of the batch as floats, or None when the step was skipped
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    nll = model(x, y).mean()
    loss = bits_per_dim_from_nll(nll, x[0].numel(), num_bins)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return nll.item(), loss.item()


def warmup_lr(lr, step, warmup):
    """Learning rate at ``step`` (0-based) of a linear warm-up over ``warmup`` steps."""
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


def read_checkpoint(path):
    """Read a checkpoint written by :func:`fit` (its tensors on the CPU).

    Args:
      path: checkpoint file

    Returns:
      the checkpoint dict, with ``config`` as a :class:`TrainConfig`

    Raises:
      FileNotFoundError: if there is no such file
      ValueError: if the file is not such a checkpoint
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    required = {"model", "config", "input_shape"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise ValueError(f"{path} is not a checkpoint written by normflows_emerging.train")
    checkpoint["config"] = TrainConfig(**checkpoint["config"])
    return checkpoint


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by :func:`train` and rebuild its model.

    Args:
      path: checkpoint file
      device: device to put the model on

    Returns:
      (model in eval mode, checkpoint dict with ``config`` as a :class:`TrainConfig`)

    Raises:
      FileNotFoundError: if there is no such file
      ValueError: if the file is not such a checkpoint
    """
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["config"], checkpoint["input_shape"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


def _distributed_setup(device):
    """Join the process group when started by torchrun (WORLD_SIZE > 1).

    Returns:
      (rank, world size, device of this process, whether this call created the group)
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or dist.is_initialized():
        if dist.is_initialized():
            return dist.get_rank(), dist.get_world_size(), device, False
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, True


def _check_device(device):
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available")
    return device


def _check_resumable(saved, config):
    """Raise if a setting other than RESUMABLE_CHANGES differs from the checkpoint's."""
    current = dataclasses.asdict(config)
    changed = [key for key in current
               if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]]
    if changed:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}"
                            for k in changed)
        raise ValueError(f"cannot resume with different settings ({details})")


def train(config, out, device="cpu", resume=False, progress=True):
    """Train the model a config describes on its dataset (see :func:`fit`).

    Args:
      config: :class:`TrainConfig`
      out: output folder
      device: ``"cpu"``, ``"cuda"`` or a torch.device
      resume: continue from ``out/checkpoint.pt``
      progress: show a tqdm progress bar

    Returns:
      dict of the last evaluation (see :func:`fit`)
    """
    train_set, test_set = load_datasets(config)
    input_shape = tuple(train_set[0][0].shape)
    torch.manual_seed(config.seed)
    model = build_model(config, input_shape)
    return fit(model, train_set, test_set, config, out, device, resume, progress)


def fit(model, train_set, test_set, config, out, device="cpu", resume=False, progress=True):
    """Train a model; evaluate, checkpoint and sample every ``config.eval_every`` steps.

    Writes into ``out``: ``checkpoint.pt`` (keys ``model``, ``optimizer``, ``step``, ``config``,
    ``rng``, ``input_shape``, ``num_bins``, ``elapsed``, ``skipped``), ``metrics.jsonl`` (one
    JSON object per evaluation: step, train_bpd (mean since the previous evaluation), test_bpd,
    seconds of training so far, skipped steps so far) and ``samples.png``. Under ``torchrun``
    the model is wrapped in DistributedDataParallel, each process reads its slice of every batch
    and only rank 0 writes files.

    Args:
      model: model, see the module docstring; it is moved to ``device`` and its ActNorm layers
        are initialised from the first batch unless resuming
      train_set, test_set: datasets of (uint8 image, label) with ``num_bins``
      config: :class:`TrainConfig` (the model settings in it are only recorded)
      out: output folder
      device: ``"cpu"``, ``"cuda"`` or a torch.device
      resume: continue exactly from ``out/checkpoint.pt``
      progress: show a tqdm progress bar

    Returns:
      dict of the last evaluation: step, train_bpd, test_bpd, seconds, skipped

    Raises:
      FileNotFoundError: when resuming without a checkpoint
      ValueError: when resuming with different settings, or for a bad device
    """
    out = Path(out)
    rank, world_size, device, own_group = _distributed_setup(_check_device(device))
    try:
        result = _fit(model, train_set, test_set, config, out, device, resume, progress,
                      rank, world_size)
        if world_size > 1:
            dist.barrier()
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _fit(model, train_set, test_set, config, out, device, resume, progress, rank, world_size):
    num_bins = train_set.num_bins
    input_shape = list(train_set[0][0].shape)
    order = BatchOrder(len(train_set), config.batch_size, config.seed, rank, world_size)
    model.to(device)
    optimizer = torch.optim.Adamax(model.parameters(), lr=config.lr)
    step, elapsed, skipped = 0, 0.0, 0
    if resume:
        checkpoint = read_checkpoint(out / CHECKPOINT)
        _check_resumable(dataclasses.asdict(checkpoint["config"]), config)
        if checkpoint["step"] >= config.steps:
            raise ValueError(f"the checkpoint is already at step {checkpoint['step']}; "
                             f"ask for more steps than that to continue")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        step, elapsed, skipped = checkpoint["step"], checkpoint["elapsed"], checkpoint["skipped"]
        if rank == 0:
            _truncate_metrics(out / METRICS, step)
    else:
        # Data-dependent ActNorm initialisation on the first (global) batch.
        indices = order.indices(0, whole=True)
        images = torch.stack([train_set[i][0] for i in indices])
        labels = torch.tensor([train_set[i][1] for i in indices])
        with torch.no_grad():
            model(*_prepare(images, labels, num_bins, config, order, 0, device, whole=True))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    net = model
    if world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    model.train()
    last = None
    train_bpds = []
    loader = DataLoader(train_set, batch_sampler=order.batches(step, config.steps),
                        num_workers=config.workers)
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0,
               desc=f"train {config.mixing}", dynamic_ncols=True)
    start = time.perf_counter() - elapsed
    for images, labels in loader:
        x, y = _prepare(images, labels, num_bins, config, order, step, device)
        result = train_step(net, optimizer, x, y, num_bins,
                            warmup_lr(config.lr, step, config.warmup))
        step += 1
        if result is None:
            skipped += 1
            if rank == 0:
                tqdm.write(f"step {step}: non-finite loss or gradient, step skipped "
                           f"({skipped} so far)", file=sys.stderr)
        else:
            train_bpds.append(result[1])
            bar.set_postfix(loss=f"{result[0]:.2f}", bpd=f"{result[1]:.3f}", refresh=False)
        bar.update()
        if step % config.eval_every == 0 or step == config.steps:
            seconds = time.perf_counter() - start
            if rank == 0:
                eval_start = time.perf_counter()
                last = _checkpoint_and_evaluate(
                    model, optimizer, test_set, config, out, device, order, step,
                    {"input_shape": input_shape, "num_bins": num_bins,
                     "elapsed": seconds, "skipped": skipped},
                    train_bpds)
                bar.write(f"step {step}: test bits/dim {last['test_bpd']:.4f}", file=sys.stderr)
                start += time.perf_counter() - eval_start  # count training time only
            train_bpds = []
    bar.close()
    return last


def _truncate_metrics(path, step):
    """Drop metrics lines after ``step`` (written by a run that stopped before checkpointing)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines()
                 if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _checkpoint_and_evaluate(model, optimizer, test_set, config, out, device, order, step, extra,
                             train_bpds):
    """Rank 0's periodic work: checkpoint, test bits/dim, metrics line, samples."""
    save_checkpoint(out / CHECKPOINT, model, optimizer, step, config, rng_state(order, step),
                    extra)
    record = {
        "step": step,
        "train_bpd": statistics.fmean(train_bpds) if train_bpds else None,
        "test_bpd": evaluate_bpd(model, test_set, config.eval_batch_size, device, config.seed,
                                 config.num_classes is not None),
        "seconds": round(extra["elapsed"], 3),
        "skipped": extra["skipped"],
    }
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    save_samples(model, out / SAMPLES, seed=config.seed, device=device)
    return record


def _prepare(images, labels, num_bins, config, order, step, device, whole=False):
    """Dequantise a step's batch and move it to the device.

    The noise is drawn for the whole global batch from a generator seeded by (seed, step) and
    each process takes its slice, so the batches do not depend on the number of processes.
    """
    generator = torch.Generator().manual_seed(derive_seed(config.seed, TRAIN_NOISE, step))
    noise = torch.rand((order.global_batch, *images.shape[1:]), generator=generator)
    if not whole:
        noise = noise[order.offset : order.offset + len(images)]
    x = dequantize(images, num_bins, noise).to(device)
    y = labels.to(device) if config.num_classes is not None else None
    return x, y


def evaluate_checkpoint(path, dataset=None, split="test", device="cpu", data_root=None,
                        num_samples=16):
    """Bits/dim over a whole split, sampling speed and round-trip error of a checkpoint.

    Args:
      path: checkpoint written by :func:`train`
      dataset: dataset name (None: the one it was trained on); images are resized to the
        checkpoint's input size
      split: ``"train"`` or ``"test"``
      device: device to evaluate on
      data_root: folder of the dataset files (None: the checkpoint's)
      num_samples: batch size of the sampling-speed measurement

    Returns:
      dict with ``<split>_bpd``, ``sample_ms_per_image``, ``inverse_error``, ``parameters`` and
      ``step``
    """
    device = _check_device(device)
    model, checkpoint = load_checkpoint(path, device)
    config = checkpoint["config"]
    data = get_dataset(dataset or config.dataset, split, checkpoint["input_shape"][-1],
                       data_root if data_root is not None else config.data_root)
    if list(data[0][0].shape) != list(checkpoint["input_shape"]):
        raise ValueError(f"dataset images have shape {tuple(data[0][0].shape)}, the model "
                         f"expects {tuple(checkpoint['input_shape'])}")
    return {
        f"{split}_bpd": evaluate_bpd(model, data, config.eval_batch_size, device, config.seed,
                                     config.num_classes is not None),
        "sample_ms_per_image": sample_ms_per_image(model, num_samples, device, seed=config.seed),
        "inverse_error": inverse_error(model, data, device=device, seed=config.seed),
        "parameters": count_parameters(model),
        "step": checkpoint["step"],
    }


def sample_checkpoint(path, out, num_samples=16, temperature=1.0, seed=0, device="cpu"):
    """Draw samples of a checkpoint and save them as a PNG grid.

    Args:
      path: checkpoint written by :func:`train`
      out: output PNG
      num_samples: number of images
      temperature: sampling temperature
      seed: seed of the samples
      device: device to sample on
    """
    device = _check_device(device)
    model, _ = load_checkpoint(path, device)
    images = sample(model, num_samples, temperature, seed, device)
    save_image_grid([images], out, [f"temperature {temperature}"])
