/* Per-pixel kernels of the compiled solve (called from _inverse.pyx).
 *
 * Image kernel: one pixel of one NCHW image; the output channels are held in vectors of
 * NFE_LANES partial sums that stay in registers while every solved neighbour value is multiplied
 * into them (weights padded to whole vectors), then the corner tap's triangle.
 *
 * Batch kernel: one pixel of LANES images. A block holds LANES images as (pixel, channel, LANES):
 * the LANES values of one channel at one pixel are one GCC vector, so each multiply-add updates
 * all images at once and the partial sum of an output channel stays in registers. Blocks must be
 * aligned to 64 bytes.
 */
#ifndef NFE_KERNELS_H
#define NFE_KERNELS_H

#include <stddef.h>

#define NFE_LANES 8

/* On x86-64 Linux with GCC, also compile an AVX2 + FMA version, picked at load time when the CPU
 * has it (the baseline x86-64 build only has SSE2, with no fused multiply-add). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NFE_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NFE_TARGET_CLONES
#endif

typedef float nfe_vec_f32 __attribute__((vector_size(NFE_LANES * sizeof(float))));
typedef double nfe_vec_f64 __attribute__((vector_size(NFE_LANES * sizeof(double))));

/* Solve pixel (i, j) of one image: x[c * plane + p] from y[c * plane + p], p = i * width + j.
 * taps: (taps, C_in, padded) non-corner taps, output channels padded with zeros to `padded`, a
 * multiple of NFE_LANES, rows aligned like VEC; tap_di/tap_dj: their (non-positive) offsets;
 * lower: (C_in, C_out) corner tap, used below the diagonal; inv_diag: 1 / corner diagonal;
 * acc: scratch of `padded` values aligned like VEC. The output channels go NFE_LANES at a time,
 * two vectors at once, whose partial sums stay in registers over all taps and input channels
 * (even and odd input channels in separate sums, so consecutive multiply-adds do not wait for
 * each other). */
#define NFE_DEFINE_SOLVE_PIXEL_IMAGE(NAME, REAL, VEC)                                           \
    NFE_TARGET_CLONES static void NAME(const REAL *y, REAL *x, ptrdiff_t channels,              \
                                       ptrdiff_t padded, ptrdiff_t plane, ptrdiff_t width,      \
                                       ptrdiff_t i, ptrdiff_t j, const REAL *taps,              \
                                       const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,        \
                                       ptrdiff_t num_taps, const REAL *lower,                   \
                                       const REAL *inv_diag, REAL *acc)                         \
    {                                                                                           \
        ptrdiff_t p = i * width + j, vectors = padded / NFE_LANES;                              \
        for (ptrdiff_t o = 0; o < channels; o++)                                                \
            acc[o] = y[o * plane + p];                                                          \
        for (ptrdiff_t o = channels; o < padded; o++)                                           \
            acc[o] = 0;                                                                         \
        VEC *acc_vectors = (VEC *)acc;                                                          \
        for (ptrdiff_t v = 0; v < vectors; v += 2) {                                            \
            ptrdiff_t pair = v + 1 < vectors;                                                   \
            /* b0, b1 take the odd input channels: two independent chains per vector */        \
            VEC a0 = acc_vectors[v], a1 = acc_vectors[v + pair], b0 = {0}, b1 = {0};            \
            for (ptrdiff_t t = 0; t < num_taps; t++) {                                          \
                ptrdiff_t ii = i + tap_di[t], jj = j + tap_dj[t];                               \
                if (ii < 0 || jj < 0)                                                           \
                    continue;                                                                   \
                const REAL *there = x + ii * width + jj;                                        \
                const VEC *w = (const VEC *)(taps + t * channels * padded) + v;                 \
                ptrdiff_t c = 0;                                                                \
                for (; c + 1 < channels; c += 2) {                                              \
                    REAL value = there[c * plane], next = there[(c + 1) * plane];               \
                    a0 -= value * w[c * vectors];                                               \
                    a1 -= value * w[c * vectors + pair];                                        \
                    b0 -= next * w[(c + 1) * vectors];                                          \
                    b1 -= next * w[(c + 1) * vectors + pair];                                   \
                }                                                                               \
                if (c < channels) {                                                             \
                    REAL value = there[c * plane];                                              \
                    a0 -= value * w[c * vectors];                                               \
                    a1 -= value * w[c * vectors + pair];                                        \
                }                                                                               \
            }                                                                                   \
            acc_vectors[v + pair] = a1 + b1; /* first, so that a0 wins when there is no pair */\
            acc_vectors[v] = a0 + b0;                                                           \
        }                                                                                       \
        for (ptrdiff_t c = 0; c < channels; c++) {                                              \
            REAL value = acc[c] * inv_diag[c];                                                  \
            x[c * plane + p] = value;                                                           \
            const REAL *w = lower + c * channels;                                               \
            for (ptrdiff_t o = c + 1; o < channels; o++)                                        \
                acc[o] -= w[o] * value;                                                         \
        }                                                                                       \
    }

NFE_DEFINE_SOLVE_PIXEL_IMAGE(nfe_solve_pixel_image_f32, float, nfe_vec_f32)
NFE_DEFINE_SOLVE_PIXEL_IMAGE(nfe_solve_pixel_image_f64, double, nfe_vec_f64)

/* Solve pixel (i, j) of a block in place: the block holds the right-hand side at pixels not yet
 * solved and the solution at pixels already solved (all earlier in raster order).
 * weights: (C_out, taps, C_in) non-corner taps; tap_di/tap_dj: their (non-positive) offsets;
 * lower: (C_out, C_in) corner tap, used below the diagonal; inv_diag: 1 / corner diagonal.
 * Output channels go NFE_GROUP at a time with one accumulator each, so consecutive multiply-adds
 * are independent (one accumulator would make each wait for the previous one) and every input
 * vector loaded serves NFE_GROUP outputs. Each output still sums in the same order as the
 * one-accumulator loop, so the results are the same. */
#define NFE_GROUP 4
#define NFE_DEFINE_SOLVE_PIXEL_LANES(NAME, REAL, VEC)                                           \
    NFE_TARGET_CLONES static void NAME(REAL *block, ptrdiff_t channels, ptrdiff_t width,        \
                                       ptrdiff_t i, ptrdiff_t j, const REAL *weights,           \
                                       const ptrdiff_t *tap_di, const ptrdiff_t *tap_dj,        \
                                       ptrdiff_t num_taps, const REAL *lower,                   \
                                       const REAL *inv_diag)                                    \
    {                                                                                           \
        VEC *here = (VEC *)block + (i * width + j) * channels;                                  \
        ptrdiff_t o = 0;                                                                        \
        for (; o + NFE_GROUP <= channels; o += NFE_GROUP) {                                     \
            VEC a0 = here[o], a1 = here[o + 1], a2 = here[o + 2], a3 = here[o + 3];             \
            for (ptrdiff_t t = 0; t < num_taps; t++) {                                          \
                ptrdiff_t ii = i + tap_di[t], jj = j + tap_dj[t];                               \
                if (ii < 0 || jj < 0)                                                           \
                    continue;                                                                   \
                const VEC *there = (const VEC *)block + (ii * width + jj) * channels;           \
                const REAL *w0 = weights + (o * num_taps + t) * channels;                       \
                const REAL *w1 = w0 + num_taps * channels, *w2 = w1 + num_taps * channels;      \
                const REAL *w3 = w2 + num_taps * channels;                                      \
                for (ptrdiff_t c = 0; c < channels; c++) {                                      \
                    VEC v = there[c];                                                           \
                    a0 -= w0[c] * v;                                                            \
                    a1 -= w1[c] * v;                                                            \
                    a2 -= w2[c] * v;                                                            \
                    a3 -= w3[c] * v;                                                            \
                }                                                                               \
            }                                                                                   \
            const REAL *l0 = lower + o * channels, *l1 = l0 + channels, *l2 = l1 + channels;    \
            const REAL *l3 = l2 + channels;                                                     \
            for (ptrdiff_t c = 0; c < o; c++) {                                                 \
                VEC v = here[c];                                                                \
                a0 -= l0[c] * v;                                                                \
                a1 -= l1[c] * v;                                                                \
                a2 -= l2[c] * v;                                                                \
                a3 -= l3[c] * v;                                                                \
            }                                                                                   \
            /* the group's own corner entries, in order: output o + k needs outputs < o + k */  \
            here[o] = a0 = a0 * inv_diag[o];                                                    \
            a1 -= l1[o] * a0;                                                                   \
            a2 -= l2[o] * a0;                                                                   \
            a3 -= l3[o] * a0;                                                                   \
            here[o + 1] = a1 = a1 * inv_diag[o + 1];                                            \
            a2 -= l2[o + 1] * a1;                                                               \
            a3 -= l3[o + 1] * a1;                                                               \
            here[o + 2] = a2 = a2 * inv_diag[o + 2];                                            \
            a3 -= l3[o + 2] * a2;                                                               \
            here[o + 3] = a3 * inv_diag[o + 3];                                                 \
        }                                                                                       \
        for (; o < channels; o++) {                                                             \
            VEC acc = here[o];                                                                  \
            for (ptrdiff_t t = 0; t < num_taps; t++) {                                          \
                ptrdiff_t ii = i + tap_di[t], jj = j + tap_dj[t];                               \
                if (ii < 0 || jj < 0)                                                           \
                    continue;                                                                   \
                const VEC *there = (const VEC *)block + (ii * width + jj) * channels;           \
                const REAL *w = weights + (o * num_taps + t) * channels;                        \
                for (ptrdiff_t c = 0; c < channels; c++)                                        \
                    acc -= w[c] * there[c];                                                     \
            }                                                                                   \
            const REAL *w = lower + o * channels;                                               \
            for (ptrdiff_t c = 0; c < o; c++)                                                   \
                acc -= w[c] * here[c];                                                          \
            here[o] = acc * inv_diag[o];                                                        \
        }                                                                                       \
    }

NFE_DEFINE_SOLVE_PIXEL_LANES(nfe_solve_pixel_lanes_f32, float, nfe_vec_f32)
NFE_DEFINE_SOLVE_PIXEL_LANES(nfe_solve_pixel_lanes_f64, double, nfe_vec_f64)

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
