"""A process-wide count of optimizer steps, so that caches see writes no version counter shows.

``torch.optim`` optimizers with ``fused=True`` (Adam, AdamW, SGD, Adagrad, on CPU and CUDA)
write the parameters in one kernel that bumps no version counter, and optimizers outside
torch (apex, DeepSpeed) may do the same. Every ``torch.optim.Optimizer`` subclass runs torch's
global step hooks, so this module registers one before and one after every step, each
advancing the count: a cache entry filled while the count had another value is stale.
"""

import itertools
import threading

from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

_lock = threading.Lock()
_counter = itertools.count(1)
_count = 0


def optimizer_steps() -> int:
    """A number that changes whenever an optimizer step starts or ends, in any thread."""
    return _count


def _advance(optimizer, args, kwargs) -> None:
    global _count
    with _lock:  # two threads' steps must not write their counts out of order
        _count = next(_counter)


register_optimizer_step_pre_hook(_advance)
register_optimizer_step_post_hook(_advance)
