"""Training of multiscale flows on image datasets: the fitting loop, also under torchrun.

* :func:`train` builds the model and datasets of a
  :class:`~normflows_emerging.app.config.TrainConfig`
  and runs :func:`fit`: Adamax with a linear learning-rate warm-up (``LambdaLR``), uniform
  dequantisation ``x = (k + u) / num_bins``, data-dependent ActNorm initialisation on the first
  batch, periodic evaluation (test bits/dim and round-trip error), ``checkpoint.pt``,
  ``metrics.jsonl`` and ``samples.png`` in the output folder, exact resumption and
  DistributedDataParallel when started with ``torchrun``.

Models are ``normflows.MultiscaleFlow``\\ s or any module with the same two methods:
``forward(x, y)`` returning the negative log-likelihood of each example (labels ``y`` or None)
and ``sample(num_samples, y=None, temperature=None)`` returning ``(x, log_q)``.
Related modules: :mod:`~normflows_emerging.app.config` (settings, model and data),
:mod:`~normflows_emerging.app.checkpoint`, :mod:`~normflows_emerging.app.batches` (data order and
noise), :mod:`~normflows_emerging.app.run_folder`, :mod:`~normflows_emerging.app.progress`.
"""

import dataclasses
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..diagnostics import (
    inverse_error,
    is_checkable,
    non_finite_parameters,
    warn_if_not_invertible,
)
from ..likelihood import bits_per_dim_from_nll
from ..modes import eval_mode
from .batches import BatchOrder
from .checkpoint import (
    CHECKPOINT,
    load_state,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, build_model, check_resumable, load_datasets
from .errors import IncompatibleResumeError, NonFiniteError
from .evaluation import evaluate_bpd, parameter_dtype, probe_batch, save_samples
from .progress import Progress
from .run_folder import SAMPLES, append_metrics, prepare_run_folder, truncate_metrics

# Test images of the round-trip check at every evaluation.
PROBE_IMAGES = 16


def warmup_schedule(optimizer, warmup):
    """Linear learning-rate warm-up: factor ``min(1, (step + 1) / warmup)`` at step ``step``.

    Args:
      optimizer: the optimizer, at its full learning rate
      warmup: steps of warm-up (0: none)

    Returns:
      ``torch.optim.lr_scheduler.LambdaLR``; call its ``step()`` after every training step
    """
    if warmup:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def train_step(model, optimizer, x, y, num_bins):
    """One Adamax (or other optimizer) step on the mean bits/dim of a batch.

    A non-finite loss or gradient is never trained on: the gradients are dropped and the
    parameters left unchanged. Under DistributedDataParallel every process takes the same
    decision.

    Args:
      model: model (possibly wrapped in DistributedDataParallel), see the module docstring
      optimizer: its optimizer (at this step's learning rate)
      x: dequantised batch in [0, 1)
      y: labels or None
      num_bins: intensity levels of the data

    Returns:
      (mean NLL in nats, mean bits/dim) of the batch as floats, or None when the step was skipped
    """
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


def check_device(device):
    """``torch.device(device)``, refusing CUDA where there is none.

    Raises:
      ValueError: if CUDA is asked for but not available
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available")
    return device


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


def train(
    config: TrainConfig,
    out,
    device="cpu",
    resume=False,
    progress=True,
    overwrite=False,
    progress_label=None,
):
    """Train the model a config describes on its dataset (see :func:`fit`).

    Args:
      config: :class:`~normflows_emerging.app.config.TrainConfig`
      out: output folder
      device: ``"cpu"``, ``"cuda"`` or a torch.device
      resume: continue from ``out/checkpoint.pt`` (``config`` must hold its settings, see
        :func:`~normflows_emerging.app.config.check_resumable`)
      progress: show progress (a bar on a terminal, plain lines otherwise)
      overwrite: delete a previous run's files in ``out`` first
      progress_label: prefix of the progress bar and lines (None: ``"train <mixing>"``)

    Returns:
      dict of the last evaluation (see :func:`fit`)
    """
    prepare_run_folder(out, resume, overwrite, remove=False)  # refuse before loading data
    train_set, test_set = load_datasets(config)
    input_shape = tuple(train_set[0][0].shape)
    torch.manual_seed(config.seed)
    model = build_model(config, input_shape)
    return fit(
        model, train_set, test_set, config, out, device, resume, progress, overwrite, progress_label
    )


def fit(
    model,
    train_set,
    test_set,
    config,
    out,
    device="cpu",
    resume=False,
    progress=True,
    overwrite=False,
    progress_label=None,
):
    """Train a model; evaluate, checkpoint and sample every ``config.eval_every`` steps.

    Writes into ``out``: ``checkpoint.pt`` (see :mod:`~normflows_emerging.app.checkpoint`),
    ``metrics.jsonl`` (one JSON object per evaluation: step, train_bpd (mean since the previous
    evaluation), test_bpd, inverse_error (largest round-trip error on test images, data units)
    and inverse_error_worst_flow, both None for models other than normflows ones, seconds of
    training so far, skipped steps so far) and
    ``samples.png``. A round-trip error above
    :data:`~normflows_emerging.diagnostics.INVERSE_ERROR_THRESHOLD` warns once per run
    (``NumericalInvertibilityWarning``). Under ``torchrun`` the model is wrapped in
    DistributedDataParallel, each process reads its slice of every batch and only rank 0 writes
    files.

    Args:
      model: model, see the module docstring; it is moved to ``device`` and its ActNorm layers
        are initialised from the first batch unless resuming
      train_set, test_set: datasets of (integer image, label) with ``num_bins``
      config: :class:`~normflows_emerging.app.config.TrainConfig` (the model settings in it are only
        recorded)
      out: output folder
      device: ``"cpu"``, ``"cuda"`` or a torch.device
      resume: continue exactly from ``out/checkpoint.pt``
      progress: show progress (a bar on a terminal, plain lines otherwise) with the training
        batches' bits/dim
      overwrite: delete a previous run's files in ``out`` first
      progress_label: prefix of the progress bar and lines (None: ``"train <mixing>"``)

    Returns:
      dict of the last evaluation: step, train_bpd, test_bpd, inverse_error,
      inverse_error_worst_flow, seconds, skipped (None on processes other than rank 0)

    Raises:
      FileNotFoundError: when resuming without a checkpoint
      RunFolderError: when ``out`` holds a run and neither resuming nor overwriting
      CheckpointError: when the checkpoint cannot be read or does not fit the model
      IncompatibleResumeError: when resuming with different settings or a finished run
      NonFiniteError: when a step (or the ActNorm initialisation) makes a parameter NaN or
        infinite, or an evaluation's test bits/dim is not finite; training stops there and the
        last checkpoint in ``out`` is kept
      ValueError: for a bad device
    """
    out = Path(out)
    rank, world_size, device, own_group = _distributed_setup(check_device(device))
    try:
        prepare_run_folder(out, resume, overwrite, remove=rank == 0)
        label = f"train {config.mixing}" if progress_label is None else progress_label
        result = _fit(
            model,
            train_set,
            test_set,
            config,
            out,
            device,
            resume,
            progress,
            label,
            rank,
            world_size,
        )
        if world_size > 1:
            dist.barrier()
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _fit(
    model, train_set, test_set, config, out, device, resume, progress, label, rank, world_size
):
    num_bins = train_set.num_bins
    input_shape = list(train_set[0][0].shape)
    order = BatchOrder(len(train_set), config.batch_size, config.seed, rank, world_size)
    model.to(device)
    dtype = parameter_dtype(model)  # the data follow the model: float32 or float64
    optimizer = torch.optim.Adamax(model.parameters(), lr=config.lr)
    scheduler = warmup_schedule(optimizer, config.warmup)
    step, elapsed, skipped = 0, 0.0, 0
    if resume:
        path = out / CHECKPOINT
        checkpoint = read_checkpoint(path)
        check_resumable(dataclasses.asdict(checkpoint["config"]), config)
        if checkpoint["step"] >= config.steps:
            raise IncompatibleResumeError(
                f"the checkpoint is already at step {checkpoint['step']}; ask for more steps "
                f"than that (--steps) to continue"
            )
        load_state(model, checkpoint["model"], path)
        load_state(optimizer, checkpoint["optimizer"], path, "optimizer")
        load_state(scheduler, checkpoint["scheduler"], path, "learning-rate schedule")
        set_rng_state(checkpoint["rng"])
        step, elapsed, skipped = checkpoint["step"], checkpoint["elapsed"], checkpoint["skipped"]
        if rank == 0:
            truncate_metrics(out, step)
    else:
        # Data-dependent ActNorm initialisation on the first (global) batch.
        indices = order.indices(0, whole=True)
        images = torch.stack([train_set[i][0] for i in indices])
        labels = torch.tensor([train_set[i][1] for i in indices])
        x = order.noisy_batch(images, num_bins, config.seed, 0, True, dtype).to(device)
        with torch.no_grad():
            model(x, _labels(labels, config, device))
        _check_parameters(model, "the data-dependent initialisation", out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    net = model
    if world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    model.train()
    last, warned = None, False
    train_bpds = []
    probe = probe_batch(test_set, PROBE_IMAGES, config.seed, dtype).to(device)
    loader = DataLoader(
        train_set, batch_sampler=order.batches(step, config.steps), num_workers=config.workers
    )
    bar = Progress(config.steps, step, label, progress and rank == 0)
    start = time.perf_counter() - elapsed
    for images, labels in loader:
        x = order.noisy_batch(images, num_bins, config.seed, step, dtype=dtype).to(device)
        result = train_step(net, optimizer, x, _labels(labels, config, device), num_bins)
        scheduler.step()
        step += 1
        if result is None:
            skipped += 1
            if rank == 0:
                bar.write(
                    f"step {step}: non-finite loss or gradient, step skipped ({skipped} so far)"
                )
        else:
            train_bpds.append(result[1])
            _check_parameters(model, f"step {step}", out)
        bar.update(step, result and result[1])
        if step % config.eval_every == 0 or step == config.steps:
            seconds = time.perf_counter() - start
            if rank == 0:
                eval_start = time.perf_counter()
                rng = rng_state(order, step)  # before the evaluation draws from it
                errors = {"model": None, "worst_flow": None}
                if is_checkable(model):
                    with eval_mode(model):
                        errors = inverse_error(model, probe)
                last = {
                    "step": step,
                    "train_bpd": statistics.fmean(train_bpds) if train_bpds else None,
                    "test_bpd": evaluate_bpd(
                        model,
                        test_set,
                        config.eval_batch_size,
                        device,
                        config.seed,
                        config.num_classes is not None,
                    ),
                    "inverse_error": errors["model"],
                    "inverse_error_worst_flow": errors["worst_flow"],
                    "seconds": round(seconds, 3),
                    "skipped": skipped,
                }
                if not math.isfinite(last["test_bpd"]):
                    raise NonFiniteError(
                        f"step {step}: test bits/dim is {last['test_bpd']}, the model diverged; "
                        f"training stopped without saving, {out / CHECKPOINT} (if any) is the "
                        f"last good state; lower the learning rate or lengthen the warm-up"
                    )
                # The checkpoint comes last: a crash before it resumes from the previous one,
                # which drops this metrics line and redoes the samples.
                append_metrics(out, last)
                try:
                    save_samples(model, out / SAMPLES, seed=config.seed, device=device)
                except NonFiniteError as err:  # finite parameters, but sampling overflows
                    (out / SAMPLES).unlink(missing_ok=True)  # never show an older model's
                    bar.write(f"step {step}: {SAMPLES} not written: {err}")
                save_checkpoint(
                    out / CHECKPOINT,
                    model,
                    optimizer,
                    scheduler,
                    step,
                    config,
                    rng,
                    {
                        "input_shape": input_shape,
                        "num_bins": num_bins,
                        "elapsed": seconds,
                        "skipped": skipped,
                    },
                )
                if errors["model"] is not None:
                    warned = warned or warn_if_not_invertible(errors, f"at step {step}")
                error = "n/a" if errors["model"] is None else f"{errors['model']:.2g}"
                bar.write(
                    f"step {step}: test bits/dim {last['test_bpd']:.4f}, round-trip error {error}"
                )
                start += time.perf_counter() - eval_start  # count training time only
            train_bpds = []
    bar.close()
    return last


def _check_parameters(model, when, out):
    """Stop training (before anything is saved) if ``when`` made a parameter non-finite."""
    bad = non_finite_parameters(model)
    if bad:
        raise NonFiniteError(
            f"{when} made {len(bad)} parameter tensors NaN or infinite (e.g. {bad[0]!r}); "
            f"training stopped without saving, {out / CHECKPOINT} (if any) is the last good "
            f"state; lower the learning rate or lengthen the warm-up"
        )


def _labels(labels, config, device):
    return labels.to(device) if config.num_classes is not None else None
