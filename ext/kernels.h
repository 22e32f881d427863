/* Per-pixel kernels of the compiled solve (called from _solve.pyx), built for several instruction
 * sets from one source, one of which is chosen at load time.
 *
 * Image kernel: one pixel of one NCHW image; the output channels are held in vectors of partial
 * sums that stay in registers while every solved neighbour value is multiplied into them (weights
 * padded with zeros to whole vectors of NFE_LANES values), then the corner tap's triangle.
 *
 * Batch kernel: one pixel of NFE_LANES images. A block holds NFE_LANES images as (pixel, channel,
 * NFE_LANES): the values of one channel at one pixel are one or more vectors (NFE_LANES / width),
 * so each multiply-add updates several images at once and the partial sum of an output channel
 * stays in a register. Blocks must be aligned to 64 bytes.
 *
 * Accuracy: every output is a sum of about C * m * m products. Summed in one chain its rounding
 * error grows with C; here the products go into partial sums (two: even and odd channels, which
 * also lets consecutive multiply-adds run without waiting for each other) that are added to the
 * output's total and started again after every NFE_BLOCK or more products (at most 2 NFE_BLOCK),
 * and the right-hand side comes in only at the end.
 *
 * Instruction sets (NFE_ISA_*): "baseline" is the compiler's default target (SSE2 on x86-64),
 * "avx2" AVX2 + FMA, "avx512" AVX-512 F/VL/BW/DQ + AVX2 + FMA. The same kernel source is compiled
 * once per set with GCC/Clang target attributes and the vector width of that set (one hardware
 * register per vector: the float64 kernels of a vector wider than the registers would keep it in
 * memory; float32 under AVX-512 uses 8-wide vectors, with its 32 registers, as 16-wide ones would
 * need blocks of 16 images). nfe_best_isa() is the widest set the CPU (and OS) supports; the
 * extension starts there and tests can force any supported one (nfe_isa_supported). Other
 * compilers and CPUs get the baseline build only.
 */
#ifndef NFE_KERNELS_H
#define NFE_KERNELS_H

#include <stddef.h>

/* Images per block of the batch kernel; the image kernel pads output channels to a multiple. */
#define NFE_LANES 8
/* Input channels per partial sum (see Accuracy above). */
#define NFE_BLOCK 16

#define NFE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NFE_UNROLL _Pragma("GCC unroll 16")

/* Add the partial sums a[k] + b[k] of the last FILLED products per output to total[k] and
 * start them again once they hold NFE_BLOCK or more (see Accuracy above). */
#define NFE_FLUSH(VEC, K, FILLED, FORCE)                                                        \
    if ((FORCE) || (FILLED) >= NFE_BLOCK) {                                                     \
        NFE_UNROLL for (int k = 0; k < (K); k++) {                                              \
            total[k] += a[k] + b[k];                                                            \
            a[k] = b[k] = (VEC){0};                                                             \
        }                                                                                       \
        FILLED = 0;                                                                             \
    }

/* The neighbour sums of output vectors v .. v + NV - 1 of the image kernel, into `sums`. */
#define NFE_IMAGE_VECTORS(REAL, VEC, NV)                                                        \
    {                                                                                           \
        VEC total[NV], a[NV], b[NV];                                                            \
        ptrdiff_t filled = 0;                                                                   \
        NFE_UNROLL for (int k = 0; k < (NV); k++) total[k] = a[k] = b[k] = (VEC){0};            \
        for (ptrdiff_t t = 0; t < num_taps; t++) {                                              \
            ptrdiff_t ii = i + tap_di[t], jj = j + tap_dj[t];                                   \
            if (ii < 0 || jj < 0)                                                               \
                continue;                                                                       \
            const REAL *there = x + ii * width + jj;                                            \
            const VEC *w = (const VEC *)(taps + t * channels * padded) + v;                     \
            for (ptrdiff_t c0 = 0; c0 < channels; c0 += NFE_BLOCK) {                            \
                ptrdiff_t c = c0, c1 = NFE_MIN(c0 + NFE_BLOCK, channels);                       \
                for (; c + 1 < c1; c += 2) {                                                    \
                    REAL value = there[c * plane], next = there[(c + 1) * plane];               \
                    NFE_UNROLL for (int k = 0; k < (NV); k++) {                                 \
                        a[k] += value * w[c * vectors + k];                                     \
                        b[k] += next * w[(c + 1) * vectors + k];                                \
                    }                                                                           \
                }                                                                               \
                if (c < c1) {                                                                   \
                    REAL value = there[c * plane];                                              \
                    NFE_UNROLL for (int k = 0; k < (NV); k++) a[k] += value * w[c * vectors + k]; \
                }                                                                               \
                filled += c1 - c0;                                                              \
                NFE_FLUSH(VEC, NV, filled, 0)                                                   \
            }                                                                                   \
        }                                                                                       \
        NFE_FLUSH(VEC, NV, filled, 1)                                                           \
        NFE_UNROLL for (int k = 0; k < (NV); k++)((VEC *)sums)[v + k] = total[k];               \
    }

/* Solve pixel (i, j) of one image: x[c * plane + p] from y[c * plane + p], p = i * width + j.
 * taps: (taps, C_in, padded) non-corner taps, output channels padded with zeros to `padded`, a
 * multiple of NFE_LANES, rows aligned like VEC; tap_di/tap_dj: their (non-positive) offsets;
 * lower: (C_in, padded) corner tap, zero on and above the diagonal and in the padding, rows
 * aligned like VEC; inv_diag: 1 / corner diagonal; scratch: 2 * padded values aligned like VEC.
 * The output channels go W at a time, NV vectors at once (the rest 2 and 1 at a time), whose
 * partial sums stay in registers over all taps and input channels. The triangle is solved in
 * blocks of NFE_BLOCK channels: inside a block in order, each solved value multiplied into whole
 * vectors of later outputs, and each block's products for the outputs after it summed apart
 * before they join those outputs' totals. */
#define NFE_DEFINE_IMAGE_KERNEL(NAME, TARGET, REAL, VEC, W, NV)                                 \
    TARGET static void NAME##_pixel(const REAL *y, REAL *x, ptrdiff_t channels,                 \
                                    ptrdiff_t padded, ptrdiff_t plane, ptrdiff_t width,         \
                                    ptrdiff_t i, ptrdiff_t j, const REAL *taps,                 \
                                    const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,           \
                                    ptrdiff_t num_taps, const REAL *lower,                      \
                                    const REAL *inv_diag, REAL *scratch)                        \
    {                                                                                           \
        ptrdiff_t p = i * width + j, vectors = padded / (W), v = 0;                             \
        REAL *sums = scratch, *part = scratch + padded;                                         \
        for (; v + (NV) <= vectors; v += (NV))                                                  \
            NFE_IMAGE_VECTORS(REAL, VEC, NV)                                                    \
        for (; (NV) > 2 && v + 2 <= vectors; v += 2)                                            \
            NFE_IMAGE_VECTORS(REAL, VEC, 2)                                                     \
        for (; v < vectors; v++)                                                                \
            NFE_IMAGE_VECTORS(REAL, VEC, 1)                                                     \
        VEC *sum_vectors = (VEC *)sums, *part_vectors = (VEC *)part;                            \
        for (ptrdiff_t c0 = 0; c0 < channels; c0 += NFE_BLOCK) {                                \
            ptrdiff_t c1 = NFE_MIN(c0 + NFE_BLOCK, channels);                                   \
            for (ptrdiff_t k = c0 / (W); k < vectors; k++)                                      \
                part_vectors[k] = (VEC){0};                                                     \
            for (ptrdiff_t c = c0; c < c1; c++) {                                               \
                REAL value = (y[c * plane + p] - (sums[c] + part[c])) * inv_diag[c];            \
                x[c * plane + p] = value;                                                       \
                /* whole vectors from the one holding output c + 1: the row is 0 up to c */     \
                const VEC *w = (const VEC *)(lower + c * padded);                               \
                for (ptrdiff_t k = (c + 1) / (W); k < vectors; k++)                             \
                    part_vectors[k] += value * w[k];                                            \
            }                                                                                   \
            for (ptrdiff_t k = c1 / (W); k < vectors; k++)                                      \
                sum_vectors[k] += part_vectors[k];                                              \
        }                                                                                       \
    }                                                                                           \
    /* Every pixel of one image in raster order. */                                             \
    TARGET static void NAME##_raster(const REAL *y, REAL *x, ptrdiff_t channels,                \
                                     ptrdiff_t padded, ptrdiff_t height, ptrdiff_t width,       \
                                     const REAL *taps, const ptrdiff_t *tap_di,                 \
                                     const ptrdiff_t *tap_dj, ptrdiff_t num_taps,               \
                                     const REAL *lower, const REAL *inv_diag, REAL *scratch)    \
    {                                                                                           \
        for (ptrdiff_t i = 0; i < height; i++)                                                  \
            for (ptrdiff_t j = 0; j < width; j++)                                               \
                NAME##_pixel(y, x, channels, padded, height * width, width, i, j, taps, tap_di, \
                             tap_dj, num_taps, lower, inv_diag, scratch);                       \
    }

/* a[g], b[g] += sum over c in [from, to) of w[g][c] * (vector of channel c at src), for the G
 * outputs of a group, even and odd channels apart, flushed into total[g] (NFE_FLUSH). */
#define NFE_GROUP_SUM(VEC, G, src, w, from, to)                                                 \
    for (ptrdiff_t c0 = (from); c0 < (to); c0 += NFE_BLOCK) {                                   \
        ptrdiff_t c = c0, c1 = NFE_MIN(c0 + NFE_BLOCK, (to));                                   \
        for (; c + 1 < c1; c += 2) {                                                            \
            VEC value = *(const VEC *)((src) + c * NFE_LANES);                                  \
            VEC next = *(const VEC *)((src) + (c + 1) * NFE_LANES);                             \
            NFE_UNROLL for (int g = 0; g < (G); g++) {                                          \
                a[g] += w[g][c] * value;                                                        \
                b[g] += w[g][c + 1] * next;                                                     \
            }                                                                                   \
        }                                                                                       \
        if (c < c1) {                                                                           \
            VEC value = *(const VEC *)((src) + c * NFE_LANES);                                  \
            NFE_UNROLL for (int g = 0; g < (G); g++) a[g] += w[g][c] * value;                   \
        }                                                                                       \
        filled += c1 - c0;                                                                      \
        NFE_FLUSH(VEC, G, filled, 0)                                                            \
    }

/* Solve outputs o .. o + G - 1 of pixel (i, j), the W images of `base` (see below). */
#define NFE_GROUP(REAL, VEC, G)                                                                 \
    {                                                                                           \
        VEC total[G], a[G], b[G];                                                               \
        const REAL *w[G];                                                                       \
        ptrdiff_t filled = 0;                                                                   \
        NFE_UNROLL for (int g = 0; g < (G); g++) total[g] = a[g] = b[g] = (VEC){0};             \
        for (ptrdiff_t t = 0; t < num_taps; t++) {                                              \
            ptrdiff_t ii = i + tap_di[t], jj = j + tap_dj[t];                                   \
            if (ii < 0 || jj < 0)                                                               \
                continue;                                                                       \
            const REAL *there = base + (ii * width + jj) * channels * NFE_LANES;                \
            NFE_UNROLL for (int g = 0; g < (G); g++) w[g] =                                     \
                weights + ((o + g) * num_taps + t) * channels;                                  \
            NFE_GROUP_SUM(VEC, G, there, w, 0, channels)                                        \
        }                                                                                       \
        NFE_UNROLL for (int g = 0; g < (G); g++) w[g] = lower + (o + g) * channels;             \
        NFE_GROUP_SUM(VEC, G, here, w, 0, o)                                                    \
        NFE_FLUSH(VEC, G, filled, 1)                                                            \
        /* the group's own corner entries, in order: output o + g needs outputs < o + g */      \
        NFE_UNROLL for (int g = 0; g < (G); g++) {                                              \
            VEC *out = (VEC *)(here + (o + g) * NFE_LANES);                                     \
            VEC value = (*out - total[g]) * inv_diag[o + g];                                    \
            *out = value;                                                                       \
            NFE_UNROLL for (int h = g + 1; h < (G); h++) total[h] += w[h][o + g] * value;       \
        }                                                                                       \
    }

/* Solve pixel (i, j) of a block in place: the block holds the right-hand side at pixels not yet
 * solved and the solution at pixels already solved (all earlier in raster order).
 * weights: (C_out, taps, C_in) non-corner taps; tap_di/tap_dj: their (non-positive) offsets;
 * lower: (C_out, C_in) corner tap, used below the diagonal; inv_diag: 1 / corner diagonal.
 * The NFE_LANES images go W at a time (`base`); output channels go G at a time (the rest 4, 2
 * and 1 at a time) with their own partial sums, so every input vector loaded serves G outputs. */
#define NFE_DEFINE_BATCH_KERNEL(NAME, TARGET, REAL, VEC, W, G)                                  \
    TARGET static void NAME##_pixel(REAL *block, ptrdiff_t channels, ptrdiff_t width,           \
                                    ptrdiff_t i, ptrdiff_t j, const REAL *weights,              \
                                    const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,           \
                                    ptrdiff_t num_taps, const REAL *lower,                      \
                                    const REAL *inv_diag)                                       \
    {                                                                                           \
        for (ptrdiff_t s = 0; s < NFE_LANES; s += (W)) {                                        \
            REAL *base = block + s, *here = base + (i * width + j) * channels * NFE_LANES;      \
            ptrdiff_t o = 0;                                                                    \
            for (; o + (G) <= channels; o += (G))                                               \
                NFE_GROUP(REAL, VEC, G)                                                         \
            /* the rest in smaller groups (G is 4 or 8) */                                      \
            for (; (G) > 4 && o + 4 <= channels; o += 4)                                        \
                NFE_GROUP(REAL, VEC, 4)                                                         \
            for (; o + 2 <= channels; o += 2)                                                   \
                NFE_GROUP(REAL, VEC, 2)                                                         \
            for (; o < channels; o++)                                                           \
                NFE_GROUP(REAL, VEC, 1)                                                         \
        }                                                                                       \
    }                                                                                           \
    /* Every pixel of one block in raster order. */                                             \
    TARGET static void NAME##_raster(REAL *block, ptrdiff_t channels, ptrdiff_t height,         \
                                     ptrdiff_t width, const REAL *weights,                      \
                                     const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,          \
                                     ptrdiff_t num_taps, const REAL *lower,                     \
                                     const REAL *inv_diag)                                      \
    {                                                                                           \
        for (ptrdiff_t i = 0; i < height; i++)                                                  \
            for (ptrdiff_t j = 0; j < width; j++)                                               \
                NAME##_pixel(block, channels, width, i, j, weights, tap_di, tap_dj, num_taps,   \
                             lower, inv_diag);                                                  \
    }

/* The four kernels of one instruction set: W32/W64 values per float32/float64 vector, NV vectors
 * at once in the image kernel, G outputs at once in the batch kernel. */
#define NFE_DEFINE_ISA(ISA, TARGET, W32, W64, NV, G)                                            \
    typedef float nfe_##ISA##_vf32 __attribute__((vector_size((W32) * sizeof(float))));         \
    typedef double nfe_##ISA##_vf64 __attribute__((vector_size((W64) * sizeof(double))));       \
    NFE_DEFINE_IMAGE_KERNEL(nfe_##ISA##_image_f32, TARGET, float, nfe_##ISA##_vf32, W32, NV)    \
    NFE_DEFINE_IMAGE_KERNEL(nfe_##ISA##_image_f64, TARGET, double, nfe_##ISA##_vf64, W64, NV)   \
    NFE_DEFINE_BATCH_KERNEL(nfe_##ISA##_batch_f32, TARGET, float, nfe_##ISA##_vf32, W32, G)     \
    NFE_DEFINE_BATCH_KERNEL(nfe_##ISA##_batch_f64, TARGET, double, nfe_##ISA##_vf64, W64, G)

enum { NFE_ISA_BASELINE, NFE_ISA_AVX2, NFE_ISA_AVX512, NFE_ISA_COUNT };

#if defined(__GNUC__) && defined(__x86_64__)
#define NFE_X86_TARGETS 1
NFE_DEFINE_ISA(baseline, , 4, 2, 2, 4)
NFE_DEFINE_ISA(avx2, __attribute__((target("avx2,fma"))), 8, 4, 2, 4)
NFE_DEFINE_ISA(avx512, __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), 8,
               8, 4, 8)
#else
NFE_DEFINE_ISA(baseline, , NFE_LANES, NFE_LANES, 2, 4)
#endif

/* 1 if the CPU and OS run the kernels of `isa`, else 0. */
static int nfe_isa_supported(int isa)
{
    if (isa == NFE_ISA_BASELINE)
        return 1;
#ifdef NFE_X86_TARGETS
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == NFE_ISA_AVX2)
        return avx2;
    if (isa == NFE_ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#endif
    return 0;
}

static int nfe_best_isa(void)
{
    int isa = NFE_ISA_COUNT - 1;
    while (!nfe_isa_supported(isa))
        isa--;
    return isa;
}

/* Entry points: the kernel of instruction set `isa` (one that nfe_isa_supported accepts). */
#ifdef NFE_X86_TARGETS
#define NFE_DISPATCH(KERNEL, ARGS)                                                              \
    switch (isa) {                                                                              \
    case NFE_ISA_AVX512:                                                                        \
        nfe_avx512_##KERNEL ARGS;                                                               \
        break;                                                                                  \
    case NFE_ISA_AVX2:                                                                          \
        nfe_avx2_##KERNEL ARGS;                                                                 \
        break;                                                                                  \
    default:                                                                                    \
        nfe_baseline_##KERNEL ARGS;                                                             \
    }
#else
#define NFE_DISPATCH(KERNEL, ARGS)                                                              \
    (void)isa;                                                                                  \
    nfe_baseline_##KERNEL ARGS;
#endif

#define NFE_DEFINE_ENTRY_POINTS(SUFFIX, REAL)                                                   \
    static void nfe_image_pixel_##SUFFIX(                                                       \
        int isa, const REAL *y, REAL *x, ptrdiff_t channels, ptrdiff_t padded, ptrdiff_t plane, \
        ptrdiff_t width, ptrdiff_t i, ptrdiff_t j, const REAL *taps, const ptrdiff_t *tap_di,   \
        const ptrdiff_t *tap_dj, ptrdiff_t num_taps, const REAL *lower, const REAL *inv_diag,   \
        REAL *scratch)                                                                          \
    {                                                                                           \
        NFE_DISPATCH(image_##SUFFIX##_pixel, (y, x, channels, padded, plane, width, i, j, taps, \
                                              tap_di, tap_dj, num_taps, lower, inv_diag,        \
                                              scratch))                                         \
    }                                                                                           \
    static void nfe_image_raster_##SUFFIX(                                                      \
        int isa, const REAL *y, REAL *x, ptrdiff_t channels, ptrdiff_t padded, ptrdiff_t height, \
        ptrdiff_t width, const REAL *taps, const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,    \
        ptrdiff_t num_taps, const REAL *lower, const REAL *inv_diag, REAL *scratch)             \
    {                                                                                           \
        NFE_DISPATCH(image_##SUFFIX##_raster, (y, x, channels, padded, height, width, taps,     \
                                               tap_di, tap_dj, num_taps, lower, inv_diag,       \
                                               scratch))                                        \
    }                                                                                           \
    static void nfe_batch_pixel_##SUFFIX(int isa, REAL *block, ptrdiff_t channels,              \
                                         ptrdiff_t width, ptrdiff_t i, ptrdiff_t j,             \
                                         const REAL *weights, const ptrdiff_t *tap_di,          \
                                         const ptrdiff_t *tap_dj, ptrdiff_t num_taps,           \
                                         const REAL *lower, const REAL *inv_diag)               \
    {                                                                                           \
        NFE_DISPATCH(batch_##SUFFIX##_pixel, (block, channels, width, i, j, weights, tap_di,    \
                                              tap_dj, num_taps, lower, inv_diag))               \
    }                                                                                           \
    static void nfe_batch_raster_##SUFFIX(int isa, REAL *block, ptrdiff_t channels,             \
                                          ptrdiff_t height, ptrdiff_t width,                    \
                                          const REAL *weights, const ptrdiff_t *tap_di,         \
                                          const ptrdiff_t *tap_dj, ptrdiff_t num_taps,          \
                                          const REAL *lower, const REAL *inv_diag)              \
    {                                                                                           \
        NFE_DISPATCH(batch_##SUFFIX##_raster, (block, channels, height, width, weights, tap_di, \
                                               tap_dj, num_taps, lower, inv_diag))              \
    }

NFE_DEFINE_ENTRY_POINTS(f32, float)
NFE_DEFINE_ENTRY_POINTS(f64, double)

/* The threads of an OpenMP parallel region: their number, and a barrier between the anti-diagonals
 * of the wavefront schedule (an orphaned barrier binds to the enclosing parallel region). Without
 * OpenMP there is one thread and nothing to wait for. */
#ifdef _OPENMP
#include <omp.h>
static inline int nfe_team_size(void) { return omp_get_num_threads(); }
static inline void nfe_barrier(void) {
#pragma omp barrier
}
#else
static inline int nfe_team_size(void) { return 1; }
static inline void nfe_barrier(void) {}
#endif

/* libgomp's thread pool does not survive fork(): a child forked after this process ran a parallel
 * region hangs in its next one (reproduced with a DataLoader-style fork). So the solve notes when
 * it starts a region, and a child forked after that runs every solve serially. */
static int nfe_openmp_started = 0;
static int nfe_openmp_unusable = 0;
static inline void nfe_note_parallel_start(void) { nfe_openmp_started = 1; }
#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
static void nfe_after_fork_in_child(void) {
    if (nfe_openmp_started)
        nfe_openmp_unusable = 1;
}
static int nfe_register_fork_handler(void) {
    return pthread_atfork(NULL, NULL, nfe_after_fork_in_child);
}
#else
static int nfe_register_fork_handler(void) { return 0; }
#endif

/* Test hook: when positive, thread 0 of the wavefront schedule sleeps this many microseconds
 * before each anti-diagonal, putting the threads out of step (tests use it to check the barrier). */
#include <unistd.h>
static int nfe_test_delay_us = 0;
static inline void nfe_test_delay(int thread) {
    if (nfe_test_delay_us > 0 && thread == 0)
        usleep((useconds_t)nfe_test_delay_us);
}

#endif
