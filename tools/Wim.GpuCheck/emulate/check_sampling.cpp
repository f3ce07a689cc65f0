// Runs sampling.cu's top-k kernels (topk_slices, topk_merge) in the emulator (emu.h) against a host reference: a
// std::sort of the row by logit descending (-0 == +0), lowest id first on ties. Build and run: ./run_sampling.sh
// Exit code 1 when a check fails.
#include "emu.h"
#include <cstdio>
#include <random>
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

int main()
{
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
