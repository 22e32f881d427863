"""Masked affine autoregressive flow on images, the MAF baseline of the emerging-convolutions paper.

Elements of an image of shape (C, H, W) are ordered pixel by pixel in raster order and, inside a
pixel, by channel: element (c, i, j) has index (i * W + j) * C + c. A masked convolutional network
(3x3 -> ReLU -> 1x1 -> ReLU -> 3x3) gives, for every element, a shift and a log-scale that depend
only on the elements before it, so the map is triangular in that order and its log-determinant is
the sum of the log-scales.

The density direction is one pass of the network. The sampling direction is sequential over all
H * W * C elements; the ``"fast"`` backend recomputes only the causal window of the pixels being
solved (several pixels at once, see ``MaskedAffineAutoregressiveConv2d.forward``), the ``"naive"``
backend reruns the full network for every element.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from torch import nn

from ..solve.transforms import under_transform
from .arguments import check_bool, check_positive_int
from .precision import full_precision
from .solver import check_solver, chosen_backend
from .utils import (
    check_finite_output,
    check_image,
    empty_result,
    is_empty,
    register_constant_buffer,
)

# Window taps of a causal 3x3 mask, as (row, column) kernel positions: the row above and the left
# neighbour (tap t is (t // 3, t % 3)). The centre tap (1, 1) is handled separately, with a
# channel mask.
_PAST_TAPS = ((0, 0), (0, 1), (0, 2), (1, 0))


def _autoregressive_mask(in_degrees, out_degrees, kernel_size, strict):
    """Mask of shape (out, in, k, k) for a conv whose units carry the given channel degrees.

    Taps before the centre (in raster order) connect everything, taps after it nothing; the centre
    tap connects input degree d_in to output degree d_out when d_in < d_out (``strict``, the first
    layer) or d_in <= d_out (later layers).
    """
    mask = torch.zeros(len(out_degrees), len(in_degrees), kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    if strict:
        mask[:, :, centre, centre] = (in_degrees[None, :] < out_degrees[:, None]).float()
    else:
        mask[:, :, centre, centre] = (in_degrees[None, :] <= out_degrees[:, None]).float()
    return mask


class _MaskedConv2d(nn.Conv2d):
    """Same-size convolution whose weight is multiplied by a fixed mask (not saved: it follows
    from the degrees; a mask in an older checkpoint is ignored)."""

    def __init__(self, in_degrees, out_degrees, kernel_size, strict):
        super().__init__(len(in_degrees), len(out_degrees), kernel_size, padding=kernel_size // 2)
        mask = _autoregressive_mask(in_degrees, out_degrees, kernel_size, strict)
        register_constant_buffer(self, "mask", mask)

    def masked_weight(self):
        """The effective weight, shape (out, in, k, k)."""
        return torch.where(self.mask != 0, self.weight, 0.0)  # masked-out inf/NaN stay out

    def forward(self, x):
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


class MaskedAffineAutoregressiveConv2d(Flow):
    """Masked autoregressive affine flow over raster x channel order.

    From Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
    NeurIPS 2017, https://arxiv.org/abs/1705.07057, on images as the MAF baseline of Hoogeboom,
    van den Berg, Welling, "Emerging Convolutions for Generative Normalizing Flows", ICML 2019,
    https://arxiv.org/abs/1901.11137

    Density direction (``inverse``): ``z = (x - shift) * exp(-log_scale)``, where ``shift`` and
    ``log_scale`` of element (c, i, j) are computed by a masked network from the elements of ``x``
    before it. Sampling direction (``forward``): ``x = z * exp(log_scale) + shift``, solved element
    by element. The log-scale is bounded, ``log_scale = tanh(h)`` for the raw network output
    ``h``, so every scale lies in (1/e, e). The last layer starts at zero, so a new layer is the
    identity.

    Network: masked 3x3 conv (C -> hidden, excludes the current element), ReLU, masked 1x1 conv
    (hidden -> hidden), ReLU, masked 3x3 conv (hidden -> 2C, shift and raw log-scale); hidden unit k
    belongs to channel ``k * C // hidden_channels`` of the current pixel (contiguous blocks).
    """

    backends = ("fast", "naive")

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int = 96,
        reverse: bool = False,
        solver: str = "auto",
    ):
        """Constructor

        Args:
          num_channels: number of image channels C
          hidden_channels: channels of the two hidden layers
          reverse: if True, use the opposite order (reverse raster order, channels descending)
          solver: sampling solve, ``"auto"`` (``"fast"``), ``"fast"`` or ``"naive"``; also
            settable later as the ``solver`` attribute. Inside
            ``normflows_emerging.use_backend(name)`` the solve is ``"naive"`` for name
            ``"naive"`` and ``"fast"`` otherwise, whatever this says.

        Raises:
          ValueError: unless both channel counts are positive ints (bools refused, numpy ints
            accepted), or for an unknown solver
          TypeError: if ``reverse`` is not a bool
        """
        super().__init__()
        num_channels = check_positive_int("num_channels", num_channels)
        hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        reverse = check_bool("reverse", reverse)
        self.num_channels = num_channels
        self.hidden_channels = hidden_channels
        self.reverse = reverse
        self.solver = solver
        data_degrees = torch.arange(num_channels)
        hidden_degrees = torch.arange(hidden_channels) * num_channels // hidden_channels
        self.conv_in = _MaskedConv2d(data_degrees, hidden_degrees, 3, strict=True)
        self.conv_hidden = _MaskedConv2d(hidden_degrees, hidden_degrees, 1, strict=False)
        self.conv_out = _MaskedConv2d(hidden_degrees, data_degrees.repeat(2), 3, strict=False)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def solver(self) -> str:
        """Sampling solve (see the constructor)."""
        return self._solver

    @solver.setter
    def solver(self, value: str) -> None:
        self._solver = check_solver(value, ("auto",) + self.backends)

    def extra_repr(self):
        return (
            f"num_channels={self.num_channels}, hidden_channels={self.hidden_channels}, "
            f"reverse={self.reverse}, solver={self.solver!r}"
        )

    def _flip(self, x):
        # Flipping height, width and channels reverses the raster x channel order.
        return x.flip(1, 2, 3) if self.reverse else x

    def _shift_log_scale(self, x):
        """Shift and log-scale of every element of ``x`` (forward order), each (B, C, H, W)."""
        h = F.relu(self.conv_in(x))
        h = F.relu(self.conv_hidden(h))
        shift, raw = self.conv_out(h).chunk(2, dim=1)
        return shift, torch.tanh(raw)

    @full_precision
    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction, one pass of the network.

        Args:
          x: data, shape (batch, num_channels, height, width), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          z of the same shape, and log|det dz/dx| = -sum of the log-scales, shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
        """
        check_image(x, self.num_channels, type(self).__name__, self.conv_in.weight)
        if is_empty(x):
            return empty_result(x)
        x = self._flip(x)
        shift, log_scale = self._shift_log_scale(x)
        z = (x - shift) * torch.exp(-log_scale)
        return self._flip(z), -log_scale.sum(dim=(1, 2, 3))

    @full_precision
    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: solve for x element by element.

        ``"fast"`` keeps the hidden activations of the pixels already solved. Pixel (i, j) only
        reads pixels (i-1, j-1..j+1) and (i, j-1) of the network's input and last hidden layer, so
        all pixels with the same 2i + j are solved together (2(H-1) + W steps). Within a step the
        window contributions are computed once; then each channel costs one pass of the network
        restricted to those pixels and to the hidden units of that channel and the ones before it,
        updating the first hidden layer with the channel just solved.
        ``"naive"`` reruns the whole network once per element (the baseline). Which one runs: as
        chosen by ``normflows_emerging.use_backend`` if active (``"naive"`` for ``"naive"``, so
        whole models switch to their reference solves together, else ``"fast"``), else the
        layer's ``solver``.

        Args:
          z: latent, shape (batch, num_channels, height, width), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          x of the same shape, and log|det dx/dz| = sum of the log-scales, shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if the solve turns a finite z into inf/NaN values; checked
            on the CPU only (on a GPU the values are returned, see ``docs/gpu.md``)
        """
        backend = "naive" if chosen_backend(self.solver) == "naive" else "fast"
        check_image(z, self.num_channels, type(self).__name__, self.conv_in.weight)
        if is_empty(z):
            return empty_result(z)
        given = z
        z = self._flip(z)
        if backend == "fast":
            x, log_det = self._solve_fast(z)
        else:
            x, log_det = self._solve_naive(z)
        check_finite_output(x, given, type(self).__name__)
        return self._flip(x), log_det

    def _solve_naive(self, z):
        """Full network per element, in forward order."""
        num_channels, height, width = z.shape[1:]
        x = torch.zeros_like(z)
        log_det = z.new_zeros(z.shape[0])
        for i in range(height):
            for j in range(width):
                for c in range(num_channels):
                    shift, log_scale = self._shift_log_scale(x)
                    x = x.clone()
                    scale = torch.exp(log_scale[:, c, i, j])
                    x[:, c, i, j] = z[:, c, i, j] * scale + shift[:, c, i, j]
                    log_det = log_det + log_scale[:, c, i, j]
        return x, log_det

    def _solve_fast(self, z):
        """Wavefront over pixels with equal 2i + j, causal window only, in forward order."""
        batch, num_channels, height, width = z.shape
        hidden = self.hidden_channels
        # Weights, arranged once: past taps flattened tap-major, (4 * in, out); centre taps apart.
        w_in = self.conv_in.masked_weight()
        w_out = self.conv_out.masked_weight()
        past_in = torch.cat([w_in[:, :, a, b].t() for a, b in _PAST_TAPS])
        past_out = torch.cat([w_out[:, :, a, b].t() for a, b in _PAST_TAPS])
        centre_in = w_in[:, :, 1, 1].t()  # (C, hidden): row c is what channel c adds to layer 1
        w_hidden = self.conv_hidden.masked_weight()[:, :, 0, 0]
        b_in, b_hidden, b_out = self.conv_in.bias, self.conv_hidden.bias, self.conv_out.bias
        # (C, 2, hidden): rows [c, C + c] of the centre tap, shift and raw log-scale of channel c.
        centre_out = w_out[:, :, 1, 1].view(2, num_channels, hidden).transpose(0, 1)

        # Channel-last maps of the solved x and of the last hidden layer, zero padded by one pixel
        # at the top, left and right, flattened over space: pixel (i, j) sits at (i+1)*(W+2) + j+1.
        padded_width = width + 2
        x_map = z.new_zeros(batch, (height + 1) * padded_width, num_channels)
        h_map = z.new_zeros(batch, (height + 1) * padded_width, hidden)
        z_flat = z.permute(0, 2, 3, 1).reshape(batch, height * width, num_channels)
        # a * padded_width + b for the taps (a, b) = (t // 3, t % 3), made on the device: a
        # tensor from a host list would be a copy the host waits for on a GPU
        taps = torch.arange(len(_PAST_TAPS), device=z.device)
        offsets = (taps // 3) * padded_width + taps % 3
        log_det = z.new_zeros(batch)
        for step in range(2 * (height - 1) + width):
            first, last = max(0, (step - width + 2) // 2), min(height - 1, step // 2)
            if first > last:  # no pixel has 2i + j = step (odd steps of a 1-pixel-wide image)
                continue
            rows = torch.arange(first, last + 1, device=z.device)
            cols = step - 2 * rows
            num_pixels = len(rows)
            centre = (rows + 1) * padded_width + cols + 1
            window = (centre[:, None] - padded_width - 1 + offsets).reshape(-1)
            pre = b_in + x_map.index_select(1, window).reshape(batch, num_pixels, -1) @ past_in
            base = b_out + h_map.index_select(1, window).reshape(batch, num_pixels, -1) @ past_out
            base = base.view(batch, num_pixels, 2, num_channels)
            z_step = z_flat.index_select(1, rows * width + cols)
            solved = []
            for c in range(num_channels):
                # Hidden units of channel c and before are the first n of each hidden layer.
                n = -(-(c + 1) * hidden // num_channels)
                h = F.relu(F.linear(F.relu(pre[..., :n]), w_hidden[:n, :n], b_hidden[:n]))
                out = base[..., c] + F.linear(h, centre_out[c, :, :n])
                log_scale = torch.tanh(out[..., 1])
                x_c = z_step[..., c] * torch.exp(log_scale) + out[..., 0]
                log_det = log_det + log_scale.sum(dim=1)
                solved.append(x_c)
                if c + 1 < num_channels:
                    pre = pre + x_c[..., None] * centre_in[c]
            # The last channel never enters the centre tap of layer 1, so h is already final.
            x_map = _write_pixels(x_map, centre, torch.stack(solved, dim=-1))
            h_map = _write_pixels(h_map, centre, h)
        x = x_map.view(batch, height + 1, padded_width, num_channels)[:, 1:, 1:-1]
        return x.permute(0, 3, 1, 2).contiguous(), log_det


def _write_pixels(pixel_map: torch.Tensor, centre: torch.Tensor, values: torch.Tensor):
    """``pixel_map`` with ``values`` written at the flat pixel indices ``centre`` (dimension 1):
    in place, except under a torch.func transform, where the values may carry a batch dimension
    (vmap over parameters) that the map does not have."""
    if under_transform(values):
        return pixel_map.index_copy(1, centre, values)
    return pixel_map.index_copy_(1, centre, values)
