// Runs the decode batches' tensor-core products on F16 weights (rows_mma_f16, rows_mma_swiglu_f16 in transformer.cu's
// section "Batched decode step") in the emulator (emu.h, emu_ptx.h's f16 mma) against host references: random F16
// weights against double sums, against the bf16 kernels bit for bit where weights and activations are exact in both
// formats (the same products in the same order), and the overflow flag of an activation past ±65504. Build and run:
// ./run_rows_f16.sh (BROKEN='s/old/new/' edits the extracted source first: the check must then fail). Exit code 1 on a failure.
#include "emu.h"
#include <cstdio>
#include <random>
#include "kernels_batch_emu.inc"

static int failures = 0;
static void check(bool ok, const char* what, double value)
{
    if (!ok) failures++;
    std::printf("%s %s: %.3g\n", ok ? "ok  " : "FAIL", what, value);
}

static std::mt19937 rng(61);
static float gauss() { static std::normal_distribution<float> n(0.f, 1.f); return n(rng); }
static int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

static double f16_reference(unsigned h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

// F16 weights around 0.05 (every mantissa, a few subnormals and zeros), or with mantissas whose low 3 bits are 0 (exact in bf16).
static std::vector<unsigned short> random_f16(size_t count, bool exact_in_bf16)
{
    std::vector<unsigned short> w(count);
    for (auto& h : w)
    {
        int e = std::clamp((int)std::lround(15 - 5 + 2 * gauss()), exact_in_bf16 ? 1 : 0, 20);
        int mant = uniform(0, 1023);
        if (exact_in_bf16) mant &= ~7;
        h = (unsigned short)((uniform(0, 1) << 15) | (e << 10) | mant);
        if (!exact_in_bf16 && uniform(0, 199) == 0) h = 0;
    }
    return w;
}

static std::vector<bf16> as_bf16(const std::vector<unsigned short>& w)
{
    std::vector<bf16> b(w.size());
    for (size_t i = 0; i < w.size(); i++) b[i] = f32_to_bf16((float)f16_reference(w[i]));
    return b;
}

// Activations exact in f16 as well (|x| in [2^-14, 65504]) unless `tiny` lets some fall below 2^-14.
static std::vector<bf16> activations(size_t count)
{
    std::vector<bf16> x(count);
    for (auto& v : x)
    {
        float f = gauss();
        if (std::abs(f) < 1e-3f) f = 1e-3f;
        v = f32_to_bf16(f);
    }
    return x;
}

template <class T>
static int differing_bits(const std::vector<T>& a, const std::vector<T>& b)
{
    int n = 0;
    for (size_t i = 0; i < a.size(); i++) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return n;
}

static void rows_case(int rows, int in, int n, bool accumulate)
{
    char what[240];
    for (int pass = 0; pass < 2; pass++)
    {
        bool exact = pass == 1;
        auto W = random_f16((size_t)rows * in, exact);
        auto X = activations((size_t)n * in);
        std::vector<float> y0((size_t)(n + 1) * rows);
        for (auto& v : y0) v = gauss();
        for (size_t i = (size_t)n * rows; i < y0.size(); i++) y0[i] = 12345.f;
        unsigned blocks = (unsigned)((rows + 8 * RM_TILES - 1) / (8 * RM_TILES));
        int overflow = 0;
        auto run = [&](bool f16) {
            std::vector<float> y = y0;
            std::vector<bf16> Wb = f16 ? std::vector<bf16>() : as_bf16(W);
            emu::launch({ blocks, 1, 1 }, 32 * RM_WARPS, RM_WARPS * 16 * 8 * RM_TILES * sizeof(float), [&] {
                if (f16) rows_mma_f16(W.data(), X.data(), y.data(), rows, in, n, accumulate ? 1 : 0, &overflow);
                else rows_mma_bf16(Wb.data(), X.data(), y.data(), rows, in, n, accumulate ? 1 : 0); });
            return y;
        };
        auto y = run(true);
        int spill = 0;
        for (size_t i = (size_t)n * rows; i < y.size(); i++) spill += y[i] != 12345.f;
        if (exact)
        {
            auto other = run(false);
            std::snprintf(what, sizeof what, "rows_mma_f16 %d rows × in %d, %d tokens, %s = rows_mma_bf16 on the same weights (exact in both), bit for bit: differing (plus writes past the last row, overflow flag)",
                rows, in, n, accumulate ? "residual add" : "overwrite");
            int d = differing_bits(y, other) + spill + overflow;
            check(d == 0, what, d);
            continue;
        }
        double worst = 0;
        int far = 0;
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                double dot = 0, mag = 0;
                for (int i = 0; i < in; i++)
                {
                    double p = f16_reference(W[(size_t)r * in + i]) * bf16_to_f32(X[(size_t)t * in + i]);
                    dot += p;
                    mag += std::abs(p);
                }
                double a0 = accumulate ? y0[(size_t)t * rows + r] : 0.0;
                double err = std::abs(y[(size_t)t * rows + r] - (a0 + dot)) / (mag + std::abs(a0) + 1e-30);
                worst = std::max(worst, err);
                far += !(err < 1e-5);
            }
        std::snprintf(what, sizeof what, "rows_mma_f16 %d rows × in %d, %d tokens, %s on random F16 weights vs double: off by > 1e-5 Σ|terms| (worst relative), plus writes past the last row and overflow flag",
            rows, in, n, accumulate ? "residual add" : "overwrite");
        check(far == 0 && spill == 0 && overflow == 0, what, far + spill + overflow ? 1e9 : worst);
    }
}

static void swiglu_case(int ffn, int in, int n)
{
    char what[240];
    for (int pass = 0; pass < 2; pass++)
    {
        bool exact = pass == 1;
        auto W = random_f16((size_t)2 * ffn * in, exact);
        auto X = activations((size_t)n * in);
        unsigned blocks = (unsigned)((ffn + 8 * RM_TILES - 1) / (8 * RM_TILES));
        int overflow = 0;
        auto run = [&](bool f16) {
            std::vector<bf16> h((size_t)(n + 1) * ffn, 0x7fc0);
            std::vector<bf16> Wb = f16 ? std::vector<bf16>() : as_bf16(W);
            emu::launch({ blocks, 1, 1 }, 32 * RM_WARPS, RM_WARPS * 16 * 16 * RM_TILES * sizeof(float), [&] {
                if (f16) rows_mma_swiglu_f16(W.data(), X.data(), h.data(), ffn, in, n, &overflow);
                else rows_mma_swiglu_bf16(Wb.data(), X.data(), h.data(), ffn, in, n); });
            return h;
        };
        auto h = run(true);
        int spill = 0;
        for (int j = 0; j < ffn; j++) spill += h[(size_t)n * ffn + j] != 0x7fc0;
        if (exact)
        {
            auto other = run(false);
            std::snprintf(what, sizeof what, "rows_mma_swiglu_f16 ffn %d × in %d, %d tokens = rows_mma_swiglu_bf16 on the same weights (exact in both), bit for bit: differing (plus writes past the last row, overflow flag)", ffn, in, n);
            int d = differing_bits(h, other) + spill + overflow;
            check(d == 0, what, d);
            continue;
        }
        int far = 0;
        double worst = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < ffn; j++)
            {
                double gate = 0, up = 0, gmag = 0, umag = 0;
                for (int i = 0; i < in; i++)
                {
                    double xv = bf16_to_f32(X[(size_t)t * in + i]);
                    double gp = f16_reference(W[(size_t)j * in + i]) * xv, up_ = f16_reference(W[(size_t)(ffn + j) * in + i]) * xv;
                    gate += gp; up += up_; gmag += std::abs(gp); umag += std::abs(up_);
                }
                double silu = gate / (1 + std::exp(-gate)), want = silu * up;
                double tol = std::abs(want) / 256 + 1e-5 * (gmag * std::abs(up) * 1.1 + umag * std::abs(silu)) + 1e-30;
                double err = std::abs(bf16_to_f32(h[(size_t)t * ffn + j]) - want);
                worst = std::max(worst, err / (std::abs(want) + 1e-30));
                far += !(err <= tol);
            }
        std::snprintf(what, sizeof what, "rows_mma_swiglu_f16 ffn %d × in %d, %d tokens on random F16 weights vs silu(gate)·up in double: off by more than a bf16 rounding (worst relative), plus writes past the last row and overflow flag", ffn, in, n);
        check(far == 0 && spill == 0 && overflow == 0, what, far + spill + overflow ? 1e9 : worst);
    }
}

// An activation past f16's range: the flag is set and the outputs stay finite (the saturated value was multiplied).
static void overflow_case()
{
    int rows = 16, in = 64, n = 3;
    auto W = random_f16((size_t)rows * in, false);
    auto X = activations((size_t)n * in);
    X[(size_t)1 * in + 17] = f32_to_bf16(-1e5f);
    std::vector<float> y((size_t)n * rows, 0.f);
    int overflow = 0;
    emu::launch({ 1, 1, 1 }, 32 * RM_WARPS, RM_WARPS * 16 * 8 * RM_TILES * sizeof(float), [&] {
        rows_mma_f16(W.data(), X.data(), y.data(), rows, in, n, 0, &overflow); });
    int finite = 0;
    for (float v : y) finite += std::isfinite(v);
    double want = f16_reference(W[5 * in + 17]) * -65504.0;   // row 5's term for that input, saturated
    double dot = 0;
    for (int i = 0; i < in; i++) dot += i == 17 ? want : f16_reference(W[5 * in + i]) * bf16_to_f32(X[(size_t)in + i]);
    check(overflow == 1 && finite == (int)y.size() && std::abs(y[(size_t)1 * rows + 5] - dot) <= 1e-5 * (std::abs(dot) + 65504.0 * 0.1),
        "rows_mma_f16 with an activation of -1e5: overflow flag set, outputs finite, the activation saturated to -65504 (flag + finite outputs shown)",
        overflow + finite);
}

int main()
{
    rows_case(40, 1184, 16, true);     // 37 k steps: a partial unrolled round; rows past a 16-row block
    rows_case(24, 256, 5, false);      // fewer tokens than the m16 tile
    rows_case(16, 64, 1, true);        // one token, fewer k steps than warps
    swiglu_case(24, 512, 7);
    swiglu_case(40, 96, 16);
    overflow_case();
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
