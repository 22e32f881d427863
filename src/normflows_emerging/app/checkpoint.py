"""Checkpoint files: writing, reading, format version and the random state of a run.

* :func:`derive_seed` and the stream tags (``DATA_ORDER``, ``TRAIN_NOISE``, ``EVAL_NOISE``,
  ``SAMPLING``) derive independent random streams from one seed.
* :func:`rng_state` and :func:`set_rng_state` capture and restore the global random states
  (torch, CUDA, NumPy, Python) together with the data order, for exact resumption.
* :func:`atomic_write` writes a file so that a crash at any moment leaves either the old or the
  new file, never a part; :func:`save_checkpoint` writes a checkpoint with it.
* :func:`read_checkpoint` and :func:`load_checkpoint` read one back; every problem with the file
  is a :class:`~normflows_emerging.app.errors.CheckpointError` naming the file.

A checkpoint is a dict saved by ``torch.save`` and read with ``weights_only=True`` (loading one
runs no code): ``format_version``, ``model``, ``optimizer``, ``scheduler``, ``step``, ``config``
(a :class:`~normflows_emerging.app.config.TrainConfig` as a dict), ``rng``, ``input_shape``,
``num_bins``, ``elapsed``, ``skipped``.
"""

import dataclasses
import os
import random
import secrets
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..diagnostics import non_finite_parameters
from .config import TrainConfig, build_model
from .errors import CheckpointError, NonFiniteError

CHECKPOINT = "checkpoint.pt"
# Version of the checkpoint layout; bump it when the layout changes.
FORMAT_VERSION = 2
REQUIRED_KEYS = (
    "format_version",
    "model",
    "optimizer",
    "scheduler",
    "step",
    "config",
    "rng",
    "input_shape",
    "num_bins",
)

# Tags that keep the random streams derived from one seed apart.
DATA_ORDER, TRAIN_NOISE, EVAL_NOISE, SAMPLING = range(4)


def derive_seed(*keys):
    """A 63-bit seed derived from a tuple of non-negative ints (seed, stream tag, step, ...).

    Args:
      *keys: non-negative ints

    Returns:
      int usable with ``torch.Generator.manual_seed``
    """
    words = np.random.SeedSequence(list(keys)).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


def atomic_write(path, write) -> None:
    """Write a file all at once: into a temporary file, flushed to disk, then renamed.

    A crash (even SIGKILL or power loss) leaves either the old file or the complete new one,
    plus at most a stray ``.<name>.<random>.tmp`` file. The new file gets the permissions of
    any newly created file (0666 minus the user's umask).

    Args:
      path: file to write
      write: function called with the temporary file opened for binary writing

    Raises:
      ValueError: if ``path`` is empty or names a folder (nothing is written)
    """
    if not str(path):
        raise ValueError("the output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open with mode 0o666 honours the umask; tempfile.mkstemp would force 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder):
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state(order, step):
    """The global random states and the data-order state at ``step``.

    NumPy's state is stored as a tensor, so that checkpoints load with ``weights_only=True``.
    """
    # The legacy global NumPy stream is what user code and libraries draw from: save it as is.
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ],
        "python": random.getstate(),
        "data": order.state(step),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore the random states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    numpy_state = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    np.random.set_state(numpy_state)  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, optimizer, scheduler, step, config, rng, extra=None):
    """Write a checkpoint atomically (see :func:`atomic_write`).

    Args:
      path: output file
      model: the (unwrapped) model
      optimizer: its optimizer
      scheduler: its learning-rate scheduler
      step: number of steps done
      config: :class:`~normflows_emerging.app.config.TrainConfig`
      rng: random and data-order state, see :func:`rng_state`
      extra: further entries (input shape, number of bins, elapsed seconds, ...)

    Raises:
      NonFiniteError: if a parameter of the model is NaN or infinite (nothing is written)
    """
    bad = non_finite_parameters(model)
    if bad:
        raise NonFiniteError(
            f"not saving {path}: {len(bad)} parameter tensors of the model are "
            f"non-finite (e.g. {bad[0]!r})"
        )
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "config": dataclasses.asdict(config),
        "rng": rng,
        **(extra or {}),
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def checkpoint_file(path) -> Path:
    """The checkpoint file that ``path`` names: ``path`` itself, or ``checkpoint.pt`` in it when
    it is a folder (a run's output folder).

    Raises:
      FileNotFoundError: if there is no such file, or the folder holds no ``checkpoint.pt``
    """
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise FileNotFoundError(f"no checkpoint at {path}: the folder holds no {CHECKPOINT}")
        return path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def read_checkpoint(path) -> dict:
    """Read a checkpoint written by training (its tensors on the CPU).

    Args:
      path: checkpoint file, or a run folder (training's output folder) holding ``checkpoint.pt``

    Returns:
      the checkpoint dict, with ``config`` as a :class:`~normflows_emerging.app.config.TrainConfig`

    Raises:
      FileNotFoundError: if there is no such file, or the folder holds no ``checkpoint.pt``
      CheckpointError: if the file is truncated or corrupted (every byte is checked against the
        archive's CRCs), is not such a checkpoint (also: an entry of the wrong type, a negative
        step, fewer than 2 intensity levels), has another format version, or holds an invalid
        config (the message names the file)
    """
    path = checkpoint_file(path)
    try:
        # torch.load does not check the zip archive's CRCs: flipped bytes in a tensor would
        # load as silently wrong weights.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(
                f"{path} is corrupted: its entry {damaged} fails the archive's header or CRC check"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 -- torch.load raises many types for damaged files
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint (truncated, corrupted or "
            f"not written by this package): {_first_line(err)}"
        ) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by normflows_emerging")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, "
            f"{'newer than' if newer else 'other than'} the version {FORMAT_VERSION} this "
            f"normflows_emerging reads{'; upgrade normflows_emerging' if newer else ''}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is missing the checkpoint entries {missing}")
    problem = _entry_problem(checkpoint)
    if problem:
        raise CheckpointError(
            f"{path} is not a checkpoint written by normflows_emerging (damaged?): {problem}"
        )
    try:
        checkpoint["config"] = TrainConfig(**checkpoint["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds an invalid training config: {err}") from None
    return checkpoint


def _entry_problem(checkpoint):
    """One line on the first entry of a checkpoint dict of the wrong type or value ("" if none).

    A checkpoint written by :func:`save_checkpoint` holds dicts for the states and the config,
    a tensor for every model entry, a step >= 0, at least 2 intensity levels and a
    (channels, height, width) input shape of positive ints.
    """
    for key in ("model", "optimizer", "scheduler", "config", "rng"):
        if not isinstance(checkpoint[key], dict):
            return f"its entry {key!r} is {_describe(checkpoint[key])}, expected a dict"
    not_tensors = [k for k, v in checkpoint["model"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        key = not_tensors[0]
        value = checkpoint["model"][key]
        return f"its model entry {key!r} is {_describe(value)}, expected a tensor"
    checks = (
        ("step", _is_int(checkpoint["step"], 0), "an integer >= 0"),
        ("num_bins", _is_int(checkpoint["num_bins"], 2), "an integer >= 2"),
        (
            "input_shape",
            isinstance(checkpoint["input_shape"], (list, tuple, torch.Size))
            and len(checkpoint["input_shape"]) == 3
            and all(_is_int(n, 1) for n in checkpoint["input_shape"]),
            "(channels, height, width) of positive integers",
        ),
    )
    for key, fine, expected in checks:
        if not fine:
            return f"its entry {key!r} is {_describe(checkpoint[key])}, expected {expected}"
    return ""


def _is_int(value, low):
    """Whether ``value`` is an int (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _describe(value):
    """A short description of a value for a message: its repr, cut, or its type."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def load_state(module, state, path, what="model") -> None:
    """``module.load_state_dict(state)``, with a one-line error naming the file on a mismatch.

    Args:
      module: model, optimizer or scheduler
      state: its state dict from the checkpoint
      path: the checkpoint file (for the message)
      what: what the module is (for the message)

    Raises:
      CheckpointError: if the state does not fit the module (another architecture)
    """
    if isinstance(module, torch.nn.Module):
        problem = _state_mismatch(module.state_dict(), state)
        if problem:
            raise CheckpointError(
                f"{path}: the saved {what} does not fit the {what} built from "
                f"its settings (another architecture?): {problem}"
            )
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: the saved {what} does not fit the {what} built from its "
            f"settings (another architecture?): {_first_line(err)}"
        ) from None


def _state_mismatch(expected, saved):
    """One line on how two state dicts differ in names and shapes ("" if they fit)."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [k for k in expected if k in saved and expected[k].shape != saved[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} entries missing (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {key!r}: saved "
            f"{tuple(saved[key].shape)}, expected {tuple(expected[key].shape)})"
        )
    return ", ".join(parts)


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint and rebuild its model.

    Args:
      path: checkpoint file, or a run folder holding ``checkpoint.pt``
      device: device to put the model on

    Returns:
      (model in eval mode, checkpoint dict with ``config`` as a ``TrainConfig``)

    Raises:
      FileNotFoundError: if there is no such file (see :func:`read_checkpoint`)
      CheckpointError: if the file is not a usable checkpoint (see :func:`read_checkpoint`),
        its parameters do not fit the model its config describes or are NaN or infinite
    """
    path = checkpoint_file(path)
    checkpoint = read_checkpoint(path)
    try:
        model = build_model(checkpoint["config"], checkpoint["input_shape"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its settings do not build a model: {err}") from None
    load_state(model, checkpoint["model"], path)
    bad = non_finite_parameters(model)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} parameter tensors are NaN or infinite (e.g. "
            f"{bad[0]!r}); the run that wrote it diverged"
        )
    return model.to(device).eval(), checkpoint


def _first_line(err):
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
