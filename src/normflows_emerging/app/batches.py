"""Which examples each training step reads, and their dequantisation noise.

Both depend only on (seed, step), so a resumed run, or one split over several processes, reads
exactly the data and noise the uninterrupted single-process run would have read.
"""

import torch

from .checkpoint import DATA_ORDER, TRAIN_NOISE, derive_seed
from .evaluation import dequantize


class BatchOrder:
    """Shuffled training batches as a function of the step number.

    Every epoch is a fresh permutation of the dataset, seeded by (seed, epoch), cut into global
    batches of ``batch_size * world_size`` examples (the incomplete last one is dropped); process
    ``rank`` takes its slice of each.

    Args:
      num_examples: size of the training set
      batch_size: examples per step and process
      seed: seed of the order
      rank: index of this process
      world_size: number of processes

    Raises:
      ValueError: if the training set holds fewer examples than one global batch
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
        return {
            "epoch": step // self.steps_per_epoch,
            "position": step % self.steps_per_epoch * self.global_batch,
        }

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
                derive_seed(self.seed, DATA_ORDER, state["epoch"])
            )
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

    def noisy_batch(self, images, num_bins, seed, step, whole=False, dtype=torch.float32):
        """Dequantise a step's batch with the noise of (seed, step).

        The noise is drawn for the whole global batch and each process takes its slice, so the
        batches do not depend on the number of processes.

        Args:
          images: integer images of this process's slice (of the whole batch with ``whole``)
          num_bins: intensity levels of the data
          seed: seed of the run
          step: step number
          whole: ``images`` is the whole global batch
          dtype: floating-point dtype of the result, the model's (the noise is the same)

        Returns:
          tensor of ``dtype`` in [0, 1), see :func:`~normflows_emerging.app.evaluation.dequantize`
        """
        generator = torch.Generator().manual_seed(derive_seed(seed, TRAIN_NOISE, step))
        noise = torch.rand((self.global_batch, *images.shape[1:]), generator=generator)
        if not whole:
            noise = noise[self.offset : self.offset + len(images)]
        return dequantize(images, num_bins, noise, dtype)


class _StepBatches:
    """Sized iterable over the index lists of a range of steps."""

    def __init__(self, order, start, stop):
        self.order, self.start, self.stop = order, start, stop

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        return (self.order.indices(step) for step in range(self.start, self.stop))
