/* Fused CPU kernel for Augment: affine warp (bilinear, border padding, align_corners=False: the
 * semantics of F.grid_sample on F.affine_grid), then per-image contrast/brightness around the
 * warped image's mean, normalization and clipping, in one call with no intermediate tensors.
 *
 * Built and loaded by fastwarp.py with portable flags (no -march=native: one cache may serve nodes
 * with different CPUs); on x86-64 gcc also emits an AVX2 copy of the hot loops, picked at load
 * time. -ffp-contract=off keeps FMAs out, so both copies round alike. Sampling coordinates follow
 * torch's own float formulas; the bilinear blend is done one axis after the other (fewer
 * operations), which differs from torch's four-weight sum only by float rounding. Images must be
 * at least 2x2 (fastwarp.usable checks). */

#include <stddef.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default"), noinline))
#else
#define CLONES
#endif

#define TILE 256 /* output pixels whose sampling positions are computed in one vectorizable loop */

/* max then min, written so that the compiler can use maxps/minps */
static inline float clampf(float v, float lo, float hi) { v = v > lo ? v : lo; return v < hi ? v : hi; }

/* One image: src, dst [h, w]; t the 2x3 output→input matrix in [-1, 1] grid units; xs, ys the
 * output pixel centres in grid units. Returns the sum of the warped pixels. */
CLONES static double warp_image(const float *src, float *dst, int h, int w, const float *t, const float *xs,
                                const float *ys)
{
    const float sx = 0.5f * (float)w, sy = 0.5f * (float)h;
    const float xmax = (float)(w - 1), ymax = (float)(h - 1);
    int off[TILE];
    float fx[TILE], fy[TILE];
    double total = 0.0;
    /* pull the whole source image towards L2 in address order first: the warp walks it
     * diagonally, which hardware prefetchers do not follow */
    for (size_t p = 0; p < (size_t)h * w; p += 16) __builtin_prefetch(src + p, 0, 2);
    for (int i = 0; i < h; i++) {
        /* affine_grid: x_term = theta[:, :, 0] * xs, y_term = theta[:, :, 1] * ys + theta[:, :, 2] */
        const float yx = t[1] * ys[i] + t[2], yy = t[4] * ys[i] + t[5];
        float *out = dst + (size_t)i * w;
        float acc[8] = {0};
        for (int j0 = 0; j0 < w; j0 += TILE) {
            const int m = w - j0 < TILE ? w - j0 : TILE;
            for (int j = 0; j < m; j++) {  /* where each output pixel samples from */
                const float gx = t[0] * xs[j0 + j] + yx, gy = t[3] * xs[j0 + j] + yy;
                /* grid_sample, align_corners=False: (g + 1) * size / 2 - 0.5; border: clamp */
                const float ix = clampf((gx + 1.0f) * sx - 0.5f, 0.0f, xmax);
                const float iy = clampf((gy + 1.0f) * sy - 0.5f, 0.0f, ymax);
                /* top-left of the 2x2 neighbourhood (ix, iy >= 0, so truncation is floor); on the last
                 * column/row step back one, weight 1 on the far pixel, to never read past the image */
                int x0 = (int)ix, y0 = (int)iy;
                x0 = x0 < w - 2 ? x0 : w - 2;
                y0 = y0 < h - 2 ? y0 : h - 2;
                fx[j] = ix - (float)x0;
                fy[j] = iy - (float)y0;
                off[j] = y0 * w + x0;
            }
            for (int j = 0; j < m; j++) {  /* bilinear, one axis after the other */
                const float *a = src + off[j], *c = a + w;
                const float tx = fx[j], ty = fy[j], ex = 1.0f - tx;
                out[j0 + j] = (a[0] * ex + a[1] * tx) * (1.0f - ty) + (c[0] * ex + c[1] * tx) * ty;
            }
        }
        int j = 0;  /* row sum in 8 independent partial sums (vectorizable without -ffast-math) */
        for (; j + 8 <= w; j += 8)
            for (int q = 0; q < 8; q++) acc[q] += out[j + q];
        for (; j < w; j++) acc[0] += out[j];
        total += (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
    }
    return total;
}

CLONES static void scale_clip(float *p, size_t n, float scale, float shift, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) p[i] = clampf(shift + p[i] * scale, lo, hi);
}

/* x, out: [b, h, w] float32, contiguous. theta: [b, 6] (the [b, 2, 3] matrices). contrast, brightness: [b].
 * out = clip((warp(x) * c + mean(warp(x)) * (1 - c) + brightness - mu) / sd, (0 - mu) / sd, (1 - mu) / sd)
 * Returns 0, or 1 when out of memory. */
int augment_f32(const float *x, float *out, int b, int h, int w, const float *theta, const float *contrast,
                const float *brightness, float mu, float sd, int threads)
{
    float *xs = malloc(sizeof(float) * (size_t)w), *ys = malloc(sizeof(float) * (size_t)h);
    if (!xs || !ys) {
        free(xs);
        free(ys);
        return 1;
    }
    /* pixel centres in [-1, 1], as augment._base_coords: (2k + 1) / n - 1 */
    for (int j = 0; j < w; j++) xs[j] = (float)(2 * j + 1) / (float)w - 1.0f;
    for (int i = 0; i < h; i++) ys[i] = (float)(2 * i + 1) / (float)h - 1.0f;
    const float lo = (0.0f - mu) / sd, hi = (1.0f - mu) / sd;
    const size_t n = (size_t)h * w;

    /* one image per task: its warped pixels are still in cache for the photometric pass */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int k = 0; k < b; k++) {
        float *dst = out + (size_t)k * n;
        const double sum = warp_image(x + (size_t)k * n, dst, h, w, theta + 6 * (size_t)k, xs, ys);
        const float mean = (float)(sum / (double)n), c = contrast[k];
        scale_clip(dst, n, c / sd, (mean * (1.0f - c) + brightness[k] - mu) / sd, lo, hi);
    }
    free(xs);
    free(ys);
    return 0;
}
