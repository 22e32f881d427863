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
  multiply-add runs over contiguous images (SIMD, a register's width at a time) with the partial
  sums held in registers.
* Smaller batches: one image at a time, straight on the NCHW tensors; the C outputs of a pixel are
  held in vectors of LANES partial sums kept in registers while each neighbour's value is
  multiplied into them (weights padded with zeros to whole vectors).

Instruction sets: kernels.h compiles the kernels once per instruction set ("baseline", "avx2",
"avx512", see ``INSTRUCTION_SETS``) from one source; the widest the CPU supports runs, unless
``set_instruction_set`` (tests, benchmarks) or the environment variable NORMFLOWS_EMERGING_ISA
(read at import) chose another supported one.

Parallelism (OpenMP), see ``_schedule``: none for small solves (no OpenMP region at all); else over
independent units of work (LANES-image blocks, or images) when there are at least as many as
threads; else over the pixels of one anti-diagonal i + j = t, which depend only on earlier
diagonals, with a barrier between diagonals; else serial.

The entry points check every shape, the dilation and the thread count before touching memory
(they are importable, so they must be safe to call with anything), and return the name of the
schedule that ran (``SCHEDULES``), which the tests assert.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memset
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
    enum: NFE_ISA_COUNT
    int nfe_isa_supported(int isa)
    int nfe_best_isa()
    void nfe_image_pixel_f32(int isa, const float* y, float* x, Py_ssize_t channels,
                             Py_ssize_t padded, Py_ssize_t plane, Py_ssize_t width, Py_ssize_t i,
                             Py_ssize_t j, const float* taps, const Py_ssize_t* tap_di,
                             const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const float* lower,
                             const float* inv_diag, float* scratch)
    void nfe_image_pixel_f64(int isa, const double* y, double* x, Py_ssize_t channels,
                             Py_ssize_t padded, Py_ssize_t plane, Py_ssize_t width, Py_ssize_t i,
                             Py_ssize_t j, const double* taps, const Py_ssize_t* tap_di,
                             const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const double* lower,
                             const double* inv_diag, double* scratch)
    void nfe_image_raster_f32(int isa, const float* y, float* x, Py_ssize_t channels,
                              Py_ssize_t padded, Py_ssize_t height, Py_ssize_t width,
                              const float* taps, const Py_ssize_t* tap_di,
                              const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const float* lower,
                              const float* inv_diag, float* scratch)
    void nfe_image_raster_f64(int isa, const double* y, double* x, Py_ssize_t channels,
                              Py_ssize_t padded, Py_ssize_t height, Py_ssize_t width,
                              const double* taps, const Py_ssize_t* tap_di,
                              const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const double* lower,
                              const double* inv_diag, double* scratch)
    void nfe_batch_pixel_f32(int isa, float* block, Py_ssize_t channels, Py_ssize_t width,
                             Py_ssize_t i, Py_ssize_t j, const float* weights,
                             const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj,
                             Py_ssize_t num_taps, const float* lower, const float* inv_diag)
    void nfe_batch_pixel_f64(int isa, double* block, Py_ssize_t channels, Py_ssize_t width,
                             Py_ssize_t i, Py_ssize_t j, const double* weights,
                             const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj,
                             Py_ssize_t num_taps, const double* lower, const double* inv_diag)
    void nfe_batch_raster_f32(int isa, float* block, Py_ssize_t channels, Py_ssize_t height,
                              Py_ssize_t width, const float* weights, const Py_ssize_t* tap_di,
                              const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const float* lower,
                              const float* inv_diag)
    void nfe_batch_raster_f64(int isa, double* block, Py_ssize_t channels, Py_ssize_t height,
                              Py_ssize_t width, const double* weights, const Py_ssize_t* tap_di,
                              const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const double* lower,
                              const double* inv_diag)
    int nfe_team_size()
    void nfe_barrier()
    int nfe_test_delay_us
    void nfe_note_parallel_start()
    int nfe_openmp_unusable
    int nfe_register_fork_handler()
    void nfe_test_delay(int thread)


cdef enum:
    # Work sizes in multiply-adds (about C*C*m*m per pixel and image). On a busy machine every
    # OpenMP region and barrier may cost a scheduler time slice (measured 30-50 ms on a loaded
    # 2-core machine, interleaved with serial runs, see the note of issue 13): 2 threads lost up
    # to 300x below 4e6 multiply-adds and first won (0.6x) from about 7.5e7. So below
    # MIN_PARALLEL_WORK the solve runs serially with no OpenMP region at all,
    MIN_PARALLEL_WORK = 50000000
    # and the wavefront schedule, one barrier per anti-diagonal, needs this much work on its
    # longest diagonal (it lost 5-13x at 2.6e6-9.4e6).
    MIN_DIAGONAL_WORK = 20000000
    # Images solved together by the batch kernel (kernels.h).
    LANES = NFE_LANES

# Schedule codes returned by _schedule, and their names (returned by the entry points).
cdef enum:
    SERIAL = 0
    OVER_UNITS = 1
    OVER_DIAGONALS = 2

if nfe_register_fork_handler() != 0:
    raise ImportError("could not register the fork handler of the compiled solve")

SCHEDULES = ("image/serial", "image/over-images", "image/over-diagonals",
             "batch/serial", "batch/over-blocks", "batch/over-diagonals")

# Instruction sets of the kernels, indexed by the NFE_ISA_* codes of kernels.h.
INSTRUCTION_SETS = ("baseline", "avx2", "avx512")
assert len(INSTRUCTION_SETS) == NFE_ISA_COUNT
# The set every solve uses: the widest the CPU supports, unless set_instruction_set (or the
# NORMFLOWS_EMERGING_ISA environment variable, read at import) chose another.
cdef int _isa = nfe_best_isa()


def supported_instruction_sets():
    """The names in ``INSTRUCTION_SETS`` whose kernels this CPU runs, narrowest first."""
    return tuple(name for code, name in enumerate(INSTRUCTION_SETS) if nfe_isa_supported(code))


def instruction_set():
    """The name of the instruction set the solves use now."""
    return INSTRUCTION_SETS[_isa]


def set_instruction_set(str name=None):
    """Make every later solve use the kernels of instruction set ``name`` (None: the widest
    supported, the default); returns the previous name. For tests and benchmarks.

    Raises:
      ValueError: ``name`` is not in ``INSTRUCTION_SETS``, or this CPU does not support it
    """
    global _isa
    previous = INSTRUCTION_SETS[_isa]
    if name is None:
        _isa = nfe_best_isa()
        return previous
    if name not in INSTRUCTION_SETS:
        raise ValueError(f"instruction set must be None or one of {INSTRUCTION_SETS}, got {name!r}")
    if not nfe_isa_supported(INSTRUCTION_SETS.index(name)):
        raise ValueError(f"this CPU does not support the {name!r} kernels; it supports "
                         f"{supported_instruction_sets()}")
    _isa = INSTRUCTION_SETS.index(name)
    return previous


import os as _os
if _os.environ.get("NORMFLOWS_EMERGING_ISA", "").strip():
    try:  # the name as the user may type it: any case, stray spaces
        set_instruction_set(_os.environ["NORMFLOWS_EMERGING_ISA"].strip().lower())
    except ValueError as error:  # an ImportError: the package then falls back to the torch solve
        raise ImportError(f"environment variable NORMFLOWS_EMERGING_ISA: {error}") from None


cdef inline int _schedule(Py_ssize_t units, Py_ssize_t unit_images, Py_ssize_t height,
                          Py_ssize_t width, Py_ssize_t per_pixel, int num_threads) noexcept nogil:
    """Pick SERIAL, OVER_UNITS or OVER_DIAGONALS for ``units`` units of ``unit_images`` images."""
    cdef double work = <double> units * unit_images * height * width * per_pixel
    if num_threads <= 1 or work < MIN_PARALLEL_WORK:
        return SERIAL
    if units >= num_threads:
        return OVER_UNITS
    if <double> units * unit_images * min(height, width) * per_pixel >= MIN_DIAGONAL_WORK:
        return OVER_DIAGONALS
    return SERIAL


cdef inline void _solve_pixel(
    int isa, const real* y, real* x, Py_ssize_t channels, Py_ssize_t padded, Py_ssize_t plane,
    Py_ssize_t width, Py_ssize_t i, Py_ssize_t j, const real* taps, const Py_ssize_t* tap_di,
    const Py_ssize_t* tap_dj, Py_ssize_t num_taps, const real* lower, const real* inv_diag,
    real* scratch,
) noexcept nogil:
    """Solve pixel (i, j) of one NCHW image (see kernels.h)."""
    if real is float:
        nfe_image_pixel_f32(isa, y, x, channels, padded, plane, width, i, j, taps, tap_di, tap_dj,
                            num_taps, lower, inv_diag, scratch)
    else:
        nfe_image_pixel_f64(isa, y, x, channels, padded, plane, width, i, j, taps, tap_di, tap_dj,
                            num_taps, lower, inv_diag, scratch)


cdef inline void _solve_image(
    int isa, const real* y, real* x, Py_ssize_t channels, Py_ssize_t padded, Py_ssize_t height,
    Py_ssize_t width, const real* taps, const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj,
    Py_ssize_t num_taps, const real* lower, const real* inv_diag, real* scratch,
) noexcept nogil:
    """Solve every pixel of one NCHW image in raster order (see kernels.h)."""
    if real is float:
        nfe_image_raster_f32(isa, y, x, channels, padded, height, width, taps, tap_di, tap_dj,
                             num_taps, lower, inv_diag, scratch)
    else:
        nfe_image_raster_f64(isa, y, x, channels, padded, height, width, taps, tap_di, tap_dj,
                             num_taps, lower, inv_diag, scratch)


cdef inline void _solve_pixel_lanes(
    int isa, real* block, Py_ssize_t channels, Py_ssize_t width, Py_ssize_t i, Py_ssize_t j,
    const real* weights, const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj, Py_ssize_t num_taps,
    const real* lower, const real* inv_diag,
) noexcept nogil:
    """Solve pixel (i, j) of the LANES images of one (pixel, C, LANES) block (see kernels.h)."""
    if real is float:
        nfe_batch_pixel_f32(isa, block, channels, width, i, j, weights, tap_di, tap_dj, num_taps,
                            lower, inv_diag)
    else:
        nfe_batch_pixel_f64(isa, block, channels, width, i, j, weights, tap_di, tap_dj, num_taps,
                            lower, inv_diag)


cdef inline void _solve_block(
    int isa, real* block, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
    const real* weights, const Py_ssize_t* tap_di, const Py_ssize_t* tap_dj, Py_ssize_t num_taps,
    const real* lower, const real* inv_diag,
) noexcept nogil:
    """Solve every pixel of one (pixel, C, LANES) block in raster order (see kernels.h)."""
    if real is float:
        nfe_batch_raster_f32(isa, block, channels, height, width, weights, tap_di, tap_dj,
                             num_taps, lower, inv_diag)
    else:
        nfe_batch_raster_f64(isa, block, channels, height, width, weights, tap_di, tap_dj,
                             num_taps, lower, inv_diag)


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


cdef inline Py_ssize_t _tap_offset(Py_ssize_t steps, Py_ssize_t dilation,
                                   Py_ssize_t extent) noexcept nogil:
    """-(steps * dilation), clamped at -extent (already outside the image) so it cannot overflow."""
    if steps == 0:
        return 0
    if dilation >= extent or steps * dilation >= extent:
        return -extent
    return -steps * dilation


cdef int _solve(
    const real[:, :, :, ::1] y, const real[:, :, :, ::1] kernel, real[:, :, :, ::1] x,
    Py_ssize_t dilation, int num_threads, int forced,
) except -1 nogil:
    """Solve into ``x``; the shapes were checked by the caller. Returns the index in SCHEDULES.

    ``forced`` is SERIAL, OVER_UNITS or OVER_DIAGONALS to override ``_schedule``, or -1.
    """
    cdef Py_ssize_t batch = y.shape[0], channels = y.shape[1]
    cdef Py_ssize_t height = y.shape[2], width = y.shape[3], size = kernel.shape[2]
    cdef Py_ssize_t plane = height * width, image = channels * plane
    cdef Py_ssize_t num_taps = size * size - 1, corner = size - 1
    cdef bint lanes = batch >= LANES
    cdef Py_ssize_t units = (batch + LANES - 1) // LANES if lanes else batch
    cdef Py_ssize_t block_size = plane * channels * LANES
    cdef int schedule = forced if forced >= 0 else _schedule(
        units, LANES if lanes else 1, height, width, channels * channels * size * size, num_threads)
    if nfe_openmp_unusable:  # forked after a parallel region (kernels.h)
        schedule = SERIAL
    cdef int threads = num_threads if schedule != SERIAL else 1
    cdef int isa = _isa  # read once: set_instruction_set may change it meanwhile
    cdef Py_ssize_t a, d, o, c, t, u, i, j
    # Private to each thread of the parallel regions (initialised: Cython makes them firstprivate).
    cdef Py_ssize_t idx = 0, start = 0, stop = 0, first = 0, count = 0, diagonal = 0, work = 0
    cdef int thread = 0, team = 1
    cdef real diagonal_entry
    # The image kernel's output channels, padded to whole vectors of LANES values.
    cdef Py_ssize_t padded = (channels + LANES - 1) // LANES * LANES
    cdef Py_ssize_t taps_size = max(num_taps, 1) * channels * (channels if lanes else padded)
    cdef void* memory = NULL
    cdef real* buffer = NULL  # LANES-image blocks (batch kernel) or per-thread scratch (image kernel)
    cdef real* taps = NULL
    if posix_memalign(&memory, 64, taps_size * sizeof(real)) == 0:
        taps = <real*> memory
    cdef real* lower = NULL
    cdef Py_ssize_t lower_size = channels * (channels if lanes else padded)
    if posix_memalign(&memory, 64, lower_size * sizeof(real)) == 0:
        lower = <real*> memory
    cdef real* inv_diag = <real*> malloc(channels * sizeof(real))
    cdef Py_ssize_t* tap_di = <Py_ssize_t*> malloc(max(num_taps, 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* tap_dj = <Py_ssize_t*> malloc(max(num_taps, 1) * sizeof(Py_ssize_t))
    cdef const real* y0 = &y[0, 0, 0, 0]
    cdef real* x0 = &x[0, 0, 0, 0]
    if posix_memalign(&memory, 64, (units * block_size if lanes else threads * 2 * padded)
                      * sizeof(real)) == 0:
        buffer = <real*> memory
    if not (taps and lower and inv_diag and tap_di and tap_dj and buffer):
        free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj); free(buffer)
        with gil:
            raise MemoryError("not enough memory for the compiled solve's buffers")

    if schedule != SERIAL:
        nfe_note_parallel_start()

    # Weights arranged once, masked taps dropped, in the order the chosen kernel reads them: the
    # batch kernel runs over input channels for one output, the image kernel over (padded) outputs.
    memset(taps, 0, taps_size * sizeof(real))
    memset(lower, 0, lower_size * sizeof(real))
    t = 0
    for a in range(size):
        for d in range(size):
            if a == corner and d == corner:
                continue
            tap_di[t] = _tap_offset(corner - a, dilation, height)
            tap_dj[t] = _tap_offset(corner - d, dilation, width)
            t += 1
    for o in range(channels):
        diagonal_entry = kernel[o, o, corner, corner]
        if diagonal_entry == 0:
            free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj); free(buffer)
            with gil:
                raise ZeroDivisionError(
                    f"the corner tap's diagonal entry kernel[{o}, {o}, {corner}, {corner}] is 0: "
                    "the convolution is singular")
        inv_diag[o] = 1 / diagonal_entry
        for c in range(channels):
            if lanes:
                lower[o * channels + c] = kernel[o, c, corner, corner] if c < o else 0
            else:
                lower[c * padded + o] = kernel[o, c, corner, corner] if c < o else 0
            t = 0
            for a in range(size):
                for d in range(size):
                    if a == corner and d == corner:
                        continue
                    if lanes:
                        taps[(o * num_taps + t) * channels + c] = kernel[o, c, a, d]
                    else:
                        taps[(t * channels + c) * padded + o] = kernel[o, c, a, d]
                    t += 1

    if lanes:
        if schedule == OVER_UNITS:
            for u in prange(units, schedule="static", num_threads=threads):
                _copy_block(<real*> y0, buffer + u * block_size, batch, channels, plane, u * LANES,
                            True)
                _solve_block(isa, buffer + u * block_size, channels, height, width, taps, tap_di,
                             tap_dj, num_taps, lower, inv_diag)
                _copy_block(x0, buffer + u * block_size, batch, channels, plane, u * LANES, False)
        else:
            for u in range(units):
                _copy_block(<real*> y0, buffer + u * block_size, batch, channels, plane, u * LANES,
                            True)
            if schedule == OVER_DIAGONALS:
                with parallel(num_threads=threads):
                    thread = threadid()
                    team = nfe_team_size()
                    for diagonal in range(height + width - 1):
                        nfe_test_delay(thread)
                        first = max(0, diagonal - width + 1)
                        count = min(diagonal, height - 1) - first + 1
                        work = units * count
                        start = work * thread // team
                        stop = work * (thread + 1) // team
                        for idx in range(start, stop):
                            i = first + idx % count
                            _solve_pixel_lanes(isa, buffer + (idx // count) * block_size, channels,
                                               width, i, diagonal - i, taps, tap_di, tap_dj,
                                               num_taps, lower, inv_diag)
                        # The next diagonal reads pixels that other threads solved on this one.
                        nfe_barrier()
            else:
                for u in range(units):
                    _solve_block(isa, buffer + u * block_size, channels, height, width, taps,
                                 tap_di, tap_dj, num_taps, lower, inv_diag)
            for u in range(units):
                _copy_block(x0, buffer + u * block_size, batch, channels, plane, u * LANES, False)
    elif schedule == OVER_UNITS:
        for u in prange(batch, schedule="static", num_threads=threads):
            _solve_image(isa, y0 + u * image, x0 + u * image, channels, padded, height, width,
                         taps, tap_di, tap_dj, num_taps, lower, inv_diag,
                         buffer + threadid() * 2 * padded)
    elif schedule == OVER_DIAGONALS:
        with parallel(num_threads=threads):
            thread = threadid()
            team = nfe_team_size()
            for diagonal in range(height + width - 1):
                nfe_test_delay(thread)
                first = max(0, diagonal - width + 1)
                count = min(diagonal, height - 1) - first + 1
                work = batch * count
                start = work * thread // team
                stop = work * (thread + 1) // team
                for idx in range(start, stop):
                    i = first + idx % count
                    _solve_pixel(isa, y0 + (idx // count) * image, x0 + (idx // count) * image,
                                 channels, padded, plane, width, i, diagonal - i, taps, tap_di,
                                 tap_dj, num_taps, lower, inv_diag, buffer + thread * 2 * padded)
                # The next diagonal reads pixels that other threads solved on this one.
                nfe_barrier()
    else:
        for u in range(batch):
            _solve_image(isa, y0 + u * image, x0 + u * image, channels, padded, height, width,
                         taps, tap_di, tap_dj, num_taps, lower, inv_diag, buffer)

    free(taps); free(lower); free(inv_diag); free(tap_di); free(tap_dj); free(buffer)
    return schedule + (3 if lanes else 0)


cdef int _check(const Py_ssize_t* y_shape, const Py_ssize_t* kernel_shape,
                const Py_ssize_t* out_shape, Py_ssize_t dilation, int num_threads) except -1:
    """Raise ValueError unless the shapes fit together (the buffers' dtype, 4 dimensions and
    C-contiguity are checked by the typed memoryviews when the arguments are converted)."""
    cdef Py_ssize_t channels = y_shape[1]
    cdef tuple y_tuple = (y_shape[0], y_shape[1], y_shape[2], y_shape[3])
    if channels < 1:
        raise ValueError(f"y must have at least one channel, got shape {y_tuple}")
    if (kernel_shape[0] != channels or kernel_shape[1] != channels or kernel_shape[2] < 1
            or kernel_shape[3] != kernel_shape[2]):
        raise ValueError(f"kernel must have shape ({channels}, {channels}, m, m) with m >= 1 for "
                         f"y of shape {y_tuple}, got {tuple(kernel_shape[d] for d in range(4))}")
    for d in range(4):
        if out_shape[d] != y_shape[d]:
            raise ValueError(f"out must have the shape of y {y_tuple}, "
                             f"got {tuple(out_shape[d] for d in range(4))}")
    if dilation < 1:
        raise ValueError(f"dilation must be a positive integer, got {dilation}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    return 0


cdef int _forced_schedule(str schedule, Py_ssize_t batch) except -2:
    """-1 for ``schedule=None``, else the code of a name in SCHEDULES that fits ``batch``."""
    if schedule is None:
        return -1
    kernel_name = "batch" if batch >= LANES else "image"
    names = [name for name in SCHEDULES if name.startswith(kernel_name + "/")]
    if schedule not in names:
        raise ValueError(f"schedule must be None or one of {names} for a batch of {batch}, "
                         f"got {schedule!r}")
    return names.index(schedule)


def solve_causal_float32(const float[:, :, :, ::1] y, const float[:, :, :, ::1] kernel,
                         float[:, :, :, ::1] out, Py_ssize_t dilation, int num_threads,
                         str schedule=None):
    """Solve ``causal_conv(out, kernel) = y`` for ``out`` (float32, C-contiguous NCHW).

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted
      kernel: (C, C, m, m) causal kernel, corner tap lower-triangular with non-zero diagonal
        (entries above the corner's diagonal are not read)
      out: (B, C, H, W) written in place
      dilation: spacing of the taps, >= 1
      num_threads: OpenMP threads to use at most, >= 1
      schedule: None to choose by work size, or a name from ``SCHEDULES`` to force (tests):
        "image/..." for batches below LANES images, "batch/..." from LANES up. In a process
        forked after a parallel solve every solve runs serially (OpenMP hangs there otherwise).

    Returns:
      the name of the schedule that ran, one of ``SCHEDULES``

    Raises:
      ValueError: wrong dtype, not 4-D, not C-contiguous, shapes that do not fit together, a
        dilation or thread count below 1, or an unknown schedule
      ZeroDivisionError: a zero on the corner tap's diagonal (``out`` is then left unwritten)
    """
    _check(y.shape, kernel.shape, out.shape, dilation, num_threads)
    cdef int forced = _forced_schedule(schedule, y.shape[0])
    if y.shape[0] == 0 or y.shape[2] == 0 or y.shape[3] == 0:
        return SCHEDULES[0]
    with nogil:
        code = _solve(y, kernel, out, dilation, num_threads, forced)
    return SCHEDULES[code]


def solve_causal_float64(const double[:, :, :, ::1] y, const double[:, :, :, ::1] kernel,
                         double[:, :, :, ::1] out, Py_ssize_t dilation, int num_threads,
                         str schedule=None):
    """Float64 version of :func:`solve_causal_float32`."""
    _check(y.shape, kernel.shape, out.shape, dilation, num_threads)
    cdef int forced = _forced_schedule(schedule, y.shape[0])
    if y.shape[0] == 0 or y.shape[2] == 0 or y.shape[3] == 0:
        return SCHEDULES[0]
    with nogil:
        code = _solve(y, kernel, out, dilation, num_threads, forced)
    return SCHEDULES[code]


def has_openmp():
    """True if the extension was built with OpenMP."""
    return bool(NFE_HAVE_OPENMP)


def _set_test_thread_delay(int microseconds):
    """Test hook: make thread 0 of the wavefront schedule sleep before every anti-diagonal."""
    global nfe_test_delay_us
    nfe_test_delay_us = max(microseconds, 0)
