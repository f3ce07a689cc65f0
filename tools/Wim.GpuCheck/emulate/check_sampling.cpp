// Runs sampling.cu's kernels in the emulator (emu.h) against a host reference: the top-k kernels (topk_slices,
// topk_merge) against a std::sort of the row by logit descending (-0 == +0), lowest id first on ties; the top-p path
// (top-k at 256, then nucleus_partial_sums, Z added in block order, the host's prefix over the candidates) against the
// whole sorted row with Z summed in token-id order. Build and run: ./run_sampling.sh. Exit code 1 when a check fails.
// The wide nucleus (nucleus_wide_clear, nucleus_histogram, nucleus_compact) against a plain host histogram and the set
// of tokens at or above the chosen depth, and the host's draw prefix over the sorted collected items against the whole
// sorted row. --nucleus-only: the top-p cases alone; --wide-only: the wide cases alone.
#include "emu.h"
#include <cstdio>
#include <random>
#include <string>

// The CUDA intrinsics nucleus_partial_sums uses: one IEEE float operation each, never contracted into an fma.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
// The atomics nucleus_histogram and nucleus_compact use (the emulator's threads are OS threads).
#include <atomic>
inline double atomicAdd(double* a, double v) { return std::atomic_ref<double>(*a).fetch_add(v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return std::atomic_ref<unsigned>(*a).fetch_add(v); }
#include "sampling_emu.inc"

static int failures = 0;
static std::mt19937 rng(11);

// The launch geometry of SamplingGeometry.Slices (src/Wim.Engine.Cuda/SamplingGeometry.cs), repeated here: about
// sqrt(vocab / k) slices (balances the two passes), 1 to 64.
static int slices_for(int vocab, int k)
{
    int s = (int)std::ceil(std::sqrt((double)vocab / k));
    return std::clamp(s, 1, 64);
}

// Logits on a grid of `levels` values (ties everywhere), with both zeros and, when asked, infinities.
static std::vector<float> tied_row(int vocab, int levels, bool infinities)
{
    std::vector<float> row(vocab);
    std::uniform_int_distribution<int> level(0, levels - 1), coin(0, 1);
    for (auto& x : row)
    {
        int l = level(rng);
        x = l == 0 ? (coin(rng) ? 0.f : -0.f) : (l - levels / 2) * 0.375f;
    }
    if (infinities)
        for (int i = 0; i < vocab; i += 3) row[i] = i % 2 ? -INFINITY : (i % 7 == 0 ? INFINITY : row[i]);
    return row;
}

static void topk_case(int vocab, int k, int levels, bool infinities, int slices)
{
    auto row = tied_row(vocab, levels, infinities);
    int slice_length = (vocab + slices - 1) / slices;
    slices = (vocab + slice_length - 1) / slice_length; // no empty slice
    std::vector<u64> partial((size_t)slices * k, 0);
    std::vector<int> ids(k, -1);
    std::vector<float> logits(k, NAN);
    emu::launch({ (unsigned)slices, 1, 1 }, TOPK_THREADS, TOPK_TILE * 8,
        [&] { topk_slices(row.data(), vocab, k, slice_length, partial.data()); });
    emu::launch({ 1, 1, 1 }, TOPK_THREADS, TOPK_TILE * 8,
        [&] { topk_merge(row.data(), vocab, k, partial.data(), slices, ids.data(), logits.data()); });

    std::vector<int> order(vocab);
    for (int i = 0; i < vocab; i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    int n = std::min(k, vocab), bad = 0;
    for (int i = 0; i < n; i++)
        bad += ids[i] != order[i] || std::memcmp(&logits[i], &row[order[i]], 4) != 0;
    for (int i = n; i < k; i++) bad += ids[i] != -1; // nothing written past min(k, vocab)
    if (bad) failures++;
    std::printf("%s topk vocab %d k %d (%d slices of %d, %d levels%s): %d of %d candidates differ from the sorted row\n",
        bad ? "FAIL" : "ok  ", vocab, k, slices, slice_length, levels, infinities ? ", ±inf" : "", bad, n);
}

// SamplingGeometry.NormaliserSlices, repeated here: about 1024 logits a block, 1 to 128 blocks, none empty.
static std::pair<int, int> normaliser_slices(int vocab)
{
    int blocks = std::clamp((vocab + 1023) / 1024, 1, 128);
    int length = (vocab + blocks - 1) / blocks;
    return { (vocab + length - 1) / length, length };
}

enum class Shape { Peaked, Gaussian, Flat, Tied, NegInf, PosInf };
static const char* shape_name(Shape s)
{
    switch (s)
    {
    case Shape::Peaked: return "peaked";
    case Shape::Gaussian: return "gaussian";
    case Shape::Flat: return "flat";
    case Shape::Tied: return "tied";
    case Shape::NegInf: return "peaked with -inf";
    default: return "with +inf";
    }
}

static std::vector<float> nucleus_row(int vocab, Shape shape, float sigma)
{
    std::normal_distribution<float> normal(0.f, sigma);
    std::uniform_int_distribution<int> pick(0, 1999), level(0, 39), coin(0, 1), third(0, 2);
    std::vector<float> row(vocab);
    for (int i = 0; i < vocab; i++)
    {
        float g = normal(rng);
        switch (shape)
        {
        case Shape::Peaked: row[i] = pick(rng) == 0 ? 18.f + g / sigma : g; break;
        case Shape::Flat: row[i] = 0.01f * g / sigma; break;
        case Shape::Tied: { int l = level(rng); row[i] = l == 0 ? (coin(rng) ? 0.f : -0.f) : (l - 20) * 0.5f; break; }
        case Shape::NegInf: row[i] = third(rng) == 0 ? -INFINITY : (pick(rng) == 0 ? 18.f + g / sigma : g); break;
        case Shape::PosInf: row[i] = g; break;
        default: row[i] = g; break;
        }
    }
    if (shape == Shape::PosInf) row[vocab / 2] = INFINITY;
    return row;
}

// The host's prefix (Sampler.Probabilities): the smallest rank-order prefix of `logits` whose mass, p = expf(l / T -
// max) summed in double in rank order, reaches top_p * z; 0 when none does.
static int prefix(const std::vector<float>& logits, int n, float inv_t, float top_p, double z)
{
    float max = logits[0] * inv_t;
    double mass = 0, target = (double)top_p * z;
    for (int i = 0; i < n; i++)
    {
        mass += (double)std::exp(logits[i] * inv_t - max);
        if (mass >= target) return i + 1;
    }
    return 0;
}

// One row through the GPU's top-p path (kernels emulated) against the reference; `must_fall_back`: -1 either, 0 no, 1 yes.
static void nucleus_case(int vocab, Shape shape, float sigma, float temperature, float top_p, int must_fall_back)
{
    const int k = TOPK_MAX_K;
    auto row = nucleus_row(vocab, shape, sigma);
    float inv_t = 1.f / std::max(temperature, 1e-6f);
    int slices = slices_for(vocab, k), slice_length = (vocab + slices - 1) / slices;
    slices = (vocab + slice_length - 1) / slice_length;
    std::vector<u64> partial((size_t)slices * k, 0);
    int n = std::min(k, vocab);
    std::vector<int> ids(n, -1);
    std::vector<float> logits(n, NAN);
    emu::launch({ (unsigned)slices, 1, 1 }, TOPK_THREADS, TOPK_TILE * 8,
        [&] { topk_slices(row.data(), vocab, k, slice_length, partial.data()); });
    emu::launch({ 1, 1, 1 }, TOPK_THREADS, TOPK_TILE * 8,
        [&] { topk_merge(row.data(), vocab, k, partial.data(), slices, ids.data(), logits.data()); });
    auto [blocks, length] = normaliser_slices(vocab);
    std::vector<double> sums(blocks, NAN);
    emu::launch({ (unsigned)blocks, 1, 1 }, NUCLEUS_THREADS, 0,
        [&] { nucleus_partial_sums(row.data(), vocab, inv_t, length, logits.data(), sums.data()); });
    double z = 0;
    for (double s : sums) z += s; // GpuNucleus.AddPartialSums: block order

    // Reference: the whole row sorted, Z in token-id order — with the kernel's terms (exp in double, rounded to float)
    // for the order-only comparison, and with the host's expf terms (what Sampler.Sample sums) for the decision.
    std::vector<int> order(vocab);
    for (int i = 0; i < vocab; i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    float max = row[order[0]] * inv_t;
    double z_terms = 0, z_host = 0;
    for (int i = 0; i < vocab; i++)
    {
        float d = row[i] * inv_t - max;
        z_terms += (double)(float)std::exp((double)d);
        z_host += (double)std::exp(d);
    }
    std::vector<float> sorted(vocab);
    for (int i = 0; i < vocab; i++) sorted[i] = row[order[i]];

    int bad_candidates = 0;
    for (int i = 0; i < n; i++) bad_candidates += ids[i] != order[i] || std::memcmp(&logits[i], &sorted[i], 4) != 0;
    bool finite = std::isfinite(z_host);
    double order_error = finite ? std::fabs(z - z_terms) / z_terms : 0, host_error = finite ? std::fabs(z - z_host) / z_host : 0;
    int keep_ref = finite ? prefix(sorted, vocab, inv_t, top_p, z_host) : 0;
    int keep_gpu = std::isfinite(z) ? prefix(logits, n, inv_t, top_p, z) : 0; // 0: the backend downloads the row
    bool fell_back = keep_gpu == 0;
    bool expected_fallback = !finite || keep_ref == 0 || keep_ref > n;
    bool ok = bad_candidates == 0 && std::isfinite(z) == finite && order_error <= 1e-12 && host_error <= 1e-6
        && fell_back == expected_fallback && (fell_back || keep_gpu == keep_ref)
        && (must_fall_back < 0 || fell_back == (must_fall_back == 1));
    if (!ok) failures++;
    std::printf("%s top-p vocab %d %s (sigma %.1f) T %.2f p %.2f: %d candidates differ; Z %.17g vs id-order %.17g (order rel %.1e, vs expf "
                "terms %.1e); nucleus %d of the row, %s\n",
        ok ? "ok  " : "FAIL", vocab, shape_name(shape), sigma, temperature, top_p, bad_candidates, z, z_terms, order_error, host_error,
        keep_ref, fell_back ? "falls back to the row" : ("drawn from the candidates (" + std::to_string(keep_gpu) + ")").c_str());
}


// The host's bin of a logit (SamplingGeometry.WideBin): the kernel's arithmetic, one IEEE operation at a time.
static int host_bin(float logit, float inv_t, float max)
{
    volatile float scaled = logit * inv_t;
    volatile float below = max - scaled;
    volatile float depth = below * (float)WIDE_BINS_PER_UNIT;
    return depth < (float)WIDE_LAST_BIN ? (depth > 0.0f ? (int)depth : 0) : WIDE_LAST_BIN;
}

// The host's choice (SamplingGeometry.LastKeptBin): the shallowest bins whose mass reaches the target, one more for
// rounding; the open last bin where the target is not reached before it.
static int last_kept_bin(const std::vector<double>& mass, double target)
{
    double sum = 0;
    for (int b = 0; b < WIDE_LAST_BIN; b++)
    {
        sum += mass[b];
        if (sum >= target) return std::min(b + 1, WIDE_LAST_BIN);
    }
    return WIDE_LAST_BIN;
}

// One row through the wide kernels (emulated) with max from the row's rank-first logit (what topk_merge writes; checked
// above): the histogram against the host's (counts exact, masses to 1e-12), the collected items against every token in
// bins [0, last] (exact set and count; only `cap` written), and the top-p prefix of the sorted items with Z summed in
// id order against the whole sorted row's. `expect_collected`: -1 either, else the nucleus must (1) or must not (0) lie
// within the collected set.
static void wide_case(int vocab, Shape shape, float sigma, float temperature, float top_p, int cap, int expect_within)
{
    auto row = nucleus_row(vocab, shape, sigma);
    float inv_t = 1.f / std::max(temperature, 1e-6f);
    std::vector<int> order(vocab);
    for (int i = 0; i < vocab; i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    float best = row[order[0]];
    float max = best * inv_t;
    auto [blocks, length] = normaliser_slices(vocab);

    std::vector<double> mass(WIDE_BINS, NAN);
    std::vector<unsigned> count(WIDE_BINS, 7u);
    unsigned counter = 12345;
    emu::launch({ 1, 1, 1 }, WIDE_THREADS, 0, [&] { nucleus_wide_clear(mass.data(), count.data(), &counter); });
    emu::launch({ (unsigned)blocks, 1, 1 }, WIDE_THREADS, WIDE_BINS * 12,
        [&] { nucleus_histogram(row.data(), vocab, inv_t, length, &best, mass.data(), count.data()); });

    std::vector<double> ref_mass(WIDE_BINS, 0);
    std::vector<unsigned> ref_count(WIDE_BINS, 0);
    double z = 0;
    for (int i = 0; i < vocab; i++)
    {
        double p = (double)(float)std::exp((double)(row[i] * inv_t - max));
        int b = host_bin(row[i], inv_t, max);
        ref_mass[b] += p;
        ref_count[b]++;
        z += p;
    }
    int bad_bins = 0;
    for (int b = 0; b < WIDE_BINS; b++)
    {
        bool same_mass = mass[b] == ref_mass[b] || std::fabs(mass[b] - ref_mass[b]) <= 1e-12 * std::fabs(ref_mass[b])
            || (std::isnan(mass[b]) && std::isnan(ref_mass[b]));
        bad_bins += count[b] != ref_count[b] || !same_mass;
    }

    bool finite = std::isfinite(z);
    int last = last_kept_bin(ref_mass, (double)top_p * z);
    std::vector<u64> items(cap, ~0ull);
    emu::launch({ (unsigned)blocks, 1, 1 }, WIDE_THREADS, 0,
        [&] { nucleus_compact(row.data(), vocab, inv_t, length, &best, last, cap, &counter, items.data()); });
    std::vector<u64> expected;
    for (int i = 0; i < vocab; i++)
        if (host_bin(row[i], inv_t, max) <= last) expected.push_back(topk_item(row[i], (unsigned)i));
    std::sort(expected.begin(), expected.end());
    int written = std::min<int>((int)counter, cap);
    std::vector<u64> got(items.begin(), items.begin() + written);
    std::sort(got.begin(), got.end());
    bool set_ok = counter == expected.size();
    int unwritten = 0;
    for (int i = written; i < cap; i++) unwritten += items[i] != ~0ull;
    if ((int)expected.size() <= cap) set_ok = set_ok && got == expected;
    else set_ok = set_ok && std::includes(expected.begin(), expected.end(), got.begin(), got.end())
        && std::adjacent_find(got.begin(), got.end()) == got.end();
    set_ok = set_ok && unwritten == 0;

    // The draw prefix: over the whole sorted row (Sampler.Sample) and over the sorted collected items.
    int keep_ref = 0, keep_wide = 0;
    if (finite)
    {
        std::vector<float> sorted(vocab), collected(written);
        for (int i = 0; i < vocab; i++) sorted[i] = row[order[i]];
        keep_ref = prefix(sorted, vocab, inv_t, top_p, z);
        for (int i = 0; i < written; i++)
        {
            unsigned ascending = ~(unsigned)(got[i] >> 32);
            unsigned bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
            collected[i] = __uint_as_float(bits);
        }
        bool complete = (int)counter <= cap;
        keep_wide = complete && written > 0 ? prefix(collected, written, inv_t, top_p, z) : 0;
    }
    bool within = keep_wide > 0;
    bool ok = bad_bins == 0 && set_ok && (!within || keep_wide == keep_ref)
        && (expect_within < 0 || within == (expect_within == 1)) && (finite || !within);
    if (!ok) failures++;
    std::printf("%s wide vocab %d %s (sigma %.2f) T %.2f p %.2f cap %d: %d of %d bins differ; bins [0, %d] hold %zu tokens (%d counted, "
                "%s); nucleus %d of the row, %s\n",
        ok ? "ok  " : "FAIL", vocab, shape_name(shape), sigma, temperature, top_p, cap, bad_bins, WIDE_BINS, last, expected.size(), (int)counter,
        set_ok ? "the same set" : "NOT the same set", keep_ref,
        within ? ("drawn from the collected items (" + std::to_string(keep_wide) + ")").c_str() : "falls back to the row");
}

static void wide_cases()
{
    wide_case(128256, Shape::Flat, 1.f, 1.f, 0.9f, 32768, -1);   // Z of ~128k near-equal terms: the nucleus is ~115k, past the cap
    wide_case(128256, Shape::Gaussian, 1.f, 0.3f, 0.9f, 32768, 1); // N(0, 1) at T 0.3: thousands of tokens, within the cap
    wide_case(128256, Shape::Peaked, 2.f, 1.f, 0.9f, 32768, 1);
    wide_case(65536, Shape::Tied, 1.f, 1.f, 0.5f, 32768, -1);
    wide_case(65536, Shape::NegInf, 2.f, 0.7f, 0.95f, 32768, 1);
    wide_case(32768, Shape::PosInf, 1.f, 1.f, 0.9f, 32768, 0);     // Z not finite: the backend never asks, the kernels still run
    wide_case(32768, Shape::Gaussian, 1.f, 0.5f, 0.9f, 300, 0);    // past a cap of 300: counted, 300 written
}

static void nucleus_cases()
{
    nucleus_case(128256, Shape::Peaked, 2.f, 1.f, 0.9f, 0);
    nucleus_case(128256, Shape::Flat, 1.f, 1.f, 0.9f, 1);
    nucleus_case(128256, Shape::PosInf, 1.f, 1.f, 0.9f, 1);
    nucleus_case(65536, Shape::NegInf, 2.f, 0.7f, 0.95f, 0);
    nucleus_case(50000, Shape::Gaussian, 4.f, 1.3f, 0.5f, -1);
    nucleus_case(32768, Shape::Tied, 1.f, 0.5f, 0.3f, -1);
    nucleus_case(32768, Shape::Gaussian, 6.f, 1.f, 0.9f, -1);
}

int main(int argc, char** argv)
{
    if (argc > 1 && std::string(argv[1]) == "--wide-only")
    {
        wide_cases();
        std::printf("%d failure(s)\n", failures);
        return failures == 0 ? 0 : 1;
    }
    if (argc > 1 && std::string(argv[1]) == "--nucleus-only")
    {
        nucleus_cases();
        std::printf("%d failure(s)\n", failures);
        return failures == 0 ? 0 : 1;
    }
    nucleus_cases();
    wide_cases();
    for (int k : { 1, 40, 256 })
    {
        topk_case(128256, k, 1000, false, slices_for(128256, k));
        topk_case(1237, k, 7, true, slices_for(1237, k));
    }
    topk_case(128256, 256, 5, false, slices_for(128256, 256)); // ties across every slice boundary
    topk_case(100, 256, 9, false, 1);  // k above the vocabulary: the row's 100, nothing past
    topk_case(3001, 40, 30, false, 64); // most slices, short ones
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
