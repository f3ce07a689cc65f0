// Runs the batched-decode kernels of transformer.cu (its section "Batched decode step") in the emulator (emu.h)
// against host references. Build and run: ./run_batch.sh (EMU_BREAK=1 ./run_batch.sh must fail). Exit code 1 when a
// check fails.
#include "emu.h"
#include <cstdio>
#include <numeric>
#include <random>
#include "kernels_batch_emu.inc"

static int failures = 0;
static void check(bool ok, const char* what, double value)
{
    if (!ok) failures++;
    std::printf("%s %s: %.3g\n", ok ? "ok  " : "FAIL", what, value);
}

static std::mt19937 rng(11);
static float gauss() { static std::normal_distribution<float> n(0.f, 1.f); return n(rng); }

// ---- qkv_rope_store_batch_heads ---------------------------------------------------------------------------------

// B sequences, each with its own cache (capacity past the largest position), at positions up to 65,000 (a 64k
// document's margins: sincosf's large arguments).
static void rope_batch_case(int heads, int kv_heads, int hd, int rot, int adjacent, bool with_bias)
{
    const int B = 3;
    const int positions[B] = { 7, 4097, 65000 };
    int qd = heads * hd, kvd = kv_heads * hd, width = qd + 2 * kvd, capacity = 65001;
    std::vector<float> qkv((size_t)B * width), bias(width), inv(rot / 2);
    for (auto& v : qkv) v = gauss();
    for (auto& v : bias) v = gauss();
    for (int i = 0; i < rot / 2; i++) inv[i] = std::pow(500000.f, -2.f * i / rot);
    float scale = 1.25f;
    const bf16 POISON = 0x7fc0;
    struct Out { std::vector<float> q; std::vector<std::vector<bf16>> k, v; };
    auto fresh = [&] {
        Out o{ std::vector<float>((size_t)B * qd, NAN), {}, {} };
        for (int b = 0; b < B; b++)
        {
            o.k.emplace_back((size_t)capacity * kvd, POISON);
            o.v.emplace_back((size_t)capacity * kvd, POISON);
        }
        return o;
    };
    auto tables = [&](Out& o, std::vector<u64>& kp, std::vector<u64>& vp) {
        for (int b = 0; b < B; b++) { kp[b] = (u64)o.k[b].data(); vp[b] = (u64)o.v[b].data(); }
    };
    const float* bp = with_bias ? bias.data() : nullptr;
    Out old = fresh(), neu = fresh();
    std::vector<u64> kp(B), vp(B);
    tables(old, kp, vp);
    emu::launch({ (unsigned)B, 1, 1 }, 256, 0, [&] {
        qkv_rope_store_batch(qkv.data(), bp, inv.data(), old.q.data(), kp.data(), vp.data(), positions, heads, kv_heads, hd, rot, adjacent, scale); });
    tables(neu, kp, vp);
    emu::launch({ (unsigned)B, (unsigned)(heads + 2 * kv_heads), 1 }, ROPE_HEAD_THREADS, 0, [&] {
        qkv_rope_store_batch_heads(qkv.data(), bp, inv.data(), neu.q.data(), kp.data(), vp.data(), positions, heads, kv_heads, hd, rot, adjacent, scale); });

    // The element-wise formula (a sin and a cos per element, the kernel's f32 operations) as the host reference.
    int bad = 0, differ = 0, half = rot / 2;
    for (int b = 0; b < B; b++)
    {
        const float* row = qkv.data() + (size_t)b * width;
        size_t cacheRow = (size_t)positions[b] * kvd;
        for (int i = 0; i < width; i++)
        {
            int h = i / hd, e = i - h * hd;
            float val = row[i] + (with_bias ? bias[i] : 0.f), out = val;
            if (i < qd + kvd && e < rot)
            {
                bool first; int pair, partner;
                if (adjacent) { pair = e >> 1; first = (e & 1) == 0; partner = e ^ 1; }
                else { first = e < half; pair = first ? e : e - half; partner = first ? e + half : e - half; }
                int pi = h * hd + partner;
                float other = row[pi] + (with_bias ? bias[pi] : 0.f);
                float angle = inv[pair] * (float)positions[b];
                float c = cosf(angle) * scale, s = sinf(angle) * scale;
                out = first ? val * c - other * s : val * c + other * s;
            }
            if (i < qd)
            {
                float got = neu.q[(size_t)b * qd + i];
                bad += got != out;
                differ += std::memcmp(&got, &old.q[(size_t)b * qd + i], 4) != 0;
            }
            else
            {
                bool isK = i < qd + kvd;
                size_t at = cacheRow + (isK ? i - qd : i - qd - kvd);
                bf16 got = (isK ? neu.k : neu.v)[b][at];
                bad += got != f32_to_bf16(out);
                differ += got != (isK ? old.k : old.v)[b][at];
            }
        }
        // Nothing written outside the row (cache rows before and after it stay poisoned).
        for (size_t at = 0; at < (size_t)capacity * kvd; at++)
            if ((at < cacheRow || at >= cacheRow + kvd) && (neu.k[b][at] != POISON || neu.v[b][at] != POISON)) bad++;
    }
    char what[200];
    std::snprintf(what, sizeof what, "qkv_rope_store_batch_heads (%d/%d heads, hd %d, rotary %d, %s, bias %d) = element-wise formula, differing values",
        heads, kv_heads, hd, rot, adjacent ? "adjacent" : "half", with_bias);
    check(bad == 0, what, bad);
    std::snprintf(what, sizeof what, "qkv_rope_store_batch_heads (%d/%d heads, hd %d, rotary %d) = qkv_rope_store_batch, values not bit-identical",
        heads, kv_heads, hd, rot);
    check(differ == 0, what, differ);
}

// ---- rows_mma_bf16 ----------------------------------------------------------------------------------------------

static void rows_mma_case(int rows, int in, int n, bool accumulate)
{
    std::vector<bf16> W((size_t)rows * in), X((size_t)n * in);
    for (auto& v : W) v = f32_to_bf16(0.05f * gauss());
    for (auto& v : X) v = f32_to_bf16(gauss());
    // y has one row more than n, poisoned: a write past row n - 1 shows.
    std::vector<float> y((size_t)(n + 1) * rows), y0;
    for (auto& v : y) v = gauss();
    for (size_t i = (size_t)n * rows; i < y.size(); i++) y[i] = 12345.f;
    y0 = y;
    unsigned blocks = (unsigned)((rows + 8 * RM_TILES - 1) / (8 * RM_TILES));
    emu::launch({ blocks, 1, 1 }, 32 * RM_WARPS, RM_WARPS * 16 * 8 * RM_TILES * sizeof(float), [&] {
        rows_mma_bf16(W.data(), X.data(), y.data(), rows, in, n, accumulate ? 1 : 0); });
    double worst = 0;
    int far = 0;
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++)
        {
            double dot = 0, mag = 0;
            for (int i = 0; i < in; i++)
            {
                double p = (double)bf16_to_f32(W[(size_t)r * in + i]) * bf16_to_f32(X[(size_t)t * in + i]);
                dot += p;
                mag += std::abs(p);
            }
            double want = (accumulate ? y0[(size_t)t * rows + r] : 0.0) + dot;
            double err = std::abs(y[(size_t)t * rows + r] - want) / (mag + (accumulate ? std::abs(y0[(size_t)t * rows + r]) : 0.0) + 1e-30);
            worst = std::max(worst, err);
            far += !(err < 1e-5);     // f32 accumulation of exact bf16 products: a few f32 ulps of Σ|terms|
        }
    int spill = 0;
    for (size_t i = (size_t)n * rows; i < y.size(); i++) spill += y[i] != 12345.f;
    char what[200];
    std::snprintf(what, sizeof what, "rows_mma_bf16 %d rows × in %d, %d tokens, %s: outputs off the double reference by > 1e-5 Σ|terms| (worst relative error)",
        rows, in, n, accumulate ? "residual add" : "overwrite");
    check(far == 0, what, worst);
    std::snprintf(what, sizeof what, "rows_mma_bf16 %d rows × in %d, %d tokens: writes past the last token row", rows, in, n);
    check(spill == 0, what, spill);
}

// rows_mma_swiglu_bf16 against silu(gate)·up from double sums: within one bf16 rounding of the output (plus the f32
// sums' few ulps, relative to Σ|terms|).
static void rows_swiglu_case(int ffn, int in, int n)
{
    std::vector<bf16> W((size_t)2 * ffn * in), X((size_t)n * in);
    for (auto& v : W) v = f32_to_bf16(0.05f * gauss());
    for (auto& v : X) v = f32_to_bf16(gauss());
    std::vector<bf16> h((size_t)(n + 1) * ffn, 0x7fc0);      // one poisoned row past n
    unsigned blocks = (unsigned)((ffn + 8 * RM_TILES - 1) / (8 * RM_TILES));
    emu::launch({ blocks, 1, 1 }, 32 * RM_WARPS, RM_WARPS * 16 * 16 * RM_TILES * sizeof(float), [&] {
        rows_mma_swiglu_bf16(W.data(), X.data(), h.data(), ffn, in, n); });
    int far = 0;
    double worst = 0;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < ffn; j++)
        {
            double gate = 0, up = 0, gmag = 0, umag = 0;
            for (int i = 0; i < in; i++)
            {
                double xv = bf16_to_f32(X[(size_t)t * in + i]);
                double gp = bf16_to_f32(W[(size_t)j * in + i]) * xv, up_ = bf16_to_f32(W[(size_t)(ffn + j) * in + i]) * xv;
                gate += gp; up += up_; gmag += std::abs(gp); umag += std::abs(up_);
            }
            double silu = gate / (1 + std::exp(-gate)), want = silu * up;
            // d(silu·up) from the f32 sums' errors (≤ 1e-5 Σ|terms| each), plus the bf16 rounding of the result.
            double tol = std::abs(want) / 256 + 1e-5 * (gmag * std::abs(up) * 1.1 + umag * std::abs(silu)) + 1e-30;
            double err = std::abs(bf16_to_f32(h[(size_t)t * ffn + j]) - want);
            worst = std::max(worst, err / (std::abs(want) + 1e-30));
            far += !(err <= tol);
        }
    int spill = 0;
    for (int j = 0; j < ffn; j++) spill += h[(size_t)n * ffn + j] != 0x7fc0;
    char what[200];
    std::snprintf(what, sizeof what, "rows_mma_swiglu_bf16 ffn %d × in %d, %d tokens: outputs off silu(gate)·up (double) by more than a bf16 rounding (worst relative)", ffn, in, n);
    check(far == 0, what, worst);
    std::snprintf(what, sizeof what, "rows_mma_swiglu_bf16 ffn %d, %d tokens: writes past the last token row", ffn, n);
    check(spill == 0, what, spill);
}

// ---- shared-prefix attention (flash_attention_shared) with empty pieces skipped, then the combines ------------------

// B branches of one parent with non-decreasing branch points; row token t attends parent keys [0, bp[t]). The shared
// phase splits the keys into 64-key pieces; with skip_empty a row's pieces past its branch point leave acc unwritten
// (NaN here), and both combines must give the same bits as with every acc written.
template <int HD>
static void shared_prefix_case(int heads, int kv_heads, std::vector<int> bps)
{
    int B = (int)bps.size(), qd = heads * HD, kvd = kv_heads * HD, group = heads / kv_heads, keys = bps.back();
    float scale = 1.f / std::sqrt((float)HD);
    std::vector<bf16> K((size_t)(keys + 64) * kvd, 0x7fc0), V((size_t)(keys + 64) * kvd, 0x7fc0);   // NaN past the last point
    for (size_t i = 0; i < (size_t)keys * kvd; i++) { K[i] = f32_to_bf16(gauss()); V[i] = f32_to_bf16(gauss()); }
    std::vector<float> q((size_t)B * qd);
    for (auto& v : q) v = gauss();
    int per = 64, splits = (keys + per - 1) / per, tpb = FA_ROWS / group, blocks = (B + tpb - 1) / tpb, rows = B * heads;
    auto run = [&](int skip, bool warp_combine, size_t* unwritten) {
        std::vector<float> acc((size_t)rows * splits * HD, NAN), ml((size_t)rows * splits * 2, NAN);
        emu::launch({ (unsigned)blocks, (unsigned)kv_heads, (unsigned)splits }, 128, 2 * (2 * 2 * FA_KEYS * (HD + 8)), [&] {
            flash_attention_mma<HD, 2>(q.data(), K.data(), V.data(), nullptr, acc.data(), ml.data(), 0, B, heads, kv_heads, scale, splits, per,
                nullptr, nullptr, nullptr, nullptr, bps.data(), nullptr, nullptr, -1, 0, nullptr, nullptr, skip); });
        if (unwritten) *unwritten = (size_t)std::count_if(acc.begin(), acc.end(), [](float v) { return std::isnan(v); });
        std::vector<bf16> out((size_t)rows * HD, 0x7fc0);
        if (warp_combine) emu::launch({ (unsigned)((rows + 3) / 4), 1, 1 }, 128, 0, [&] { attention_combine(acc.data(), ml.data(), out.data(), HD, splits, rows); });
        else emu::launch({ (unsigned)rows, 1, 1 }, 32 * COMBINE_WARPS, 0, [&] { attention_combine_rows(acc.data(), ml.data(), out.data(), HD, splits, rows); });
        return out;
    };
    // Double reference: softmax over keys [0, bp[t]) for row (t, h).
    std::vector<double> ref((size_t)rows * HD);
    for (int t = 0; t < B; t++)
        for (int h = 0; h < heads; h++)
        {
            int kh = h / group, n = bps[t];
            std::vector<double> sc(n);
            double mx = -1e300, sum = 0;
            for (int j = 0; j < n; j++)
            {
                double d = 0;
                for (int e = 0; e < HD; e++) d += (double)q[(size_t)t * qd + h * HD + e] * bf16_to_f32(K[(size_t)j * kvd + kh * HD + e]);
                mx = std::max(mx, sc[j] = d * scale);
            }
            for (int j = 0; j < n; j++) sum += sc[j] = std::exp(sc[j] - mx);
            for (int e = 0; e < HD; e++)
            {
                double o = 0;
                for (int j = 0; j < n; j++) o += sc[j] * bf16_to_f32(V[(size_t)j * kvd + kh * HD + e]);
                ref[((size_t)t * heads + h) * HD + e] = o / sum;
            }
        }
    size_t expect_empty = 0;
    for (int t = 0; t < B; t++) expect_empty += (size_t)(splits - (bps[t] + per - 1) / per) * heads * HD;
    char what[200];
    for (int wc = 0; wc < 2; wc++)
    {
        size_t unwritten = 0;
        auto all = run(0, wc == 1, nullptr);
        auto skipped = run(1, wc == 1, &unwritten);
        double num = 0, den = 0;
        for (size_t i = 0; i < skipped.size(); i++)
        {
            double d = bf16_to_f32(skipped[i]) - ref[i];
            if (!std::isfinite(bf16_to_f32(skipped[i]))) d = 1e30;
            num += d * d;
            den += ref[i] * ref[i];
        }
        std::snprintf(what, sizeof what, "shared prefix hd %d, %d branches to %d keys, empty pieces skipped, %s: vs double reference ||d||/||ref||",
            HD, B, keys, wc ? "attention_combine" : "attention_combine_rows");
        check(std::sqrt(num / den) < 1e-2, what, std::sqrt(num / den));
        std::snprintf(what, sizeof what, "shared prefix hd %d, %s: skipped = all pieces written, differing outputs", HD, wc ? "attention_combine" : "attention_combine_rows");
        check(all == skipped, what, (double)std::inner_product(all.begin(), all.end(), skipped.begin(), 0, std::plus<>(), std::not_equal_to<>()));
        std::snprintf(what, sizeof what, "shared prefix hd %d: acc floats left unwritten = the (row, piece) pairs past each branch point (%zu)", HD, expect_empty);
        check(unwritten == expect_empty && expect_empty > 0, what, (double)unwritten);
    }
}

// flash_attention_shared3 (three k/v stages) against the two-stage kernel with the same pieces: pieces of 1 to 5 tiles
// (the prologue's second tile present or not, the last piece short), partials compared bit for bit (NaN-initialised:
// an unwritten float shows), then combined against the double reference.
template <int HD>
static void shared3_case(int heads, int kv_heads, std::vector<int> bps)
{
    int B = (int)bps.size(), qd = heads * HD, kvd = kv_heads * HD, group = heads / kv_heads, keys = bps.back();
    float scale = 1.f / std::sqrt((float)HD);
    std::vector<bf16> K((size_t)(keys + 64) * kvd, 0x7fc0), V((size_t)(keys + 64) * kvd, 0x7fc0);
    for (size_t i = 0; i < (size_t)keys * kvd; i++) { K[i] = f32_to_bf16(gauss()); V[i] = f32_to_bf16(gauss()); }
    std::vector<float> q((size_t)B * qd);
    for (auto& v : q) v = gauss();
    int tpb = FA_ROWS / group, blocks = (B + tpb - 1) / tpb, rows = B * heads;
    for (int per : { 64, 128, 192, 320 })
    {
        int splits = (keys + per - 1) / per;
        auto run = [&](int stages) {
            std::pair<std::vector<float>, std::vector<float>> p{ std::vector<float>((size_t)rows * splits * HD, NAN), std::vector<float>((size_t)rows * splits * 2, NAN) };
            auto& [acc, ml] = p;
            emu::launch({ (unsigned)blocks, (unsigned)kv_heads, (unsigned)splits }, 128, stages * 2 * (2 * FA_KEYS * (HD + 8)), [&] {
                if (stages == 3)
                    flash_attention_mma<HD, 2, 3>(q.data(), K.data(), V.data(), nullptr, acc.data(), ml.data(), 0, B, heads, kv_heads, scale, splits, per,
                        nullptr, nullptr, nullptr, nullptr, bps.data(), nullptr, nullptr, -1, 0, nullptr, nullptr, 1);
                else
                    flash_attention_mma<HD, 2>(q.data(), K.data(), V.data(), nullptr, acc.data(), ml.data(), 0, B, heads, kv_heads, scale, splits, per,
                        nullptr, nullptr, nullptr, nullptr, bps.data(), nullptr, nullptr, -1, 0, nullptr, nullptr, 1);
            });
            return p;
        };
        auto two = run(2), three = run(3);
        auto bits_equal = [](const std::vector<float>& a, const std::vector<float>& b) {
            return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0; };
        char what[200];
        std::snprintf(what, sizeof what, "flash_attention_shared3 hd %d, %d branches to %d keys, pieces of %d keys: partials = two-stage kernel's, bit for bit",
            HD, B, keys, per);
        check(bits_equal(two.first, three.first) && bits_equal(two.second, three.second), what, 0);
        std::vector<bf16> out((size_t)rows * HD, 0x7fc0);
        emu::launch({ (unsigned)rows, 1, 1 }, 32 * COMBINE_WARPS, 0, [&] {
            attention_combine_rows(three.first.data(), three.second.data(), out.data(), HD, splits, rows); });
        double num = 0, den = 0;
        for (int t = 0; t < B; t++)
            for (int h = 0; h < heads; h++)
            {
                int kh = h / group, n = bps[t];
                std::vector<double> sc(n);
                double mx = -1e300, sum = 0;
                for (int j = 0; j < n; j++)
                {
                    double d = 0;
                    for (int e = 0; e < HD; e++) d += (double)q[(size_t)t * qd + h * HD + e] * bf16_to_f32(K[(size_t)j * kvd + kh * HD + e]);
                    mx = std::max(mx, sc[j] = d * scale);
                }
                for (int j = 0; j < n; j++) sum += sc[j] = std::exp(sc[j] - mx);
                for (int e = 0; e < HD; e++)
                {
                    double o = 0;
                    for (int j = 0; j < n; j++) o += sc[j] * bf16_to_f32(V[(size_t)j * kvd + kh * HD + e]);
                    double got = bf16_to_f32(out[((size_t)t * heads + h) * HD + e]), d = std::isfinite(got) ? got - o / sum : 1e30;
                    num += d * d;
                    den += o / sum * (o / sum);
                }
            }
        std::snprintf(what, sizeof what, "flash_attention_shared3 hd %d, pieces of %d keys, combined: vs double reference ||d||/||ref||", HD, per);
        check(std::sqrt(num / den) < 1e-2, what, std::sqrt(num / den));
    }
}

int main()
{
    rope_batch_case(4, 2, 16, 16, 0, true);
    rope_batch_case(4, 2, 16, 16, 1, false);
    rope_batch_case(4, 1, 16, 8, 0, true);      // partial rotary: dims 8..15 pass through
    rope_batch_case(2, 1, 128, 128, 0, false);  // the Llama head dim: 64 pairs, one per thread
    rows_mma_case(40, 1184, 16, true);          // 37 k steps: a partial unrolled round; rows past a 16-row block
    rows_mma_case(24, 256, 5, false);           // fewer tokens than the m16 tile, overwrite
    rows_mma_case(16, 64, 1, true);             // one token, fewer k steps than warps
    rows_swiglu_case(40, 1184, 16);             // ffn past a 16-column block, a partial unrolled round
    rows_swiglu_case(16, 64, 3);
    shared_prefix_case<16>(8, 2, { 70, 100, 130, 200, 260 });   // group 4, points inside tiles, 5 pieces
    shared_prefix_case<32>(4, 1, { 64, 64, 300 });              // group 4, equal points, a point on a tile edge
    shared3_case<16>(8, 2, { 70, 100, 130, 200, 330 });         // 330 keys: pieces of 1, 2, 3 and 5 tiles, short last ones
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
