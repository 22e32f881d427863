"""Checkpoint files and the random state of a run.

* :func:`derive_seed` and the stream tags (``DATA_ORDER``, ``TRAIN_NOISE``, ``EVAL_NOISE``,
  ``SAMPLING``) derive independent random streams from one seed.
* :func:`rng_state` and :func:`set_rng_state` capture and restore the global random states
  (torch, CUDA, NumPy, Python) together with the data order, for exact resumption.
* :func:`atomic_write` writes a file through a temporary file and a rename;
  :func:`save_checkpoint` writes a checkpoint with it. Checkpoints are read back by
  ``normflows_emerging.train.read_checkpoint`` and ``load_checkpoint``, next to the
  ``TrainConfig`` and model builder they need.
"""

import dataclasses
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

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


def atomic_write(path, write):
    """Call ``write(temporary path)`` then rename the file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def rng_state(order, step):
    """The global random states and the data-order state at ``step``."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "data": order.state(step),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, optimizer, step, config, rng, extra=None):
    """Write a checkpoint atomically (temporary file, then rename).

    Args:
      path: output file
      model: the (unwrapped) model
      optimizer: its optimizer
      step: number of steps done
      config: :class:`TrainConfig`
      rng: random and data-order state, see ``rng_state``
      extra: further entries (input shape, number of bins, elapsed seconds, ...)
    """
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": dataclasses.asdict(config),
        "rng": rng,
        **(extra or {}),
    }
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
