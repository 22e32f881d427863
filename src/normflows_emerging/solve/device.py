"""What a tensor's device costs the host: whether reading its values waits for a launch queue.

On a CPU tensor reading a value (``.item()``, ``bool(t)``, ``torch.equal``, ``nonzero``) is a
memory read. On a CUDA tensor it synchronises: the host waits until every queued kernel has
run, which at batch 1 costs more than the kernels. So the layers and solves read device values
only where this module says it is cheap, and otherwise leave the checks to one finiteness check
per model sample (``ImageMultiscaleFlow.sample``).

Everything that depends on the device type asks :func:`on_accelerator` through this module (as
``device.on_accelerator``), so that a test can make CPU tensors take the accelerator's code path.
"""

import torch


def on_accelerator(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lives on a queued device (CUDA, ...), not on the CPU.

    There, reading a value synchronises the host with the device, and float32 products may run
    in TF32 (see :mod:`normflows_emerging.flows.precision`).
    """
    return not tensor.is_cpu
