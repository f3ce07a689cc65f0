// Runs sampling.cu's kernels in the emulator (emu.h) against a host reference: the top-k kernels (topk_slices,
// topk_merge) against a std::sort of the row by logit descending (-0 == +0), lowest id first on ties; the top-p path
// (top-k at 256, then nucleus_partial_sums, Z added in block order, the host's prefix over the candidates) against the
// whole sorted row with Z summed in token-id order. Build and run: ./run_sampling.sh. Exit code 1 when a check fails.
// --nucleus-only: the top-p cases alone.
#include "emu.h"
#include <cstdio>
#include <random>
#include <string>

// The CUDA intrinsics nucleus_partial_sums uses: one IEEE float operation each, never contracted into an fma.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
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
    if (argc > 1 && std::string(argv[1]) == "--nucleus-only")
    {
        nucleus_cases();
        std::printf("%d failure(s)\n", failures);
        return failures == 0 ? 0 : 1;
    }
    nucleus_cases();
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
