"""ActNorm whose data-dependent initialisation survives degenerate batches and reads no device
value once initialised."""

from __future__ import annotations

import normflows as nf
import torch


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

    @torch.no_grad()
    def _initialise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``s`` and ``t`` for the density direction from the first batch; return the
        per-channel mean and log-scale used.

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
        self.s.data.copy_(log_scale)
        self.t.data.copy_(mean)
        self.data_dep_init_done.fill_(1.0)
        self.initialised = True

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction ``z exp(s) + t`` (see the class docstring); the first batch
        initialises the layer so that it is mapped to zero mean, unit scale."""
        if not self.initialised:
            self._initialise(z)
            # normflows' forward rule: the first batch comes out standardised
            self.s.data.neg_()
            self.t.data.mul_(-torch.exp(self.s.data))
        return nf.flows.AffineConstFlow.forward(self, z)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction ``(z - t) exp(-s)`` (see the class docstring); the first batch
        initialises the layer so that it comes out with zero mean, unit scale."""
        if not self.initialised:
            self._initialise(z)
        return nf.flows.AffineConstFlow.inverse(self, z)
