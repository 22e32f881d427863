# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Compiled triangular solve of a causal (square autoregressive) convolution.

The convolution solved here is

    y[b, o, i, j] = sum_{c, a, d} K[o, c, a, d] * x[b, c, i - dil*(m-1-a), j - dil*(m-1-d)]

(zero outside the image), where the corner tap K[:, :, m-1, m-1] is lower-triangular in
(out, in) with a non-zero diagonal. Visiting pixels in raster order and channels in ascending
order, every x value depends only on values already solved, so one pass of forward substitution
inverts it. The bias is subtracted by the caller.

Two kernels do the same arithmetic, per pixel: subtract the already-solved neighbours under the
m*m-1 other taps, then one C x C forward substitution with the corner tap.

* Batches of at least LANES images: the batch is copied into a (pixel, channel, batch) buffer
  padded to a multiple of LANES, and each pixel is solved for LANES images at once, so every
  multiply-add runs over contiguous images (SIMD) with the partial sums held in registers.
* Smaller batches: one image at a time, straight on the NCHW tensors, each neighbour's value
  multiplied into all C outputs at once (an axpy over contiguous output channels).

Parallelism (OpenMP): over independent units of work (LANES-image blocks, or images) when there
are at least as many as threads, else over the pixels of one anti-diagonal i + j = t (they depend
only on earlier diagonals) when a diagonal carries enough work, else serial.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from posix.stdlib cimport posix_memalign

ctypedef fused real:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #define NFE_HAVE_OPENMP 1
    #else
    #define NFE_HAVE_OPENMP 0
    #endif
    """
    int NFE_HAVE_OPENMP

cdef extern from "kernels.h" nogil:
    enum: NFE_LANES
    void nfe_solve_pixel_image_f32(const float* y, float* x, Py_ssize_t channels,
                                   Py_ssize_t plane, Py_ssize_t width, Py_ssize_t i, Py_ssize_t j,
                                   const float* taps, const Py_ssize_t* tap_di,
                                   const Py_ssize_t* tap_dj, Py_ssize_t num_taps,
                                   const float* lower, const float* inv_diag, float* acc)
    void nfe_solve_pixel_image_f64(const double* y, double* x, Py_ssize_t channels,
                                   Py_ssize_t plane, Py_ssize_t width, Py_ssize_t i, Py_ssize_t j,
                                   const double* taps, const Py_ssize_t* tap_di,
                                   const Py_ssize_t* tap_dj, Py_ssize_t num_taps,
                                   const double* lower, const double* inv_diag, double* acc)
    void nfe_solve_pixel_lanes_f32(float* block, Py_ssize_t channels, Py_ssize_t width,
                                   Py_ssize_t i, Py_ssize_t j, const float* weights,
                                   const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj,
                                   Py_ssize_t num_taps, const float* lower, const float* inv_diag)
    void nfe_solve_pixel_lanes_f64(double* block, Py_ssize_t channels, Py_ssize_t width,
                                   Py_ssize_t i, Py_ssize_t j, const double* weights,
                                   const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj,
                                   Py_ssize_t num_taps, const double* lower, const double* inv_diag)


cdef enum:
    # Below this many multiply-adds per anti-diagonal a barrier per diagonal costs more than it saves.
    MIN_DIAGONAL_WORK = 32768
    # Images solved together by the batch kernel (kernels.h).
    LANES = NFE_LANES


cdef inline void _solve_pixel(
    const real* y, real* x, Py_ssize_t channels, Py_ssize_t plane, Py_ssize_t width,
    Py_ssize_t i, Py_ssize_t j, const real* taps, const Py_ssize_t* tap_di,
    const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const real* lower, const real* inv_diag,
    real* acc,
) noexcept nogil:
    """Solve pixel (i, j) of one NCHW image (see kernels.h)."""
    if real is float:
        nfe_solve_pixel_image_f32(y, x, channels, plane, width, i, j, taps, tap_di, tap_dj,
                                  num_taps, lower, inv_diag, acc)
    else:
        nfe_solve_pixel_image_f64(y, x, channels, plane, width, i, j, taps, tap_di, tap_dj,
                                  num_taps, lower, inv_diag, acc)


cdef inline void _solve_pixel_lanes(
    real* block, Py_ssize_t channels, Py_ssize_t width, Py_ssize_t i, Py_ssize_t j,
    const real* weights, const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj, Py_ssize_t num_taps,
    const real* lower, const real* inv_diag,
) noexcept nogil:
    """Solve pixel (i, j) of the LANES images of one (pixel, C, LANES) block (see kernels.h)."""
    if real is float:
        nfe_solve_pixel_lanes_f32(block, channels, width, i, j, weights, tap_di, tap_dj, num_taps,
                                  lower, inv_diag)
    else:
        nfe_solve_pixel_lanes_f64(block, channels, width, i, j, weights, tap_di, tap_dj, num_taps,
                                  lower, inv_diag)


cdef inline void _copy_block(
    real* images, real* block, Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t plane,
    Py_ssize_t lane0, bint to_block,
) noexcept nogil:
    """Copy images lane0 .. lane0 + LANES - 1 between NCHW ``images`` and a (pixel, C, LANES) block.

    Lanes past the batch are zero in the block (they solve to zero and are never copied back).
    """
    cdef Py_ssize_t l, c, p, lanes = min(LANES, batch - lane0), image = channels * plane
    cdef real* source = images + lane0 * image
    cdef real* lane_values
    for c in range(channels):
        for p in range(plane):
            lane_values = block + (p * channels + c) * LANES
            if to_block:
                for l in range(lanes):
                    lane_values[l] = source[l * image + c * plane + p]
                for l in range(lanes, LANES):
                    lane_values[l] = 0
            else:
                for l in range(lanes):
                    source[l * image + c * plane + p] = lane_values[l]


cdef int _solve_lanes(
    const real* y0, real* x0, Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height,
    Py_ssize_t width, Py_ssize_t size, const real* weights, const Py_ssize_t* tap_di,
    const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const real* lower, const real* inv_diag,
    int num_threads,
) except -1 nogil:
    """The batch kernel: LANES images per SIMD step, parallel over blocks or anti-diagonals."""
    cdef Py_ssize_t plane = height * width, block_size = plane * channels * LANES
    cdef Py_ssize_t blocks = (batch + LANES - 1) // LANES
    cdef Py_ssize_t b, i, j, idx, first, count, diagonal
    cdef void* memory = NULL
    if posix_memalign(&memory, 64, blocks * block_size * sizeof(real)) != 0:
        with gil:
            raise MemoryError()
    cdef real* buf = <real*> memory
    if num_threads > 1 and blocks >= num_threads:
        for b in prange(blocks, schedule="static", num_threads=num_threads):
            _copy_block(<real*> y0, buf + b * block_size, batch, channels, plane, b * LANES, True)
            for i in range(height):
                for j in range(width):
                    _solve_pixel_lanes(buf + b * block_size, channels, width, i, j, weights,
                                       tap_di, tap_dj, num_taps, lower, inv_diag)
            _copy_block(x0, buf + b * block_size, batch, channels, plane, b * LANES, False)
    else:
        for b in range(blocks):
            _copy_block(<real*> y0, buf + b * block_size, batch, channels, plane, b * LANES, True)
        if num_threads > 1 and blocks * min(height, width) * channels * channels * size * size * LANES >= MIN_DIAGONAL_WORK:
            with parallel(num_threads=num_threads):
                for diagonal in range(height + width - 1):
                    first = max(0, diagonal - width + 1)
                    count = min(diagonal, height - 1) - first + 1
                    for idx in prange(blocks * count, schedule="static"):
                        i = first + idx % count
                        _solve_pixel_lanes(buf + (idx // count) * block_size, channels, width, i,
                                           diagonal - i, weights, tap_di, tap_dj, num_taps,
                                           lower, inv_diag)
        else:
            for b in range(blocks):
                for i in range(height):
                    for j in range(width):
                        _solve_pixel_lanes(buf + b * block_size, channels, width, i, j, weights,
                                           tap_di, tap_dj, num_taps, lower, inv_diag)
        for b in range(blocks):
            _copy_block(x0, buf + b * block_size, batch, channels, plane, b * LANES, False)
    free(buf)
    return 0


cdef int _solve(
    const real[:, :, :, ::1] y, const real[:, :, :, ::1] kernel, real[:, :, :, ::1] x,
    Py_ssize_t dilation, int num_threads,
) except -1 nogil:
    cdef Py_ssize_t batch = y.shape[0], channels = y.shape[1]
    cdef Py_ssize_t height = y.shape[2], width = y.shape[3], size = kernel.shape[2]
    cdef Py_ssize_t plane = height * width, image = channels * plane
    cdef Py_ssize_t num_taps = size * size - 1, corner = size - 1
    cdef Py_ssize_t a, d, o, c, t, b, i, j, idx, first, count, diagonal
    cdef real* taps = <real*> malloc(max(num_taps, 1) * channels * channels * sizeof(real))
    cdef real* lower = <real*> malloc(channels * channels * sizeof(real))
    cdef real* inv_diag = <real*> malloc(channels * sizeof(real))
    cdef Py_ssize_t* tap_di = <Py_ssize_t*> malloc(max(num_taps, 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* tap_dj = <Py_ssize_t*> malloc(max(num_taps, 1) * sizeof(Py_ssize_t))
    cdef real* acc
    cdef const real* y0 = &y[0, 0, 0, 0]
    cdef real* x0 = &x[0, 0, 0, 0]
    cdef int mode
    if not (taps and lower and inv_diag and tap_di and tap_dj):
        free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj)
        with gil:
            raise MemoryError()

    cdef bint lanes = batch >= LANES
    # Weights arranged once, masked taps dropped, in the order the chosen kernel reads them: the
    # batch kernel runs over input channels for one output, the image kernel over outputs.
    t = 0
    for a in range(size):
        for d in range(size):
            if a == corner and d == corner:
                continue
            tap_di[t] = -(corner - a) * dilation
            tap_dj[t] = -(corner - d) * dilation
            t += 1
    for o in range(channels):
        inv_diag[o] = 1 / kernel[o, o, corner, corner]
        for c in range(channels):
            if lanes:
                lower[o * channels + c] = kernel[o, c, corner, corner] if c < o else 0
            else:
                lower[c * channels + o] = kernel[o, c, corner, corner] if c < o else 0
            t = 0
            for a in range(size):
                for d in range(size):
                    if a == corner and d == corner:
                        continue
                    if lanes:
                        taps[(o * num_taps + t) * channels + c] = kernel[o, c, a, d]
                    else:
                        taps[(t * channels + c) * channels + o] = kernel[o, c, a, d]
                    t += 1

    if lanes:
        _solve_lanes(y0, x0, batch, channels, height, width, size, taps, tap_di, tap_dj,
                     num_taps, lower, inv_diag, num_threads)
        free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj)
        return 0

    if num_threads > 1 and batch >= num_threads:
        mode = 1
    elif num_threads > 1 and batch * min(height, width) * channels * channels * size * size >= MIN_DIAGONAL_WORK:
        mode = 2
    else:
        mode = 0

    if mode == 1:
        with parallel(num_threads=num_threads):
            acc = <real*> malloc(channels * sizeof(real))
            for b in prange(batch, schedule="static"):
                for i in range(height):
                    for j in range(width):
                        _solve_pixel(y0 + b * image, x0 + b * image, channels, plane, width, i, j,
                                     taps, tap_di, tap_dj, num_taps, lower, inv_diag, acc)
            free(acc)
    elif mode == 2:
        with parallel(num_threads=num_threads):
            acc = <real*> malloc(channels * sizeof(real))
            for diagonal in range(height + width - 1):
                first = max(0, diagonal - width + 1)
                count = min(diagonal, height - 1) - first + 1
                for idx in prange(batch * count, schedule="static"):
                    b = idx // count
                    i = first + idx % count
                    _solve_pixel(y0 + b * image, x0 + b * image, channels, plane, width, i,
                                 diagonal - i, taps, tap_di, tap_dj, num_taps, lower, inv_diag, acc)
            free(acc)
    else:
        acc = <real*> malloc(channels * sizeof(real))
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    _solve_pixel(y0 + b * image, x0 + b * image, channels, plane, width, i, j,
                                 taps, tap_di, tap_dj, num_taps, lower, inv_diag, acc)
        free(acc)

    free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj)
    return 0


def solve_causal_float32(const float[:, :, :, ::1] y, const float[:, :, :, ::1] kernel,
                         float[:, :, :, ::1] out, Py_ssize_t dilation, int num_threads):
    """Solve ``causal_conv(out, kernel) = y`` for ``out`` (float32, C-contiguous NCHW).

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted
      kernel: (C, C, m, m) causal kernel, corner tap lower-triangular with non-zero diagonal
      out: (B, C, H, W) written in place
      dilation: spacing of the taps
      num_threads: OpenMP threads to use at most
    """
    with nogil:
        _solve(y, kernel, out, dilation, num_threads)


def solve_causal_float64(const double[:, :, :, ::1] y, const double[:, :, :, ::1] kernel,
                         double[:, :, :, ::1] out, Py_ssize_t dilation, int num_threads):
    """Float64 version of :func:`solve_causal_float32`."""
    with nogil:
        _solve(y, kernel, out, dilation, num_threads)


def has_openmp():
    """True if the extension was built with OpenMP."""
    return bool(NFE_HAVE_OPENMP)
