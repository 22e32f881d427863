"""Triton kernels of the ``"triton"`` backend: one program per image, one launch per call.

A program walks its image's anti-diagonals ``i + j = t`` in order. Every tap other than the
corner reads a pixel of an earlier anti-diagonal, so the pixels of one diagonal are solved
together, a block of pixels x all channels at a time. Per block:
``r = y - bias - sum_{non-corner taps, c} W[:, c, tap] x[c, neighbour]`` as products of a chunk
of input channels at a time (registers hold only the (pixels, channels) accumulator and one
chunk's product, whatever C), then ``x = L^-1 r`` with the inverse of the corner tap ``L``,
computed once per solve into a per-program workspace.

Values that one thread stores and others read pass through memory, so three
``tl.debug_barrier()`` (``__syncthreads``) order them: after ``r`` is stored (its chunks are read
across threads), after those reads (``x`` overwrites ``r``), and after each diagonal (the next
reads its pixels as neighbours, and after the last one the next pass reads the whole image). The
corner's inverse needs none of its own: the first block's barrier after ``r`` comes before any
thread reads it. ``tests/barrier_check.py`` checks this order in the compiled code.

Offsets are int32 unless ``WIDE`` (set by the caller when one can reach 2**31): then the sizes
are int64 and so is every offset computed from them.

``flip=True`` layers are solved in the mirrored frame without copying: logical channel ``c``,
row ``i`` and column ``j`` live at memory channel ``C-1-c``, row ``H-1-i``, column ``W-1-j``.

Triton decides at import whether kernels are compiled or interpreted (``TRITON_INTERPRET=1``):
:mod:`normflows_emerging.backends.triton_solve` imports this module on first use only.
"""

import triton
import triton.language as tl


@triton.jit
def _sum(x, axis: tl.constexpr):
    """``tl.sum`` for float tensors, as ``tl.sum`` itself reduces. Triton's standard library
    functions (``tl.sum``, ``tl.zeros``) are defined when triton is imported, so a copy of this
    module interpreted in a process whose triton was imported for the GPU cannot call them (the
    tests load such copies); ``tl.reduce`` is a builtin, and with this combine function the
    interpreter sums in numpy."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _wide(n):
    """``n`` as int64: every offset computed from it is then 64-bit."""
    return n.to(tl.int64)


@triton.jit
def _invert_corner(
    kernel, inverse, C, SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr
):
    """inverse[o, p] = (L^-1)[o, p] of the corner tap L (lower-triangular), ``BLOCK_J`` columns
    at a time: forward substitution on those columns of the identity, one row per step (rows
    above the block's first column are zero); ``inverse`` points to this program's (C, C)
    workspace, written row-major as the solve reads it (after a barrier of the caller's)."""
    corner = SIZE - 1
    rows = tl.arange(0, BLOCK_C)
    row_mask = rows < C
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        # acc[o, p]: the right-hand side I[o, p] until row o is solved, then (L^-1)[o, p]
        acc = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0).to(kernel.dtype.element_ty)
        for c in range(j0, C):
            diagonal = tl.load(kernel + ((c * C + c) * SIZE + corner) * SIZE + corner)
            is_c = rows[:, None] == c
            x_c = _sum(tl.where(is_c, acc, 0.0), axis=0) / diagonal
            below = tl.load(
                kernel + ((rows * C + c) * SIZE + corner) * SIZE + corner,
                mask=row_mask & (rows > c),
                other=0.0,
            )
            acc = tl.where(is_c, x_c[None, :], acc - below[:, None] * x_c[None, :])
        mask = row_mask[:, None] & (cols < C)[None, :]
        tl.store(inverse + rows[:, None] * C + cols[None, :], acc, mask=mask)


@triton.jit
def _solve_image(
    src,
    dst,
    kernel,
    bias,
    inverse,
    C,
    H,
    W,
    dilation,
    SIZE: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """dst = solve of (src - bias) for one image; src, dst point to its (C, H, W) planes,
    ``inverse`` to a (C, C) workspace of the program."""
    _invert_corner(kernel, inverse, C, SIZE, BLOCK_C, BLOCK_J)
    plane = H * W
    corner = SIZE - 1
    chans = tl.arange(0, BLOCK_C)
    chan_mask = chans < C
    chunk = tl.arange(0, CHUNK)
    # Memory offsets of logical channels; mirrored images also run through memory backwards, so
    # a logical step of +1 (channel, row or column) is a memory step of -1 there.
    if FLIP:
        step = -1
        chan_offsets = (C - 1 - chans) * plane
        chunk_offsets = (C - 1 - chunk) * plane
    else:
        step = 1
        chan_offsets = chans * plane
        chunk_offsets = chunk * plane
    if HAS_BIAS:
        if FLIP:
            bias_row = tl.load(bias + C - 1 - chans, mask=chan_mask, other=0.0)
        else:
            bias_row = tl.load(bias + chans, mask=chan_mask, other=0.0)
    weight_offsets = chans[:, None] * (C * SIZE * SIZE) + chunk[None, :] * (SIZE * SIZE)
    inverse_offsets = chans[:, None] * C + chunk[None, :]
    lane = tl.arange(0, BLOCK_P)
    for t in range(H + W - 1):
        first = tl.maximum(t - W + 1, 0)
        last = tl.minimum(t, H - 1)
        for start in range(first, last + 1, BLOCK_P):
            rows = start + lane
            cols = t - rows
            pix_mask = rows <= last
            if FLIP:
                pix = (H - 1 - rows) * W + (W - 1 - cols)
            else:
                pix = rows * W + cols
            mask = pix_mask[:, None] & chan_mask[None, :]
            outputs = chan_offsets[None, :] + pix[:, None]
            acc = tl.load(src + outputs, mask=mask, other=0.0)
            if HAS_BIAS:
                acc = acc - bias_row[None, :]
            # r = y - b - sum over the non-corner taps, CHUNK input channels at a time
            for tap in range(SIZE * SIZE - 1):
                # taps that reach outside the image are masked; capped, their offsets stay small
                up = tl.minimum((corner - tap // SIZE) * dilation, H)
                left = tl.minimum((corner - tap % SIZE) * dilation, W)
                n_mask = (pix_mask & (rows >= up) & (cols >= left))[:, None]
                n_pix = pix - step * (up * W + left)
                for c0 in range(0, C, CHUNK):
                    in_mask = (chunk < C - c0)[None, :]
                    x_in = tl.load(
                        dst + (chunk_offsets + step * c0 * plane)[None, :] + n_pix[:, None],
                        mask=n_mask & in_mask,
                        other=0.0,
                    )
                    w_in = tl.load(
                        kernel + weight_offsets + (c0 * SIZE * SIZE + tap),
                        mask=chan_mask[:, None] & in_mask,
                        other=0.0,
                    )
                    acc = acc - _sum(x_in[:, None, :] * w_in[None, :, :], axis=2)
            # x = L^-1 r with the corner tap's inverse: r goes through dst to be read in chunks
            tl.store(dst + outputs, acc, mask=mask)
            tl.debug_barrier()  # r (and, in the first block, the corner's inverse) stored
            acc = tl.full((BLOCK_P, BLOCK_C), 0, acc.dtype)
            for c0 in range(0, C, CHUNK):
                in_mask = (chunk < C - c0)[None, :]
                r_in = tl.load(
                    dst + (chunk_offsets + step * c0 * plane)[None, :] + pix[:, None],
                    mask=pix_mask[:, None] & in_mask,
                    other=0.0,
                )
                l_in = tl.load(
                    inverse + inverse_offsets + c0, mask=chan_mask[:, None] & in_mask, other=0.0
                )
                acc = acc + _sum(r_in[:, None, :] * l_in[None, :, :], axis=2)
            tl.debug_barrier()  # every r read before x overwrites it
            tl.store(dst + outputs, acc, mask=mask)
        tl.debug_barrier()  # this diagonal's x stored before the next reads it


@triton.jit
def _mix_image(src, dst, matrix, C, plane, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[:, p] = matrix @ src[:, p] for every pixel p of one image (a 1x1 convolution)."""
    chans = tl.arange(0, BLOCK_C)
    chan_mask = chans < C
    for start in range(0, plane, BLOCK_Q):
        pix = start + tl.arange(0, BLOCK_Q)
        pix_mask = pix < plane
        acc = tl.full((BLOCK_Q, BLOCK_C), 0, src.dtype.element_ty)
        for c in range(C):
            x_c = tl.load(src + c * plane + pix, mask=pix_mask, other=0.0)
            w_c = tl.load(matrix + chans * C + c, mask=chan_mask, other=0.0)
            acc = acc + x_c[:, None] * w_c[None, :]
        mask = pix_mask[:, None] & chan_mask[None, :]
        tl.store(dst + chans[None, :] * plane + pix[:, None], acc, mask=mask)


@triton.jit
def solve_kernel(
    y,
    x,
    kernel,
    workspace,
    C,
    H,
    W,
    dilation,
    SIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_J: tl.constexpr,
    WIDE: tl.constexpr,
):
    """x = solve of y for image ``program_id(0)``; contiguous (B, C, H, W) y and x, a (B, C, C)
    workspace. ``WIDE``: offsets inside an image or kernel may reach 2**31 (int64 indices)."""
    if WIDE:
        C, H, W, dilation = _wide(C), _wide(H), _wide(W), _wide(dilation)
    program = tl.program_id(0).to(tl.int64)
    image = program * C * H * W
    _solve_image(
        y + image, x + image, kernel, kernel, workspace + program * C * C, C, H, W, dilation,
        SIZE, False, False, BLOCK_P, BLOCK_C, CHUNK, BLOCK_J,
    )  # fmt: skip


@triton.jit
def emerging_step_kernel(
    z,
    out,
    scratch,
    workspace,
    anticausal_kernel,
    anticausal_bias,
    causal_kernel,
    causal_bias,
    weight_inverse,
    C,
    H,
    W,
    dilation,
    SIZE: tl.constexpr,
    HAS_MIX: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_J: tl.constexpr,
    WIDE: tl.constexpr,
):
    """EmergingConv2d's sampling step for image ``program_id(0)``: the anti-causal solve, the
    causal solve, then ``W^-1`` (with ``HAS_MIX``). Two buffers of z's size besides z: with the
    1x1 layer ``out`` holds the anti-causal solution until the causal one (in ``scratch``) has
    consumed it pixel by pixel, then the mixed result. A (B, C, C) workspace. ``WIDE``: as in
    :func:`solve_kernel`."""
    if WIDE:
        C, H, W, dilation = _wide(C), _wide(H), _wide(W), _wide(dilation)
    program = tl.program_id(0).to(tl.int64)
    image = program * C * H * W
    z = z + image
    out = out + image
    scratch = scratch + image
    workspace = workspace + program * C * C
    if HAS_MIX:
        first = out
        second = scratch
    else:
        first = scratch
        second = out
    _solve_image(
        z, first, anticausal_kernel, anticausal_bias, workspace, C, H, W, dilation, SIZE, True,
        True, BLOCK_P, BLOCK_C, CHUNK, BLOCK_J,
    )  # fmt: skip
    _solve_image(
        first, second, causal_kernel, causal_bias, workspace, C, H, W, dilation, SIZE, False,
        True, BLOCK_P, BLOCK_C, CHUNK, BLOCK_J,
    )  # fmt: skip
    if HAS_MIX:
        _mix_image(second, out, weight_inverse, C, H * W, BLOCK_Q, BLOCK_C)
