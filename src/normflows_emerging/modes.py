"""Switching a module to evaluation mode for a while."""

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put a module (and all its submodules) in eval mode, then restore each one's own mode.

    The previous modes come back also when the body raises, and submodules that were in another
    mode than their parent keep it (``module.train(was_training)`` would overwrite them).

    Args:
      module: any ``torch.nn.Module``

    Yields:
      the module, in eval mode
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
