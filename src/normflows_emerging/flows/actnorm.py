"""ActNorm whose data-dependent initialisation survives degenerate batches and reads no device
value once initialised."""

from __future__ import annotations

import threading

import normflows as nf
import torch

from .utils import SUPPORTED_DTYPES, unsupported_dtype

# Initialisations are rare (once per layer): one lock for all ActNorms keeps them picklable.
_INITIALISATION_LOCK = threading.Lock()


class ActNorm(nf.flows.ActNorm):
    """``normflows.flows.ActNorm`` (Glow's activation normalisation, Kingma & Dhariwal 2018,
    https://arxiv.org/abs/1807.03039) with a safe initialisation and a host-side "initialised?"
    flag; the same parameters, buffer and state-dict keys, so normflows checkpoints load.

    ``inverse`` (density direction) computes ``(x - t) exp(-s)`` and log|det| =
    ``-(H W) sum(s)`` for (batch, C, H, W) input; ``forward`` (sampling) undoes it. The first
    batch either direction sees sets ``s`` and ``t`` so that that batch comes out with zero mean
    and unit standard deviation per channel (normflows' rule, ``log(std + 1e-6)``), except for a
    channel whose batch does not define a scale: fewer than two values (one example of one
    pixel), all values equal, or a standard deviation below ``min_std``. normflows divides such
    a channel by ``std + 1e-6``, a scale of up to 1e6 that later makes every likelihood useless
    (finite, so nothing warns); here the channel is only centred (scale 1).

    Whether the layer is initialised is a Python flag that follows the ``data_dep_init_done``
    buffer (set by the initialisation and by ``load_state_dict``), so a call reads no device
    value (no CUDA synchronisation); the initialisation itself reads one.

    Input: (batch, *shape) where an axis of size 1 in ``shape`` may have any size (it is
    averaged over by the initialisation), e.g. (batch, C, H, W) for shape (C, 1, 1), of the
    parameters' dtype (float32 or float64) and device. log_det has shape (batch,), like every
    other layer's; normflows' models add it to their (batch,) log-densities. ``context`` is
    accepted for normflows' interface and ignored (the layer is unconditional).
    """

    def __init__(self, shape, min_std: float = 1e-3):
        """Constructor

        Args:
          shape: shape of ``s`` and ``t`` without the batch dimension, e.g. (C, 1, 1)
          min_std: smallest standard deviation of a channel's first batch that sets its scale

        Raises:
          ValueError: if ``min_std`` is not a finite number > 0
        """
        super().__init__(shape)
        min_std = float(min_std)
        if not (min_std > 0 and min_std < float("inf")):
            raise ValueError(f"min_std must be a finite number > 0, got {min_std!r}")
        self.min_std = min_std
        self.initialised = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.initialised = bool(self.data_dep_init_done > 0)

    def _initialise_once(self, z: torch.Tensor, sampling: bool) -> None:
        """Initialise from ``z`` unless another call (in any thread) has done it already.

        Check and initialisation are one step under a lock, and the flag is set only once ``s``
        and ``t`` hold their final values: two threads' first calls never both initialise, nor
        does one of them run with half-set values.
        """
        with _INITIALISATION_LOCK:
            if not self.initialised:
                self._initialise(z, sampling)

    @torch.no_grad()
    def _initialise(self, z: torch.Tensor, sampling: bool) -> None:
        """Set ``s`` and ``t`` from the first batch: the density direction maps it to zero mean
        and unit scale per channel, or with ``sampling`` the sampling direction does (normflows'
        two rules).

        Raises:
          ValueError: if the batch is empty or holds inf or NaN values
        """
        if z.numel() == 0:
            raise ValueError(f"{type(self).__name__}: the first batch initialises it and is empty")
        if not torch.isfinite(z).all():
            raise ValueError(
                f"{type(self).__name__}: the first batch initialises it and holds inf or NaN values"
            )
        count = z.numel() // self.s.numel()
        mean = z.mean(dim=self.batch_dims, keepdim=True)
        if count < 2:  # no spread to measure (torch.std would give NaN)
            log_scale = torch.zeros_like(self.s)
        else:
            std = z.std(dim=self.batch_dims, keepdim=True)
            log_scale = torch.where(std >= self.min_std, torch.log(std + 1e-6), 0.0)
        if sampling:  # normflows' forward rule: the first batch comes out standardised
            log_scale, mean = -log_scale, mean * -torch.exp(-log_scale)
        self.s.data.copy_(log_scale)
        self.t.data.copy_(mean)
        self.data_dep_init_done.fill_(1.0)
        self.initialised = True

    def _check_input(self, z: torch.Tensor) -> None:
        """Raise unless ``z`` is a (batch, *shape) tensor of the parameters' dtype and device.

        Raises:
          TypeError: not a tensor, not float32/float64, or another dtype than the parameters'
          ValueError: a shape that does not match ``shape`` (no silent broadcasting) or another
            device than the parameters'
        """
        name = type(self).__name__
        shape = tuple(self.s.shape[1:])
        expected = ", ".join("*" if size == 1 else str(size) for size in shape)
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(z).__name__}")
        if z.dtype not in SUPPORTED_DTYPES:
            raise unsupported_dtype(name, z)
        if z.dim() != self.s.dim() or any(
            size != 1 and z.shape[axis] != size for axis, size in enumerate(shape, 1)
        ):
            raise ValueError(
                f"{name} of shape {shape} expects a tensor of shape (batch, {expected}) "
                f"(* any size), got shape {tuple(z.shape)}"
            )
        if z.dtype != self.s.dtype:
            raise TypeError(
                f"{name} has {self.s.dtype} parameters but got a {z.dtype} input; convert one "
                f"of them (e.g. layer.to({z.dtype}) or x.to({self.s.dtype}))"
            )
        if z.device != self.s.device:
            raise ValueError(
                f"{name} has parameters on {self.s.device} but got an input on {z.device}; "
                f"move one of them (e.g. layer.to(x.device))"
            )

    def _log_det(self, z: torch.Tensor) -> torch.Tensor:
        """log|det| of the sampling direction, shape (batch,): sum(s) times the number of
        positions s is shared over (host-side sizes only)."""
        positions = 1
        for axis in self.batch_dims[1:]:
            positions *= z.shape[axis]
        return (positions * self.s.sum()).expand(z.shape[0]).clone()

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction ``z exp(s) + t`` (see the class docstring); the first batch
        initialises the layer so that it is mapped to zero mean, unit scale.

        Returns:
          output of z's shape and log|det| of shape (batch,)

        Raises:
          TypeError, ValueError: see :meth:`_check_input`; ValueError for an empty or non-finite
            first batch
        """
        self._check_input(z)
        if not self.initialised:
            self._initialise_once(z, sampling=True)
        return z * torch.exp(self.s) + self.t, self._log_det(z)

    def inverse(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction ``(z - t) exp(-s)`` (see the class docstring); the first batch
        initialises the layer so that it comes out with zero mean, unit scale.

        Returns:
          output of z's shape and log|det| of shape (batch,)

        Raises:
          TypeError, ValueError: see :meth:`_check_input`; ValueError for an empty or non-finite
            first batch
        """
        self._check_input(z)
        if not self.initialised:
            self._initialise_once(z, sampling=False)
        return (z - self.t) * torch.exp(-self.s), -self._log_det(z)
