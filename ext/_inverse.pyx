# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Compiled triangular solve of a causal (square autoregressive) convolution.

The convolution solved here is

    y[b, o, i, j] = sum_{c, a, d} K[o, c, a, d] * x[b, c, i - dil*(m-1-a), j - dil*(m-1-d)]

(zero outside the image), where the corner tap K[:, :, m-1, m-1] is lower-triangular in
(out, in) with a non-zero diagonal. Visiting pixels in raster order and channels in ascending
order, every x value depends only on values already solved, so one pass of forward substitution
inverts it. The bias is subtracted by the caller.

Work per pixel: the already-solved neighbours under the m*m-1 other taps are accumulated into
all C outputs at once (an axpy over contiguous output channels), then one C x C forward
substitution with the corner tap. Parallelism (OpenMP): over images of the batch when there are
at least as many as threads, else over the pixels of one anti-diagonal i + j = t (they depend only
on earlier diagonals) when a diagonal carries enough work, else serial.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

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

# Below this many multiply-adds per anti-diagonal a barrier per diagonal costs more than it saves.
cdef enum:
    MIN_DIAGONAL_WORK = 32768


cdef inline void _solve_pixel(
    const real* y, real* x, Py_ssize_t channels, Py_ssize_t plane, Py_ssize_t width,
    Py_ssize_t i, Py_ssize_t j, const real* taps, const Py_ssize_t* tap_di,
    const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const real* lower, const real* inv_diag,
    real* acc,
) noexcept nogil:
    cdef Py_ssize_t p = i * width + j
    cdef Py_ssize_t o, c, t, ii, jj, q
    cdef const real* w
    cdef real value
    for o in range(channels):
        acc[o] = y[o * plane + p]
    for t in range(num_taps):
        ii = i + tap_di[t]
        jj = j + tap_dj[t]
        if ii < 0 or jj < 0:
            continue
        q = ii * width + jj
        for c in range(channels):
            value = x[c * plane + q]
            w = taps + (t * channels + c) * channels
            for o in range(channels):
                acc[o] -= w[o] * value
    for c in range(channels):
        value = acc[c] * inv_diag[c]
        x[c * plane + p] = value
        w = lower + c * channels
        for o in range(c + 1, channels):
            acc[o] -= w[o] * value


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

    # Weights arranged once: tap-major, then input channel, output channels contiguous.
    t = 0
    for a in range(size):
        for d in range(size):
            if a == corner and d == corner:
                continue
            tap_di[t] = -(corner - a) * dilation
            tap_dj[t] = -(corner - d) * dilation
            for c in range(channels):
                for o in range(channels):
                    taps[(t * channels + c) * channels + o] = kernel[o, c, a, d]
            t += 1
    for c in range(channels):
        inv_diag[c] = 1 / kernel[c, c, corner, corner]
        for o in range(channels):
            lower[c * channels + o] = kernel[o, c, corner, corner] if o > c else 0

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
