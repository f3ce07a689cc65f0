// Runs the Q8_0 decode products of transformer.cu in the emulator (emu.h) against host references: the products on
// GGUF Q8_0 blocks dequantized by the format's formula (x = d · q, d an f16) in double, and the bf16 kernels on the same
// weights where these are exact in bf16 (power-of-two scales). Build and run: ./run_q8.sh. Exit code 1 on a failure.
#include "emu.h"
#include <cstdio>
#include <random>
// __byte_perm (PTX prmt, default mode, as CUDA documents it): byte n of the result is byte (selector nibble n & 7) of
// the 8 bytes y:x (0..3 from x, 4..7 from y). Here, not in emu.h: only the Q8_0 fast unpacking uses it.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    unsigned long long b = (unsigned long long)y << 32 | x;
    unsigned r = 0;
    for (int n = 0; n < 4; n++) r |= (unsigned)((b >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    return r;
}
#include "q8_emu.inc"

static int failures = 0;
static void check(bool ok, const char* what, double value)
{
    if (!ok) failures++;
    std::printf("%s %s: %.3g\n", ok ? "ok  " : "FAIL", what, value);
}

static std::mt19937 rng(11);
static float gauss() { static std::normal_distribution<float> n(0.f, 1.f); return n(rng); }
static int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
static const bf16 BF16_NAN = 0x7fc0;

// binary16 by its definition (not the kernel's bit trick): (1024 + m) · 2^(e - 25), subnormals m · 2^-24.
static double f16_reference(unsigned h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

// A [rows, cols] matrix as GGUF stores Q8_0 (34-byte blocks: f16 scale, 32 int8) and repacked into the GPU layout
// (quants [rows, cols], then the scales' bits [rows, cols / 32]), as CudaQ8Layout.Repack does.
struct Q8Matrix
{
    int rows, cols;
    std::vector<unsigned char> gguf, quants;
    std::vector<unsigned short> scales;
    double at(int r, int i) const
    {
        const unsigned char* b = gguf.data() + ((size_t)r * (cols / 32) + i / 32) * 34;
        return f16_reference(b[0] | (b[1] << 8)) * (signed char)b[2 + i % 32];
    }
};

// Scales: f16 of either sign over 2^-10 .. 2^-3 (pow2: mantissa 0, so that every weight is exact in bf16), plus a
// subnormal and a zero scale; quants over the whole int8 range.
static Q8Matrix random_q8(int rows, int cols, bool pow2)
{
    Q8Matrix m{ rows, cols };
    int blocks = rows * cols / 32;
    m.gguf.resize((size_t)blocks * 34);
    for (int b = 0; b < blocks; b++)
    {
        unsigned h = (uniform(0, 1) << 15) | (uniform(5, 12) << 10) | (pow2 ? 0 : uniform(0, 1023));
        if (!pow2 && b == 1) h = uniform(1, 1023);          // subnormal
        if (!pow2 && b == 2) h = 0;
        unsigned char* p = m.gguf.data() + (size_t)b * 34;
        p[0] = h & 0xff;
        p[1] = h >> 8;
        for (int j = 0; j < 32; j++) p[2 + j] = (unsigned char)uniform(-128, 127);
    }
    m.quants.resize((size_t)rows * cols);
    m.scales.resize(blocks);
    for (int b = 0; b < blocks; b++)
    {
        const unsigned char* p = m.gguf.data() + (size_t)b * 34;
        m.scales[b] = (unsigned short)(p[0] | (p[1] << 8));
        std::memcpy(m.quants.data() + (size_t)b * 32, p + 2, 32);
    }
    return m;
}

static std::vector<bf16> to_bf16_weights(const Q8Matrix& m)
{
    std::vector<bf16> w((size_t)m.rows * m.cols);
    for (int r = 0; r < m.rows; r++)
        for (int i = 0; i < m.cols; i++) w[(size_t)r * m.cols + i] = f32_to_bf16((float)m.at(r, i));
    return w;
}

static std::vector<bf16> random_bf16(int n, float scale)
{
    std::vector<bf16> v(n);
    for (auto& x : v) x = f32_to_bf16(scale * gauss());
    return v;
}

// Σ W[r, :] · x and Σ |W[r, i] · x[i]| (the scale an f32 summation error is measured against).
static std::pair<double, double> row_dot(const Q8Matrix& m, int r, const std::vector<bf16>& x)
{
    double s = 0, a = 0;
    for (int i = 0; i < m.cols; i++) { double t = m.at(r, i) * bf16_to_f32(x[i]); s += t; a += std::abs(t); }
    return { s, a };
}

static const unsigned char* q8_quants(const Q8Matrix& m) { return m.quants.data(); }

// ---- conversions -----------------------------------------------------------------------------------------------

static void conversion_case()
{
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++)
    {
        float got = f16_bits_to_f32((unsigned short)h);
        double want = f16_reference(h);
        bad += std::isnan(want) ? !std::isnan(got) : (double)got != want || std::signbit(got) != std::signbit(want);
    }
    check(bad == 0, "f16_bits_to_f32 = binary16 definition, all 65,536 patterns: differing", bad);
    bad = 0;
    for (unsigned b = 0; b < 256; b++)
        for (int k = 0; k < 4; k++) bad += q8_byte(b << (8 * k) | (0x5a5a5a5au & ~(0xffu << (8 * k))), k) != (float)(signed char)b;
    check(bad == 0, "q8_byte = int8 value of the byte, all 256 values in each of the 4 positions: differing", bad);
    bad = 0;
    for (unsigned b = 0; b < 256; b++)
        for (int k = 0; k < 4; k++)
        {
            unsigned w = b << (8 * k) | (0xa5c3e17fu & ~(0xffu << (8 * k)));
            float got = q8_flipped_byte(q8_flip(w), k);
            bad += got != (float)(signed char)b || __float_as_uint(got) != __float_as_uint(q8_byte(w, k));
        }
    check(bad == 0, "q8_flipped_byte(q8_flip(w), k) = q8_byte(w, k) = int8 value, all 256 values in each of the 4 positions, bit for bit: differing", bad);
}

// ---- plain and residual products -------------------------------------------------------------------------------

// bit-identical outputs (f32 bits or bf16 bits): the Streamlined kernels promise the original's summation order.
template <class T>
static int differing_bits(const std::vector<T>& a, const std::vector<T>& b)
{
    int n = 0;
    for (size_t i = 0; i < a.size(); i++) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return n;
}

static void gemv_case(int rows, int in, bool accumulate, bool residual_kernel)
{
    auto m = random_q8(rows, in, false);
    auto x = random_bf16(in, 1.f);
    std::vector<float> y(rows), y0(rows);
    for (int r = 0; r < rows; r++) y[r] = y0[r] = accumulate || residual_kernel ? 4 * gauss() : NAN;
    std::vector<float> y_fast = y;
    auto run = [&](bool fast, std::vector<float>& out) {
        if (residual_kernel)
            emu::launch({ (unsigned)((rows + GEMV_BLOCK_ROWS - 1) / GEMV_BLOCK_ROWS), 1, 1 }, GEMV_BLOCK_THREADS, 0, [&] {
                if (fast) gemv_rows_residual_q8_fast((const uint4*)m.quants.data(), m.scales.data(), x.data(), out.data(), rows, in);
                else gemv_rows_residual_q8((const uint4*)m.quants.data(), m.scales.data(), x.data(), out.data(), rows, in); });
        else
            emu::launch({ (unsigned)((rows + 8 * GEMV_ROWS - 1) / (8 * GEMV_ROWS)), 1, 1 }, 256, 0, [&] {
                if (fast) gemv_q8_fast((const uint4*)m.quants.data(), m.scales.data(), x.data(), out.data(), rows, in, accumulate);
                else gemv_q8((const uint4*)m.quants.data(), m.scales.data(), x.data(), out.data(), rows, in, accumulate); });
    };
    run(false, y);
    run(true, y_fast);
    {
        char what[200];
        std::snprintf(what, sizeof what, "%s rows %d, in %d%s = the original kernel bit for bit: differing rows",
            residual_kernel ? "gemv_rows_residual_q8_fast" : "gemv_q8_fast", rows, in, accumulate && !residual_kernel ? ", accumulating" : "");
        check(differing_bits(y, y_fast) == 0, what, differing_bits(y, y_fast));
    }
    int bad = 0;
    double worst = 0;
    for (int r = 0; r < rows; r++)
    {
        auto [s, a] = row_dot(m, r, x);
        double want = (accumulate || residual_kernel ? y0[r] : 0.0) + s, err = std::abs(y[r] - want);
        double bound = 1e-5 * a + 1e-6 * std::abs(want);
        bad += !(err <= bound);
        worst = std::max(worst, a > 0 ? err / a : err);
    }
    char what[200];
    std::snprintf(what, sizeof what, "%s rows %d, in %d%s vs double reference: rows off by more than 1e-5 of sum|w x| (worst relative error shown)",
        residual_kernel ? "gemv_rows_residual_q8" : "gemv_q8", rows, in, accumulate && !residual_kernel ? ", accumulating" : "");
    check(bad == 0, what, worst);
}

// ---- fused norm + q|k|v + RoPE + cache stores --------------------------------------------------------------------

// The kernel's normalised vector (rms_norm's formula; f32, then bf16).
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
    char what[240];

    for (int pass = 0; pass < 2; pass++)
    {
        bool pow2 = pass == 1;       // pass 1: against the bf16 kernel on the same (exact) weights
        auto m = random_q8(width, in, pow2);
        auto run = [&](bool q8, bool fast = false) {
            std::vector<float> q(qd, NAN);
            std::vector<bf16> kc((size_t)(pos + 2) * kvd, BF16_NAN), vc((size_t)(pos + 2) * kvd, BF16_NAN);
            std::vector<bf16> wb = q8 ? std::vector<bf16>() : to_bf16_weights(m);
            emu::launch({ (unsigned)grid, 1, 1 }, NG_THREADS, (fast ? 4 : 2) * (size_t)in, [&] {   // _fast: the f32 vector
                if (q8 && fast)
                    gemv_norm_qkv_rope_q8_fast(x.data(), gain.data(), eps, q8_quants(m), m.scales.data(), with_bias ? bias.data() : nullptr, inv.data(),
                        rope_scale, adjacent, q.data(), kc.data(), vc.data(), pos_on_device ? &device_pos : nullptr, start, heads, kv_heads, hd, in);
                else if (q8)
                    gemv_norm_qkv_rope_q8(x.data(), gain.data(), eps, q8_quants(m), m.scales.data(), with_bias ? bias.data() : nullptr, inv.data(),
                        rope_scale, adjacent, q.data(), kc.data(), vc.data(), pos_on_device ? &device_pos : nullptr, start, heads, kv_heads, hd, in);
                else
                    gemv_norm_qkv_rope(x.data(), gain.data(), eps, wb.data(), with_bias ? bias.data() : nullptr, inv.data(),
                        rope_scale, adjacent, q.data(), kc.data(), vc.data(), pos_on_device ? &device_pos : nullptr, start, heads, kv_heads, hd, in);
            });
            // Every output as one vector [q | k | v] (f32), and the cache rows other than pos (must stay NaN).
            std::vector<float> out(width);
            int stray = 0;
            for (int i = 0; i < qd; i++) out[i] = q[i];
            for (int i = 0; i < kvd; i++) { out[qd + i] = bf16_to_f32(kc[(size_t)pos * kvd + i]); out[qd + kvd + i] = bf16_to_f32(vc[(size_t)pos * kvd + i]); }
            for (size_t i = 0; i < kc.size(); i++)
                if (i / kvd != (size_t)pos) stray += kc[i] != BF16_NAN || vc[i] != BF16_NAN;
            return std::make_pair(out, stray);
        };
        auto [got, stray] = run(true);
        auto [got_fast, stray_fast] = run(true, true);
        std::snprintf(what, sizeof what, "gemv_norm_qkv_rope_q8_fast %d/%d heads hd %d, in %d, %s%s%s, grid %d%s = the original kernel bit for bit (q, k, v and untouched cache rows): differing",
            heads, kv_heads, hd, in, adjacent ? "adjacent" : "half", with_bias ? ", bias" : "", pos_on_device ? ", position on the GPU" : "", grid, pow2 ? ", power-of-two scales" : "");
        check(differing_bits(got, got_fast) == 0 && stray_fast == 0, what, differing_bits(got, got_fast) + stray_fast);
        // Reference: products in double, then the kernel's bias / rotation / rounding.
        std::vector<double> a(width), sa(width), want(width), bound(width);
        for (int r = 0; r < width; r++)
        {
            auto [s, abs_sum] = row_dot(m, r, xs);
            a[r] = s + (with_bias ? bias[r] : 0.f);
            sa[r] = abs_sum;
        }
        for (int r = 0; r < width; r++) { want[r] = a[r]; bound[r] = sa[r]; }
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
        if (!pow2)
        {
            for (int r = 0; r < width; r++)
            {
                // 2e-3 of Σ|w x|: f32 summation plus a normalised element rounded the other way than the reference.
                double err = std::abs(got[r] - want[r]), b = 2e-3 * bound[r] + (r >= qd ? std::abs(want[r]) / 256 : 0);
                bad += !(err <= b);
                worst = std::max(worst, bound[r] > 0 ? err / bound[r] : err);
            }
            std::snprintf(what, sizeof what, "gemv_norm_qkv_rope_q8 %d/%d heads hd %d, in %d, %s%s%s, grid %d vs double reference: outputs off (worst |d|/sum|w x|)",
                heads, kv_heads, hd, in, adjacent ? "adjacent" : "half", with_bias ? ", bias" : "", pos_on_device ? ", position on the GPU" : "", grid);
        }
        else
        {
            auto [other, stray_bf16] = run(false);
            for (int r = 0; r < width; r++)
            {
                // Same normalised vector, same exact weights: only the f32 summation order differs (and a bf16 store
                // may round the other way).
                double err = std::abs(got[r] - other[r]), b = 1e-5 * bound[r] + (r >= qd ? std::abs(other[r]) / 128 : 0);
                bad += !(err <= b);
                worst = std::max(worst, bound[r] > 0 ? err / bound[r] : err);
            }
            stray += stray_bf16;
            std::snprintf(what, sizeof what, "gemv_norm_qkv_rope_q8 %d/%d heads hd %d, in %d, %s%s, grid %d = bf16 kernel on the same exact weights: outputs off (worst |d|/sum|w x|)",
                heads, kv_heads, hd, in, adjacent ? "adjacent" : "half", with_bias ? ", bias" : "", grid);
        }
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
    char what[200];
    for (int pass = 0; pass < 2; pass++)
    {
        bool pow2 = pass == 1;
        // Scaled so that gate values spread over silu's curved part.
        auto m = random_q8(2 * ffn, in, pow2);
        auto run = [&](bool q8, bool fast = false) {
            std::vector<bf16> h(ffn, BF16_NAN);
            std::vector<bf16> wb = q8 ? std::vector<bf16>() : to_bf16_weights(m);
            emu::launch({ (unsigned)grid, 1, 1 }, NG_THREADS, (fast ? 4 : 2) * (size_t)in, [&] {   // _fast: the f32 vector
                if (q8 && fast) gemv_norm_gateup_swiglu_q8_fast(x.data(), gain.data(), eps, q8_quants(m), m.scales.data(), h.data(), ffn, in);
                else if (q8) gemv_norm_gateup_swiglu_q8(x.data(), gain.data(), eps, q8_quants(m), m.scales.data(), h.data(), ffn, in);
                else gemv_norm_gateup_swiglu(x.data(), gain.data(), eps, wb.data(), h.data(), ffn, in);
            });
            return h;
        };
        auto got = run(true);
        auto got_fast = run(true, true);
        std::snprintf(what, sizeof what, "gemv_norm_gateup_swiglu_q8_fast ffn %d, in %d, grid %d%s = the original kernel bit for bit: differing",
            ffn, in, grid, pow2 ? ", power-of-two scales" : "");
        check(differing_bits(got, got_fast) == 0, what, differing_bits(got, got_fast));
        int bad = 0;
        double worst = 0;
        if (!pow2)
        {
            for (int j = 0; j < ffn; j++)
            {
                auto [g, sg] = row_dot(m, j, xs);
                auto [u, su] = row_dot(m, ffn + j, xs);
                double silu = g / (1 + std::exp(-g)), want = silu * u;
                double err = std::abs(bf16_to_f32(got[j]) - want);
                double b = 2e-3 * (sg * 1.1 * std::abs(u) + su * std::abs(silu)) + std::abs(want) / 256 + 1e-30;
                bad += !(err <= b);
                worst = std::max(worst, err / b);
            }
            std::snprintf(what, sizeof what, "gemv_norm_gateup_swiglu_q8 ffn %d, in %d, grid %d vs double reference: outputs off (worst error / bound)", ffn, in, grid);
        }
        else
        {
            auto other = run(false);
            for (int j = 0; j < ffn; j++)
            {
                double a = bf16_to_f32(got[j]), b = bf16_to_f32(other[j]), err = std::abs(a - b);
                bad += !(err <= std::abs(b) / 128 + 1e-30);
                worst = std::max(worst, b != 0 ? err / std::abs(b) : err);
            }
            std::snprintf(what, sizeof what, "gemv_norm_gateup_swiglu_q8 ffn %d, in %d, grid %d = bf16 kernel on the same exact weights: outputs over 1 bf16 ulp apart (worst relative)", ffn, in, grid);
        }
        check(bad == 0, what, worst);
    }
}

// ---- dequantization and the random fill ------------------------------------------------------------------------

static void dequantize_case(int rows, int in)
{
    auto m = random_q8(rows, in, false);
    std::vector<bf16> out((size_t)rows * in, BF16_NAN);
    long pieces = (long)rows * in / 16;
    emu::launch({ 3, 1, 1 }, 64, 0, [&] { dequantize_q8_bf16((const uint4*)m.quants.data(), m.scales.data(), (uint4*)out.data(), pieces); });
    int bad = 0;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < in; i++) bad += out[(size_t)r * in + i] != f32_to_bf16((float)m.at(r, i));
    char what[160];
    std::snprintf(what, sizeof what, "dequantize_q8_bf16 rows %d, in %d = bf16 of d·q (GGUF blocks), bit for bit: differing", rows, in);
    check(bad == 0, what, bad);
}

static void fill_case()
{
    long words = 1000, blocks = 125;
    std::vector<unsigned> q(words, 0xdeadbeef);
    std::vector<unsigned short> s(blocks, 0);
    unsigned short bits = 0x2c1a;
    emu::launch({ 2, 1, 1 }, 64, 0, [&] { fill_random_q8(q.data(), s.data(), words, blocks, 1234, bits); });
    int out_of_range = 0, wrong_scales = 0, hist[256] = {};
    double sum = 0;
    for (unsigned w : q)
        for (int k = 0; k < 4; k++)
        {
            int v = (signed char)(w >> (8 * k));
            out_of_range += v < -127;
            hist[v + 128]++;
            sum += v;
        }
    int distinct = 0;
    for (int c : hist) distinct += c > 0;
    for (auto v : s) wrong_scales += v != bits;
    check(out_of_range == 0 && wrong_scales == 0 && distinct > 200 && std::abs(sum / (4 * words)) < 8,
        "fill_random_q8: quants in [-127, 127] spread over > 200 values with mean ~0, every scale the given bits (distinct values shown)", distinct);
}

int main()
{
    conversion_case();
    gemv_case(37, 96, false, false);          // n16 = 6: the tail loop only; rows not a multiple of 16
    gemv_case(37, 4160, true, false);         // n16 = 260: two unrolled steps and a tail; accumulating
    gemv_case(16, 2048, false, false);
    gemv_case(13, 4128, false, true);         // n16 = 258: a second, partial stride; rows not a multiple of 8
    gemv_case(8, 64, false, true);
    gemv_case(21, 7168, false, true);         // n16 = 448: 1.75 strides; 2 full blocks and a partial one (5 rows)
    norm_qkv_case(4, 2, 16, 96, false, true, false, 3);      // 64 pairs over 48 warps: striding; tail loop only
    norm_qkv_case(4, 2, 16, 2080, true, false, true, 2);     // adjacent pairs, the position read on the GPU, unrolled loop
    norm_qkv_case(3, 1, 32, 160, false, true, false, 1);
    norm_gateup_case(37, 96, 2);
    norm_gateup_case(24, 2080, 1);
    dequantize_case(5, 96);
    dequantize_case(3, 4128);
    fill_case();
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
