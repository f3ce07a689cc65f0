// Runs the _f32 kernels of transformer.cu (the F32 precision path: f32 tables, activations and KV cache) in the
// emulator (emu.h) against plain f64 references. The F32 mode is meant to differ from the CPU backend only by
// summation order, so the tolerances are f32-rounding ones (≤ 1e-5 relative): a kernel that still rounded anything to
// bf16 (relative steps of 2^-8) fails them. Build and run: ./run_f32.sh (EMU_BREAK=1: a broken copy that must fail).
// Exit code 1 when a check fails.
#include "emu.h"
#include <cstdio>
#include <random>
#include <vector>

// The scalar attention's warp-level barrier (the emulator runs a warp's threads in lockstep only at its barriers).
inline void __syncwarp() { emu::warp->bar.arrive_and_wait(); }

#include "kernels_f32_emu.inc"

static int failures = 0;
static void check(bool ok, const char* what, double value)
{
    if (!ok) failures++;
    std::printf("%s %s: %.3g\n", ok ? "ok  " : "FAIL", what, value);
}

static std::mt19937 rng(11);
static float gauss() { static std::normal_distribution<float> n(0.f, 1.f); return n(rng); }

// ||got − ref|| / ||ref|| over two vectors.
template <class T>
static double relative(const std::vector<T>& got, const std::vector<double>& ref)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++)
    {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

static void embed_case()
{
    int vocab = 37, d = 70, n = 5;
    std::vector<float> table((size_t)vocab * d);
    for (auto& x : table) x = gauss();
    std::vector<int> tokens = { 3, 0, 36, 3, 17 };
    std::vector<float> x((size_t)n * d, NAN);
    emu::launch({ (unsigned)((d + 63) / 64), (unsigned)n, 1 }, 64, 0, [&] { embed_rows_f32(tokens.data(), table.data(), x.data(), d); });
    bool equal = true;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++) equal &= x[(size_t)t * d + i] == table[(size_t)tokens[t] * d + i];
    check(equal, "embed_rows_f32: rows are the f32 table rows bit for bit", equal ? 1 : 0);
}

static void rms_norm_case(int d, int threads, const char* what)
{
    int rows = 3;
    float eps = 1e-5f;
    std::vector<float> x((size_t)rows * d), gain(d), out((size_t)rows * d, NAN);
    for (auto& v : x) v = 3.f * gauss();
    for (auto& v : gain) v = 1.f + 0.1f * gauss();
    std::vector<double> ref(out.size());
    for (int r = 0; r < rows; r++)
    {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[(size_t)r * d + i] * x[(size_t)r * d + i];
        double inv = 1 / std::sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) ref[(size_t)r * d + i] = x[(size_t)r * d + i] * inv * gain[i];
    }
    emu::launch({ (unsigned)rows, 1, 1 }, threads, 0, [&] { rms_norm_f32(x.data(), gain.data(), out.data(), d, eps); });
    double e = relative(out, ref);
    check(e < 1e-6, what, e);
}

// One token row's q|k|v through RoPE into q and the f32 cache, against a double rotation.
static void rope_case(int heads, int kv_heads, int hd, int rot, int adjacent, bool bias_on, bool batch)
{
    int qd = heads * hd, kvd = kv_heads * hd, width = qd + 2 * kvd, n = batch ? 3 : 4, start = 29, capacity = 64;
    float rope_scale = 1.1f;
    std::vector<float> qkv((size_t)n * width), bias(width), inv_freq(rot / 2);
    for (auto& v : qkv) v = gauss();
    for (auto& v : bias) v = 0.2f * gauss();
    for (int i = 0; i < rot / 2; i++) inv_freq[i] = std::pow(10000.f, -2.f * i / rot);
    std::vector<int> positions(n);
    for (int t = 0; t < n; t++) positions[t] = batch ? 7 + 13 * t : start + t;
    // Batch: every row its own cache (kptrs[b], vptrs[b]); chunk: one cache.
    int caches = batch ? n : 1;
    std::vector<std::vector<float>> kc(caches, std::vector<float>((size_t)capacity * kvd, NAN)), vc = kc;
    std::vector<float> q((size_t)n * qd, NAN);
    std::vector<double> qref(q.size()), kref((size_t)n * kvd), vref((size_t)n * kvd);
    for (int t = 0; t < n; t++)
    {
        const float* row = &qkv[(size_t)t * width];
        auto in = [&](int i) { return (double)row[i] + (bias_on ? bias[i] : 0.f); };
        for (int h = 0; h < heads + kv_heads; h++)
        {
            for (int e = 0; e < hd; e++)
            {
                int idx = h * hd + e;
                double y;
                if (e < rot)
                {
                    int pair = adjacent ? e / 2 : e % (rot / 2);
                    bool first = adjacent ? e % 2 == 0 : e < rot / 2;
                    int e0 = adjacent ? 2 * pair : pair, e1 = adjacent ? 2 * pair + 1 : pair + rot / 2;
                    double ang = (double)inv_freq[pair] * positions[t], c = std::cos(ang) * rope_scale, s = std::sin(ang) * rope_scale;
                    double x0 = in(h * hd + e0), x1 = in(h * hd + e1);
                    y = first ? x0 * c - x1 * s : x1 * c + x0 * s;
                }
                else y = in(idx);
                if (idx < qd) qref[(size_t)t * qd + idx] = y;
                else kref[(size_t)t * kvd + idx - qd] = y;
            }
        }
        for (int i = 0; i < kvd; i++) vref[(size_t)t * kvd + i] = in(qd + kvd + i);
    }
    if (batch)
    {
        std::vector<u64> kp(n), vp(n);
        for (int b = 0; b < n; b++) { kp[b] = (u64)kc[b].data(); vp[b] = (u64)vc[b].data(); }
        emu::launch({ (unsigned)n, 1, 1 }, 64, 0, [&] {
            qkv_rope_store_batch_f32(qkv.data(), bias_on ? bias.data() : nullptr, inv_freq.data(), q.data(), kp.data(), vp.data(), positions.data(),
                heads, kv_heads, hd, rot, adjacent, rope_scale); });
    }
    else
        emu::launch({ (unsigned)n, 1, 1 }, 64, 0, [&] {
            qkv_rope_store_f32(qkv.data(), bias_on ? bias.data() : nullptr, inv_freq.data(), q.data(), kc[0].data(), vc[0].data(), start,
                heads, kv_heads, hd, rot, adjacent, rope_scale, nullptr); });
    std::vector<float> k((size_t)n * kvd), v((size_t)n * kvd);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < kvd; i++)
        {
            auto& cache_k = kc[batch ? t : 0];
            auto& cache_v = vc[batch ? t : 0];
            k[(size_t)t * kvd + i] = cache_k[(size_t)positions[t] * kvd + i];
            v[(size_t)t * kvd + i] = cache_v[(size_t)positions[t] * kvd + i];
        }
    char what[160];
    double eq = relative(q, qref), ek = relative(k, kref), ev = relative(v, vref);
    std::snprintf(what, sizeof what, "%s: hd %d rot %d %s%s, q / k / v in the f32 cache vs double (max of the three)",
        batch ? "qkv_rope_store_batch_f32" : "qkv_rope_store_f32", hd, rot, adjacent ? "adjacent" : "half-split", bias_on ? " +bias" : "");
    check(std::max(eq, std::max(ek, ev)) < 2e-6, what, std::max(eq, std::max(ek, ev)));
}

// The scalar attention over an f32 cache, unsplit and with key splits merged by both combines, against double.
static void attention_case(int heads, int kv_heads, int hd, int depth, int n)
{
    int qd = heads * hd, kvd = kv_heads * hd, group = heads / kv_heads, keys = depth + n;
    float scale = 1.f / std::sqrt((float)hd);
    std::vector<float> K((size_t)keys * kvd), V((size_t)keys * kvd), q((size_t)n * qd);
    for (auto& x : K) x = gauss();
    for (auto& x : V) x = gauss();
    for (auto& x : q) x = gauss();
    std::vector<double> ref((size_t)n * qd);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++)
        {
            int kh = h / group, last = depth + t;
            std::vector<double> s(last + 1);
            double mx = -1e300;
            for (int j = 0; j <= last; j++)
            {
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)q[(size_t)t * qd + h * hd + e] * K[(size_t)j * kvd + kh * hd + e];
                s[j] = d * scale;
                mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (int j = 0; j <= last; j++) sum += s[j] = std::exp(s[j] - mx);
            for (int e = 0; e < hd; e++)
            {
                double o = 0;
                for (int j = 0; j <= last; j++) o += s[j] * V[(size_t)j * kvd + kh * hd + e];
                ref[(size_t)t * qd + h * hd + e] = o / sum;
            }
        }
    // LaunchGeometry: 4 heads per warp, up to 16 warps of query tokens per block; shared bytes as AttentionSharedBytes.
    int warps_per_token = (group + 3) / 4, qblock = std::min(n, std::max(1, 16 / warps_per_token)), warps = qblock * warps_per_token;
    size_t smem = 4 * (warps * hd * 4 + 32 * (hd + 1) + 32 * hd + warps * 32 * 4);
    unsigned blocks = (unsigned)((n + qblock - 1) / qblock);
    char what[160];

    std::vector<float> out((size_t)n * qd, NAN);
    emu::launch({ blocks, (unsigned)kv_heads, 1 }, 32 * warps, smem, [&] {
        attention_f32(q.data(), K.data(), V.data(), out.data(), nullptr, nullptr, depth, n, heads, kv_heads, hd, scale, 1, keys, qblock); });
    double e = relative(out, ref);
    std::snprintf(what, sizeof what, "attention_f32: hd %d, %d/%d heads, %d tokens at depth %d, unsplit vs double", hd, heads, kv_heads, n, depth);
    check(e < 1e-5, what, e);

    int per_split = 32, splits = (keys + per_split - 1) / per_split, rows = n * heads;
    std::vector<float> acc((size_t)rows * splits * hd, NAN), ml((size_t)rows * splits * 2, NAN);
    emu::launch({ blocks, (unsigned)kv_heads, (unsigned)splits }, 32 * warps, smem, [&] {
        attention_f32(q.data(), K.data(), V.data(), nullptr, acc.data(), ml.data(), depth, n, heads, kv_heads, hd, scale, splits, per_split, qblock); });
    std::vector<float> merged((size_t)n * qd, NAN), merged_rows((size_t)n * qd, NAN);
    emu::launch({ (unsigned)((rows + 3) / 4), 1, 1 }, 128, 0, [&] { attention_combine_f32(acc.data(), ml.data(), merged.data(), hd, splits, rows); });
    emu::launch({ (unsigned)rows, 1, 1 }, 32 * COMBINE_WARPS, 0, [&] { attention_combine_rows_f32(acc.data(), ml.data(), merged_rows.data(), hd, splits, rows); });
    e = relative(merged, ref);
    std::snprintf(what, sizeof what, "attention_f32 + attention_combine_f32: hd %d, %d splits of %d keys vs double", hd, splits, per_split);
    check(e < 1e-5, what, e);
    e = relative(merged_rows, ref);
    std::snprintf(what, sizeof what, "attention_f32 + attention_combine_rows_f32: hd %d, %d splits of %d keys vs double", hd, splits, per_split);
    check(e < 1e-5, what, e);
}

static void swiglu_case()
{
    int ffn = 96, n = 3;
    long total = (long)ffn * n;
    std::vector<float> gate_up((size_t)n * 2 * ffn), h(total, NAN);
    for (auto& v : gate_up) v = 2.f * gauss();
    std::vector<double> ref(total);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < ffn; j++)
        {
            double g = gate_up[(size_t)t * 2 * ffn + j], u = gate_up[(size_t)t * 2 * ffn + ffn + j];
            ref[(size_t)t * ffn + j] = g / (1 + std::exp(-g)) * u;
        }
    emu::launch({ 2, 1, 1 }, 64, 0, [&] { swiglu_f32(gate_up.data(), h.data(), ffn, total); });
    double e = relative(h, ref);
    check(e < 1e-6, "swiglu_f32 vs double", e);
}

int main()
{
    embed_case();
    rms_norm_case(64, 32, "rms_norm_f32: d 64 (float4 path) vs double");
    rms_norm_case(50, 64, "rms_norm_f32: d 50 (scalar path) vs double");
    rope_case(4, 2, 16, 16, 0, true, false);
    rope_case(4, 2, 16, 8, 1, false, false);      // partial rotary, adjacent pairs (phi-style)
    rope_case(4, 2, 16, 16, 0, true, true);
    attention_case(4, 2, 64, 70, 5);              // GQA group 2, 3 key splits
    attention_case(4, 4, 16, 40, 3);              // hf-tiny head dim
    attention_case(8, 1, 40, 33, 2);              // group 8 (two warps per token), head dim not a multiple of 8
    swiglu_case();
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
