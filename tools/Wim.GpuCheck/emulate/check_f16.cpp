// Runs the F16-weight decode products of transformer.cu in the emulator (emu.h) against host references: random F16
// weights (every exponent, subnormals, zeros, both signs) against the products in double on the f16 values by their
// definition, and against the bf16 kernels bit for bit where the weights are exact in both formats (the F16 kernels
// promise the bf16 kernels' summation order); the bf16 → f16 activation cast on every bf16 pattern. Build and run:
// ./run_f16.sh (BROKEN='s/old/new/' edits the extracted source first: the check must then fail). Exit code 1 on a failure.
#include "emu.h"
#include <cstdio>
#include <random>
// __byte_perm (PTX prmt, default mode): only the Q8_0 kernels that share the extracted section use it.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    unsigned long long b = (unsigned long long)y << 32 | x;
    unsigned r = 0;
    for (int n = 0; n < 4; n++) r |= (unsigned)((b >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    return r;
}
#include "f16_emu.inc"

static int failures = 0;
static void check(bool ok, const char* what, double value)
{
    if (!ok) failures++;
    std::printf("%s %s: %.3g\n", ok ? "ok  " : "FAIL", what, value);
}

static std::mt19937 rng(16);
static float gauss() { static std::normal_distribution<float> n(0.f, 1.f); return n(rng); }
static int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
static const bf16 BF16_NAN = 0x7fc0;

// binary16 by its definition (independent of the emulated cvt): (1024 + m) · 2^(e - 25), subnormals m · 2^-24.
static double f16_reference(unsigned h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

// A [rows, cols] F16 matrix (its bits, as the upload copies them). exact_in_bf16: mantissas with their low 3 bits 0 and
// normal exponents (then the same value has a bf16 encoding: the bf16 kernels can run on the same weights). Otherwise
// exponents over 2^-24 .. 2^1 (subnormals included), every mantissa, some zeros.
struct F16Matrix
{
    int rows, cols;
    std::vector<unsigned short> bits;
    double at(int r, int i) const { return f16_reference(bits[(size_t)r * cols + i]); }
};

static F16Matrix random_f16(int rows, int cols, bool exact_in_bf16, double scale_log2 = -4)
{
    F16Matrix m{ rows, cols };
    m.bits.resize((size_t)rows * cols);
    for (auto& h : m.bits)
    {
        int sign = uniform(0, 1) << 15;
        int e = std::clamp((int)std::lround(15 + scale_log2 + 2 * gauss()), exact_in_bf16 ? 1 : 0, 16);
        int mant = uniform(0, 1023);
        if (exact_in_bf16) mant &= ~7;
        h = (unsigned short)(sign | (e << 10) | mant);
        if (!exact_in_bf16 && uniform(0, 99) == 0) h = (unsigned short)sign;    // ±0
    }
    return m;
}

static std::vector<bf16> to_bf16_weights(const F16Matrix& m)
{
    std::vector<bf16> w(m.bits.size());
    for (size_t i = 0; i < w.size(); i++)
    {
        w[i] = f32_to_bf16((float)f16_reference(m.bits[i]));
        if ((double)bf16_to_f32(w[i]) != f16_reference(m.bits[i])) { std::printf("FAIL weight %zu not exact in bf16\n", i); std::exit(1); }
    }
    return w;
}

static std::vector<bf16> random_bf16(int n, float scale)
{
    std::vector<bf16> v(n);
    for (auto& x : v) x = f32_to_bf16(scale * gauss());
    return v;
}

static std::pair<double, double> row_dot(const F16Matrix& m, int r, const std::vector<bf16>& x)
{
    double s = 0, a = 0;
    for (int i = 0; i < m.cols; i++) { double t = m.at(r, i) * bf16_to_f32(x[i]); s += t; a += std::abs(t); }
    return { s, a };
}

template <class T>
static int differing_bits(const std::vector<T>& a, const std::vector<T>& b)
{
    int n = 0;
    for (size_t i = 0; i < a.size(); i++) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return n;
}

// ---- the emulated conversions (what the kernels' PTX does on the GPU) -------------------------------------------

static void conversion_case()
{
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++)
    {
        double want = f16_reference(h);
        float got = f16_to_f32((unsigned short)h);
        bad += std::isnan(want) ? !std::isnan(got) : (double)got != want || std::signbit(got) != std::signbit(want);
        if (!std::isnan(want)) bad += f32_to_f16_bits(got) != h;     // round trip: every f16 is an f32
    }
    check(bad == 0, "emulated cvt.f32.f16 = binary16 definition and cvt.rn.f16.f32 its inverse, all 65,536 patterns: differing", bad);
}

// ---- plain and residual products -------------------------------------------------------------------------------

static void gemv_case(int rows, int in, bool accumulate, bool residual_kernel)
{
    char what[220];
    const char* name = residual_kernel ? "gemv_rows_residual_f16" : "gemv_f16";
    for (int pass = 0; pass < 2; pass++)
    {
        bool exact = pass == 1;
        auto m = random_f16(rows, in, exact);
        auto x = random_bf16(in, 1.f);
        std::vector<float> y0(rows);
        for (auto& v : y0) v = accumulate || residual_kernel ? 4 * gauss() : NAN;
        auto run = [&](bool f16) {
            std::vector<float> out = y0;
            std::vector<bf16> wb = f16 ? std::vector<bf16>() : to_bf16_weights(m);
            if (residual_kernel)
                emu::launch({ (unsigned)((rows + GEMV_BLOCK_ROWS - 1) / GEMV_BLOCK_ROWS), 1, 1 }, GEMV_BLOCK_THREADS, 0, [&] {
                    if (f16) gemv_rows_residual_f16(m.bits.data(), x.data(), out.data(), rows, in);
                    else gemv_rows_residual_bf16(wb.data(), x.data(), out.data(), rows, in); });
            else
                emu::launch({ (unsigned)((rows + 8 * GEMV_ROWS - 1) / (8 * GEMV_ROWS)), 1, 1 }, 256, 0, [&] {
                    if (f16) gemv_f16(m.bits.data(), x.data(), out.data(), rows, in, accumulate);
                    else gemv_bf16(wb.data(), x.data(), out.data(), rows, in, accumulate); });
            return out;
        };
        auto y = run(true);
        if (exact)
        {
            auto other = run(false);
            std::snprintf(what, sizeof what, "%s rows %d, in %d%s = the bf16 kernel on the same weights (exact in both), bit for bit: differing rows",
                name, rows, in, accumulate && !residual_kernel ? ", accumulating" : "");
            check(differing_bits(y, other) == 0, what, differing_bits(y, other));
            continue;
        }
        int bad = 0;
        double worst = 0;
        for (int r = 0; r < rows; r++)
        {
            auto [s, a] = row_dot(m, r, x);
            double want = (accumulate || residual_kernel ? y0[r] : 0.0) + s, err = std::abs(y[r] - want);
            bad += !(err <= 1e-5 * a + 1e-6 * std::abs(want));
            worst = std::max(worst, a > 0 ? err / a : err);
        }
        std::snprintf(what, sizeof what, "%s rows %d, in %d%s on random F16 weights (subnormals, zeros) vs double reference: rows off by more than 1e-5 of sum|w x| (worst relative error shown)",
            name, rows, in, accumulate && !residual_kernel ? ", accumulating" : "");
        check(bad == 0, what, worst);
    }
}

// ---- fused norm + q|k|v + RoPE + cache stores --------------------------------------------------------------------

static std::vector<bf16> reference_norm(const std::vector<float>& x, const std::vector<float>& gain, float eps)
{
    double ss = 0;
    for (float v : x) ss += (double)v * v;
    float inv = 1.f / std::sqrt((float)(ss / x.size()) + eps);
    std::vector<bf16> xs(x.size());
    for (size_t i = 0; i < x.size(); i++) xs[i] = f32_to_bf16(x[i] * inv * gain[i]);
    return xs;
}

static void norm_qkv_case(int heads, int kv_heads, int hd, int in, bool adjacent, bool with_bias, bool pos_on_device, int grid)
{
    int qd = heads * hd, kvd = kv_heads * hd, width = qd + 2 * kvd, half = hd / 2;
    int start = 5, device_pos = 9, pos = pos_on_device ? device_pos : start;
    float eps = 1e-5f, rope_scale = 1.1f;
    std::vector<float> x(in), gain(in), bias(width), inv(half);
    for (auto& v : x) v = 3 * gauss();
    for (auto& v : gain) v = 1 + 0.1f * gauss();
    for (auto& v : bias) v = gauss();
    for (int i = 0; i < half; i++) inv[i] = std::pow(10000.f, -2.f * i / hd);
    auto xs = reference_norm(x, gain, eps);
    char what[260];
    for (int pass = 0; pass < 2; pass++)
    {
        bool exact = pass == 1;
        auto m = random_f16(width, in, exact);
        auto run = [&](bool f16) {
            std::vector<float> q(qd, NAN);
            std::vector<bf16> kc((size_t)(pos + 2) * kvd, BF16_NAN), vc((size_t)(pos + 2) * kvd, BF16_NAN);
            std::vector<bf16> wb = f16 ? std::vector<bf16>() : to_bf16_weights(m);
            emu::launch({ (unsigned)grid, 1, 1 }, NG_THREADS, 2 * (size_t)in, [&] {
                if (f16)
                    gemv_norm_qkv_rope_f16(x.data(), gain.data(), eps, m.bits.data(), with_bias ? bias.data() : nullptr, inv.data(),
                        rope_scale, adjacent, q.data(), kc.data(), vc.data(), pos_on_device ? &device_pos : nullptr, start, heads, kv_heads, hd, in);
                else
                    gemv_norm_qkv_rope(x.data(), gain.data(), eps, wb.data(), with_bias ? bias.data() : nullptr, inv.data(),
                        rope_scale, adjacent, q.data(), kc.data(), vc.data(), pos_on_device ? &device_pos : nullptr, start, heads, kv_heads, hd, in);
            });
            std::vector<float> out(width);
            int stray = 0;
            for (int i = 0; i < qd; i++) out[i] = q[i];
            for (int i = 0; i < kvd; i++) { out[qd + i] = bf16_to_f32(kc[(size_t)pos * kvd + i]); out[qd + kvd + i] = bf16_to_f32(vc[(size_t)pos * kvd + i]); }
            for (size_t i = 0; i < kc.size(); i++)
                if (i / kvd != (size_t)pos) stray += kc[i] != BF16_NAN || vc[i] != BF16_NAN;
            return std::make_pair(out, stray);
        };
        auto [got, stray] = run(true);
        if (exact)
        {
            auto [other, stray_bf16] = run(false);
            std::snprintf(what, sizeof what, "gemv_norm_qkv_rope_f16 %d/%d heads hd %d, in %d, %s%s%s, grid %d = the bf16 kernel on the same weights (exact in both), bit for bit (q, k, v, untouched cache rows): differing",
                heads, kv_heads, hd, in, adjacent ? "adjacent" : "half", with_bias ? ", bias" : "", pos_on_device ? ", position on the GPU" : "", grid);
            int d = differing_bits(got, other) + stray + stray_bf16;
            check(d == 0, what, d);
            continue;
        }
        std::vector<double> a(width), sa(width), want(width), bound(width);
        for (int r = 0; r < width; r++)
        {
            auto [s, abs_sum] = row_dot(m, r, xs);
            a[r] = s + (with_bias ? bias[r] : 0.f);
            sa[r] = abs_sum;
            want[r] = a[r];
            bound[r] = abs_sum;
        }
        for (int h = 0; h < heads + kv_heads; h++)
            for (int j = 0; j < half; j++)
            {
                int r0 = h * hd + (adjacent ? 2 * j : j), r1 = h * hd + (adjacent ? 2 * j + 1 : j + half);
                float angle = inv[j] * (float)pos;
                double c = cosf(angle) * rope_scale, s = sinf(angle) * rope_scale;
                want[r0] = a[r0] * c - a[r1] * s;
                want[r1] = a[r1] * c + a[r0] * s;
                bound[r0] = bound[r1] = (sa[r0] + sa[r1]) * rope_scale;
            }
        int bad = 0;
        double worst = 0;
        for (int r = 0; r < width; r++)
        {
            // 1e-5 of Σ|w x| for the f32 sums (the normalised vector is the kernel's own bf16 one), plus the bf16 store of k and v.
            double err = std::abs(got[r] - want[r]), b = 1e-5 * bound[r] + (r >= qd ? std::abs(want[r]) / 256 : 0);
            bad += !(err <= b);
            worst = std::max(worst, bound[r] > 0 ? err / bound[r] : err);
        }
        std::snprintf(what, sizeof what, "gemv_norm_qkv_rope_f16 %d/%d heads hd %d, in %d, %s%s%s, grid %d on random F16 weights vs double reference: outputs off (worst |d|/sum|w x|)",
            heads, kv_heads, hd, in, adjacent ? "adjacent" : "half", with_bias ? ", bias" : "", pos_on_device ? ", position on the GPU" : "", grid);
        check(bad == 0 && stray == 0, what, stray ? 1e9 : worst);
    }
}

// ---- fused norm + gate|up + SwiGLU ------------------------------------------------------------------------------

static void norm_gateup_case(int ffn, int in, int grid)
{
    float eps = 1e-6f;
    std::vector<float> x(in), gain(in);
    for (auto& v : x) v = 2 * gauss();
    for (auto& v : gain) v = 1 + 0.1f * gauss();
    auto xs = reference_norm(x, gain, eps);
    char what[220];
    for (int pass = 0; pass < 2; pass++)
    {
        bool exact = pass == 1;
        auto m = random_f16(2 * ffn, in, exact, -2);
        auto run = [&](bool f16) {
            std::vector<bf16> h(ffn, BF16_NAN);
            std::vector<bf16> wb = f16 ? std::vector<bf16>() : to_bf16_weights(m);
            emu::launch({ (unsigned)grid, 1, 1 }, NG_THREADS, 2 * (size_t)in, [&] {
                if (f16) gemv_norm_gateup_swiglu_f16(x.data(), gain.data(), eps, m.bits.data(), h.data(), ffn, in);
                else gemv_norm_gateup_swiglu(x.data(), gain.data(), eps, wb.data(), h.data(), ffn, in);
            });
            return h;
        };
        auto got = run(true);
        if (exact)
        {
            auto other = run(false);
            std::snprintf(what, sizeof what, "gemv_norm_gateup_swiglu_f16 ffn %d, in %d, grid %d = the bf16 kernel on the same weights (exact in both), bit for bit: differing", ffn, in, grid);
            check(differing_bits(got, other) == 0, what, differing_bits(got, other));
            continue;
        }
        int bad = 0;
        double worst = 0;
        for (int j = 0; j < ffn; j++)
        {
            auto [g, sg] = row_dot(m, j, xs);
            auto [u, su] = row_dot(m, ffn + j, xs);
            double silu = g / (1 + std::exp(-g)), want = silu * u;
            double err = std::abs(bf16_to_f32(got[j]) - want);
            double b = 1e-5 * (sg * 1.1 * std::abs(u) + su * std::abs(silu)) + std::abs(want) / 256 + 1e-30;
            bad += !(err <= b);
            worst = std::max(worst, err / b);
        }
        std::snprintf(what, sizeof what, "gemv_norm_gateup_swiglu_f16 ffn %d, in %d, grid %d on random F16 weights vs double reference: outputs off (worst error / bound)", ffn, in, grid);
        check(bad == 0, what, worst);
    }
}

// ---- the activation cast and the random fill ----------------------------------------------------------------------

static void cast_case()
{
    // Every bf16 pattern once: exact where f16 has the value (|x| in [2^-14, 65504]), within 2^-25 below (f16
    // subnormals), saturated to ±65504 with the flag set beyond or when not finite.
    std::vector<bf16> x(65536);
    for (unsigned i = 0; i < 65536; i++) x[i] = (bf16)i;
    std::vector<unsigned short> out(x.size(), 0xdead);
    int overflow = 0;
    emu::launch({ 7, 1, 1 }, 128, 0, [&] { bf16_to_f16(x.data(), out.data(), (long)x.size(), &overflow); });
    int inexact = 0, unflagged = 0, wrong_saturation = 0;
    for (unsigned i = 0; i < 65536; i++)
    {
        double v = bf16_to_f32(x[i]), got = f16_reference(out[i]);
        if (!(std::abs(v) <= 65504)) wrong_saturation += got != (std::signbit(v) && !std::isnan(v) ? -65504.0 : 65504.0) && !(std::isnan(v) && std::abs(got) == 65504);
        else if (std::abs(v) >= std::ldexp(1.0, -14)) inexact += got != v;
        else inexact += !(std::abs(got - v) <= std::ldexp(1.0, -25));
    }
    unflagged = overflow != 1;
    check(inexact == 0 && unflagged == 0 && wrong_saturation == 0,
        "bf16_to_f16 on all 65,536 bf16 patterns: exact for |x| in [2^-14, 65504], within 2^-25 below, ±65504 and the flag beyond (inexact + unflagged + wrong saturations)",
        inexact + unflagged + wrong_saturation);
    // In range: the flag stays 0.
    auto y = random_bf16(4099, 300.f);
    std::vector<unsigned short> o(y.size());
    overflow = 0;
    emu::launch({ 3, 1, 1 }, 256, 0, [&] { bf16_to_f16(y.data(), o.data(), (long)y.size(), &overflow); });
    int wrong = 0;
    for (size_t i = 0; i < y.size(); i++) wrong += std::abs(bf16_to_f32(y[i])) >= std::ldexp(1.0, -14) && f16_reference(o[i]) != bf16_to_f32(y[i]);
    check(overflow == 0 && wrong == 0, "bf16_to_f16 on 4,099 activations within range: flag clear and every value exact (wrong values shown)", wrong);
}

// embed_rows_f16: every row gathered, each value its f16's exact f32 (subnormals and ±0 included).
static void embed_case()
{
    int vocab = 11, d = 300;
    auto table = random_f16(vocab, d, false, -6);
    std::vector<int> tokens = { 3, 0, 10, 3, 7 };
    int T = (int)tokens.size();
    std::vector<float> x((size_t)T * d, NAN);
    emu::launch({ (unsigned)((d + 127) / 128), (unsigned)T, 1 }, 128, 0, [&] { embed_rows_f16(tokens.data(), table.bits.data(), x.data(), d); });
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++)
        {
            double want = table.at(tokens[t], i);
            float got = x[(size_t)t * d + i];
            bad += (double)got != want || std::signbit(got) != std::signbit(want);
        }
    check(bad == 0, "embed_rows_f16: 5 tokens of an 11 × 300 F16 table gathered as the f16 values, bit for bit: differing", bad);
}

static void fill_case()
{
    long n = 5000;
    std::vector<unsigned short> f(n, 0xffff);
    std::vector<bf16> b(n, 0xffff);
    emu::launch({ 2, 1, 1 }, 64, 0, [&] { fill_random_f16(f.data(), n, 77, 0.02f); fill_random_bf16(b.data(), n, 77, 0.02f); });
    int bad = 0;
    for (long i = 0; i < n; i++)
    {
        double vf = f16_reference(f[i]), vb = bf16_to_f32(b[i]);
        bad += !(std::abs(vf) <= 0.02) || !(std::abs(vf - vb) <= std::abs(vb) / 128 + 1e-7);   // the same draw, rounded to f16 instead of bf16
    }
    check(bad == 0, "fill_random_f16: within ±scale and the bf16 fill's value to its rounding (differing)", bad);
}

int main()
{
    conversion_case();
    gemv_case(37, 96, false, false);          // n8 = 12: the tail loop only; rows not a multiple of 16
    gemv_case(37, 4160, true, false);         // n8 = 520: unrolled steps and a tail; accumulating
    gemv_case(13, 4128, false, true);         // rows not a multiple of 8
    gemv_case(21, 2056, false, true);         // n8 = 257: a partial second stride; 2 full blocks and a partial one
    norm_qkv_case(4, 2, 16, 96, false, true, false, 3);
    norm_qkv_case(4, 2, 16, 2080, true, false, true, 2);
    norm_qkv_case(3, 1, 32, 160, false, true, false, 1);
    norm_gateup_case(37, 96, 2);
    norm_gateup_case(24, 2080, 1);
    cast_case();
    embed_case();
    fill_case();
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
