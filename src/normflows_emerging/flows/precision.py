"""Exact float32 in the layers: no TF32 and no autocast inside them.

The two directions of a layer must stay each other's inverse to float32 rounding: the density
direction is a convolution, the sampling direction a solve. On Ampere and later GPUs PyTorch runs
float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``, a 10-bit mantissa),
and matrix products too where asked (``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision("high")``); an emerging round trip is then off by about
1.5e-3 instead of 2e-6. Under ``torch.autocast`` they run in float16 or bfloat16.

So every layer of this package (its ``forward`` and ``inverse``, decorated with
:func:`full_precision`) computes in its parameters' dtype whatever the global settings:

* on an accelerator, float32 convolutions and matrix products run in IEEE float32 during the
  call. The flags are process-wide: TF32 is turned off when the first layer call (in any
  thread) starts and the user's settings come back when the last one ends (see
  :func:`ieee_float32`); CUDA work that other threads queue meanwhile also runs without TF32;
* under ``torch.autocast`` (CUDA float16/bfloat16, CPU bfloat16) the layer runs with autocast
  off, returns its output and log-det in its own dtype (float32), equal to its result outside
  autocast. An input that autocast lowered to float16/bfloat16 (say a coupling's output) is
  converted to the layer's dtype first: it has already lost its precision, the layer adds no
  further rounding. Outside autocast such an input is a ``TypeError`` (the layers' dtype rule).

Under ``torch.compile`` the flags are not switched inside the compiled graph: set
``torch.backends.cudnn.allow_tf32 = False`` yourself when compiling a model for a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

from ..solve import device

_LOWER_PRECISION = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def ieee_float32():
    """Inside, float32 convolutions (cuDNN) and matrix products (cuBLAS) run in full float32.

    The TF32 flags are process-wide, and several threads may be inside layer calls at once, so
    this is a lock-protected, reference-counted switch: the first block to enter (in any thread)
    saves the user's settings and turns TF32 off, the last one to leave restores them. TF32
    stays off from the first entry to the last exit, in every interleaving of any number of
    threads, and the user's settings come back exactly (unless the user changed them while a
    block was open: then the user's newer settings are kept). CUDA work that other threads
    queue while a layer call is running also runs without TF32.

    The flags are set through torch's older switches (``torch.backends.cudnn.allow_tf32``,
    ``torch.backends.cuda.matmul.allow_tf32``), which keep the older and the newer
    (``fp32_precision``) settings consistent: torch refuses a CUDA matrix product when the two
    disagree. Every setting is restored on exit, also when the block raises.
    """
    _enter_ieee_float32()
    try:
        yield
    finally:
        _leave_ieee_float32()


_switch_lock = threading.Lock()
_holders = 0  # blocks inside ieee_float32, in all threads
_user_settings = None  # the settings the first block found, restored by the last one
_ieee_settings = None  # the settings the first block made, to see whether the user changed them


def _enter_ieee_float32():
    global _holders, _user_settings, _ieee_settings
    with _switch_lock:
        if _holders == 0:
            _user_settings = _settings()
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            _ieee_settings = _settings()
        _holders += 1


def _leave_ieee_float32():
    global _holders, _user_settings, _ieee_settings
    with _switch_lock:
        _holders -= 1
        if _holders == 0:
            if _settings() == _ieee_settings:
                _restore(_user_settings)
            _user_settings = _ieee_settings = None


def _settings():
    """The TF32 settings: the older switches as torch reads them (None where it refuses to
    because the user mixed the two APIs) and the newer ``fp32_precision`` ones (None before
    torch 2.9)."""
    try:
        cudnn = torch.backends.cudnn.allow_tf32
    except RuntimeError:
        cudnn = None
    try:
        matmul = torch.get_float32_matmul_precision()
    except RuntimeError:
        matmul = None
    newer = None
    if hasattr(torch.backends.cudnn, "conv"):
        newer = [
            (torch.backends.cudnn.conv, torch.backends.cudnn.conv.fp32_precision),
            (torch.backends.cudnn.rnn, torch.backends.cudnn.rnn.fp32_precision),
            (torch.backends.cuda.matmul, torch.backends.cuda.matmul.fp32_precision),
        ]
    return cudnn, matmul, newer


def _restore(saved):
    """Set the settings from :func:`_settings` back: the older switches first, then any newer
    one that they did not bring back (only those: torch tracks which API set what)."""
    cudnn, matmul, newer = saved
    if cudnn is not None:
        torch.backends.cudnn.allow_tf32 = cudnn
    if matmul is not None:
        torch.set_float32_matmul_precision(matmul)
    for settings, value in newer or ():
        if settings.fp32_precision != value:
            settings.fp32_precision = value


def full_precision(method):
    """Decorate a layer's ``forward``/``inverse(x, ...)``: it runs as the module docstring says.

    On the CPU outside autocast this adds one flag lookup to the call.
    """

    @functools.wraps(method)
    def call(self, x, *args, **kwargs):
        if not isinstance(x, torch.Tensor):
            return method(self, x, *args, **kwargs)
        kind = "cpu" if x.is_cpu else x.device.type
        if not _autocast_enabled(kind):
            return _exact(method, self, x, *args, **kwargs)
        with torch.autocast(kind, enabled=False):
            if x.dtype in _LOWER_PRECISION:
                x = x.to(_parameter_dtype(self, x))
            return _exact(method, self, x, *args, **kwargs)

    # One code object per decorated method: torch.compile keeps its compiled variants per code
    # object and stops compiling one after a few (8), so a wrapper shared by every layer's
    # forward and inverse would make the ninth compiled layer method run eagerly.
    call.__code__ = call.__code__.replace(co_name=method.__name__)
    return call


def _autocast_enabled(kind: str) -> bool:
    """Whether autocast is on for the device type (False for types autocast has not, "meta")."""
    try:
        return torch.is_autocast_enabled(kind)
    except RuntimeError:
        return False


def _exact(method, self, x, *args, **kwargs):
    if device.on_accelerator(x) and not torch.compiler.is_compiling():
        with ieee_float32():
            return method(self, x, *args, **kwargs)
    return method(self, x, *args, **kwargs)


def _parameter_dtype(module: torch.nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype of the module's first parameter (x's own for a module without parameters)."""
    return next(module.parameters(), x).dtype
