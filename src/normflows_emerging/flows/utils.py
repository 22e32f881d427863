"""Input and output checks and small constructors shared by the flows of this package.

Dtype and device rule (every layer): the input must have the dtype and device of the layer's
parameters. A mismatch is a ``TypeError`` (dtype) or ``ValueError`` (device) naming both, never
a silent cast: convert the layer (``layer.double()``, ``layer.to(device)``) or the input. Only
float32 and float64 are supported (torch lacks several of the layers' operations in half
precision); other dtypes are a ``TypeError`` naming these two.

Empty batches (batch 0, or an image side 0 where the layer allows it) are valid in both
directions: every layer returns an empty output of the same shape and a log-det of shape (batch,).
"""

import functools
import math
import warnings

import torch
from normflows.flows import Invertible1x1Conv

from ..solve import device
from ..solve.checks import check_strided
from ..solve.transforms import under_transform

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_image(x: torch.Tensor, num_channels: int, layer: str, like: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is an image batch the layer can take.

    Args:
      x: tensor that should have shape (batch, num_channels, height, width)
      num_channels: channel count the layer was built for
      layer: the layer's name, used in the message
      like: one of the layer's parameters; ``x`` must have its dtype and device

    Raises:
      TypeError: if ``x`` is not a dense float32/float64 tensor or its dtype differs from
        ``like``'s
      ValueError: if ``x`` is not 4-D, has the wrong number of channels or lives on another
        device than ``like``
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    check_strided(x, f"{layer}'s input")
    if x.dtype not in SUPPORTED_DTYPES:
        raise unsupported_dtype(layer, x)
    if x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(
            f"{layer} expects a tensor of shape (batch, {num_channels}, height, width), "
            f"got shape {tuple(x.shape)}"
        )
    if like.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{layer} supports float32 and float64 parameters only, it has {like.dtype}; "
            f"convert it (e.g. layer.float())"
        )
    if x.dtype != like.dtype:
        raise TypeError(
            f"{layer} has {like.dtype} parameters but got a {x.dtype} input; convert one of them "
            f"(e.g. layer.to({x.dtype}) or x.to({like.dtype}))"
        )
    if x.device != like.device:
        raise ValueError(
            f"{layer} has parameters on {like.device} but got an input on {x.device}; move one "
            f"of them (e.g. layer.to(x.device))"
        )


def unsupported_dtype(layer: str, x: torch.Tensor) -> TypeError:
    """The error for an input of a dtype other than float32/float64; where ``torch.autocast``
    is on and the dtype is its float16/bfloat16, it says that autocast lowered the input."""
    message = f"{layer} supports float32 and float64 tensors only, got dtype {x.dtype}"
    kind = x.device.type
    if x.dtype in (torch.float16, torch.bfloat16) and _autocast_enabled(kind):
        message += (
            f": torch.autocast (on for {kind}) lowered the data to {x.dtype} in a layer before "
            f"this one that runs under it (e.g. normflows' Invertible1x1Conv or a coupling "
            f"network); call the model outside autocast, e.g. inside "
            f"`with torch.autocast({kind!r}, enabled=False):`"
        )
    return TypeError(message)


def _autocast_enabled(kind: str) -> bool:
    try:
        return torch.is_autocast_enabled(kind)
    except RuntimeError:  # a device type autocast does not have ("meta")
        return False


def is_empty(x: torch.Tensor) -> bool:
    """Whether the (batch, C, H, W) batch has no element (the layers then skip their work)."""
    return x.numel() == 0


def empty_result(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and log-det of any layer on an empty batch: an empty copy, and zeros of shape
    (batch,) (an empty Jacobian has determinant 1)."""
    return x.clone(), x.new_zeros(x.shape[0])


def check_finite_output(output: torch.Tensor, given: torch.Tensor, layer: str) -> None:
    """Raise if a sampling step turned a finite input into a non-finite output (eager CPU calls).

    One reduction and one Python float in the common case (the sum of a finite output is finite
    unless it overflows; only then are the elements looked at). On an accelerator (see
    :func:`normflows_emerging.solve.device.on_accelerator`) nothing is checked: reading the
    result would synchronise the host with the device once per layer. There a layer returns the
    inf/NaN values, and ``ImageMultiscaleFlow.sample`` checks its samples once per call. Under
    ``torch.func`` transforms (which cannot read a value) nothing is checked either.

    Args:
      output: the layer's output
      given: the layer's input
      layer: the layer's name, used in the message

    Raises:
      torch.linalg.LinAlgError: if ``output`` has inf or NaN entries while ``given`` has none
    """
    if device.on_accelerator(output) or under_transform(output):
        return
    with torch.no_grad():
        if math.isfinite(output.sum().item()):
            return
        if torch.isfinite(output).all() or not torch.isfinite(given).all():
            return
    raise torch.linalg.LinAlgError(
        f"{layer}: inverting the layer turned a finite input into inf/NaN values; its current "
        f"parameters make the inverse numerically singular (overflow), so no sample is returned"
    )


def register_constant_buffer(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Register ``value`` as a buffer that is not saved and is dropped from loaded checkpoints.

    For constants of the constructor arguments (masks): a checkpoint must not be able to replace
    them. Checkpoints written while they were still saved load unchanged (also with
    ``strict=True``): the stored copy is ignored.
    """
    module.register_buffer(name, value, persistent=False)
    # a partial of a module-level function, not a closure: the module stays picklable
    module.register_load_state_dict_pre_hook(functools.partial(_drop_stored_constant, name))


def _drop_stored_constant(name, module, state_dict, prefix, *args):
    state_dict.pop(prefix + name, None)


def plu_1x1_conv(num_channels: int) -> Invertible1x1Conv:
    """normflows' LU-parametrised ``Invertible1x1Conv``, built without its ``torch.lu`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")
        return Invertible1x1Conv(num_channels, use_lu=True)
