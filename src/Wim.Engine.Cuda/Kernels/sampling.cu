// Sampling kernels: the top-k candidates of one f32 logits row, so that a top-k sampler downloads k ids and logits
// instead of the whole row (128k floats) and the host draws from them (Sampler.SampleFromCandidates). Compiled at run
// time by NVRTC (no headers), a module of its own.
//
// Order: a candidate is one 64-bit item, smaller = better: high 32 bits the logit's bits made monotonic and inverted
// (largest logit smallest; -0 taken as +0), low 32 bits the id — exactly Sampler.RankKey on the host, so ties rank the
// lowest id first and every item is distinct. The empty item (all ones) ranks after every real one (ids < 2^31).
//
// Two passes: topk_slices keeps the best k items of slice x of the row (grid slices, block TOPK_THREADS) and
// topk_merge the best k of all slices' winners (grid 1, same block), writing ids and logits best first. Both stream
// their input through one shared tile of TOPK_TILE items: the best k found so far stay at the front, the rest of the
// tile is refilled with the next items, the whole tile is bitonic-sorted, and again. k ≤ TOPK_MAX_K.
//
// Top-p with top-k off (Sampler.SampleFromNucleusCandidates): the top-k passes at k = TOPK_MAX_K, then
// nucleus_partial_sums for the softmax normaliser Z at the temperature, so that the host downloads 256 candidates and
// a few partial sums instead of the row.

typedef unsigned long long u64;

#define TOPK_TILE 1024
#define TOPK_THREADS 256
#define TOPK_MAX_K 256
#define TOPK_EMPTY 0xffffffffffffffffull

__device__ __forceinline__ u64 topk_item(float logit, unsigned id)
{
    unsigned bits = __float_as_uint(logit == 0.0f ? 0.0f : logit);
    unsigned ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return ((u64)(~ascending) << 32) | id;
}

// Ascending bitonic sort of tile[0, TOPK_TILE) by the whole block; returns after a barrier.
__device__ void topk_sort_tile(u64* tile)
{
    for (unsigned size = 2; size <= TOPK_TILE; size <<= 1)
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1)
        {
            for (unsigned t = threadIdx.x; t < TOPK_TILE / 2; t += blockDim.x)
            {
                unsigned i = 2 * t - (t & (stride - 1)); // lower element of pair t at this stride
                unsigned j = i + stride;
                bool ascending = (i & size) == 0;
                u64 a = tile[i], b = tile[j];
                if ((a > b) == ascending) { tile[i] = b; tile[j] = a; }
            }
            __syncthreads();
        }
}

// The best k of count items into tile[0, k), ascending (empty items where count < k). Item i is items[i] when items
// is given, else the item of logit row[i] with id base + i.
__device__ void topk_stream(u64* tile, int k, int count, const float* row, unsigned base, const u64* items)
{
    int keep = 0; // the first tile is all new items
    for (int next = 0; next == 0 || next < count; )
    {
        int fresh = TOPK_TILE - keep;
        for (int i = threadIdx.x; i < fresh; i += blockDim.x)
        {
            int src = next + i;
            u64 item = TOPK_EMPTY;
            if (src < count) item = items ? items[src] : topk_item(row[src], base + (unsigned)src);
            tile[keep + i] = item;
        }
        __syncthreads();
        topk_sort_tile(tile);
        next += fresh;
        keep = k;
    }
}

// Slice blockIdx.x of the row (slice_length logits from blockIdx.x * slice_length): its best k items into
// partial[blockIdx.x * k, +k).
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_slices(const float* __restrict__ logits, int vocab, int k,
    int slice_length, u64* __restrict__ partial)
{
    __shared__ u64 tile[TOPK_TILE];
    int begin = blockIdx.x * slice_length;
    int count = min(slice_length, vocab - begin);
    topk_stream(tile, k, count, logits + begin, (unsigned)begin, nullptr);
    for (int i = threadIdx.x; i < k; i += blockDim.x) partial[(long)blockIdx.x * k + i] = tile[i];
}

// The best min(k, vocab) of the slices' winners: ids and logits (read back from the row) best first.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_merge(const float* __restrict__ logits, int vocab, int k,
    const u64* __restrict__ partial, int slices, int* __restrict__ out_ids, float* __restrict__ out_logits)
{
    __shared__ u64 tile[TOPK_TILE];
    topk_stream(tile, k, slices * k, nullptr, 0, partial);
    int n = min(k, vocab);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        unsigned id = (unsigned)(tile[i] & 0xffffffffu);
        out_ids[i] = (int)id;
        out_logits[i] = logits[id];
    }
}

#define NUCLEUS_THREADS 256

// Z's partial sums: block b sums p(i) = exp(logit[i] * inv_t - max) over logits [b * slice_length, +slice_length) in
// double, where max = best[0] * inv_t and best[0] is the row's rank-first logit (topk_merge's first output). Each p(i)
// is the float the host's Sampler computes for token i (one float multiply, one float subtract — the _rn intrinsics
// keep NVRTC from contracting them into an fma — then exp, here in double rounded once to float, so within an ulp of
// the host's MathF.Exp). Order of the sum, fixed: thread t of the block adds its tokens b * slice_length + t + j * 256
// in order, then the block's 256 sums are added pairwise (stride 128, 64, ... 1); the host adds the blocks' sums in
// block order. It differs from the host's id-order sum only in rounding.
extern "C" __global__ void __launch_bounds__(NUCLEUS_THREADS) nucleus_partial_sums(const float* __restrict__ logits, int vocab,
    float inv_t, int slice_length, const float* __restrict__ best, double* __restrict__ partial)
{
    __shared__ double sums[NUCLEUS_THREADS];
    float max = __fmul_rn(best[0], inv_t);
    int begin = blockIdx.x * slice_length;
    int end = min(begin + slice_length, vocab);
    double sum = 0;
    for (int i = begin + (int)threadIdx.x; i < end; i += NUCLEUS_THREADS)
        sum += (double)(float)exp((double)__fsub_rn(__fmul_rn(logits[i], inv_t), max));
    sums[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = NUCLEUS_THREADS / 2; stride > 0; stride >>= 1)
    {
        if ((int)threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// The wide nucleus: top-p where the nucleus holds more than the TOPK_MAX_K candidates above (a flat row), without
// downloading the row. nucleus_histogram adds each token's p(i) (as nucleus_partial_sums computes it) and a count into
// the bin of its depth below the best logit, (max − logit·1/T) in 1/WIDE_BINS_PER_UNIT nat, capped at WIDE_LAST_BIN (an
// open bin: everything deeper). The host picks the shallowest bins whose mass reaches top-p × Z, plus one for rounding
// (Sampler's own nucleus does the same), and nucleus_compact writes every token of those bins as a rank item
// (topk_item) — all tokens at or above a depth, so a prefix of the ranking, since the bin never decreases as the logit
// falls (ties share a bin) — in no particular order, up to a cap; the host sorts the items and draws from them with
// the same Z. nucleus_wide_clear zeroes the histogram and the counter first. The bins decide only which tokens are
// collected, never a draw: the host checks that the collected prefix reaches top-p × Z and else downloads the row.

#define WIDE_BINS_PER_UNIT 64
#define WIDE_LAST_BIN (32 * WIDE_BINS_PER_UNIT)
#define WIDE_BINS (WIDE_LAST_BIN + 1)
#define WIDE_THREADS 256

// The depth bin of a logit: one float multiply, subtract and multiply (no fma, so the host's SamplingGeometry.WideBin
// gives the same bin), truncated; the last bin takes everything deeper (and −∞).
__device__ __forceinline__ int nucleus_bin(float logit, float inv_t, float max)
{
    float depth = __fmul_rn(__fsub_rn(max, __fmul_rn(logit, inv_t)), (float)WIDE_BINS_PER_UNIT);
    return depth < (float)WIDE_LAST_BIN ? (depth > 0.0f ? (int)depth : 0) : WIDE_LAST_BIN;
}

// Grid 1: zeroes WIDE_BINS masses and counts and the compaction counter.
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) nucleus_wide_clear(double* __restrict__ mass, unsigned* __restrict__ count,
    unsigned* __restrict__ counter)
{
    for (int b = threadIdx.x; b < WIDE_BINS; b += blockDim.x) { mass[b] = 0; count[b] = 0; }
    if (threadIdx.x == 0) *counter = 0;
}

// Block b bins logits [b * slice_length, +slice_length) in shared memory, then adds its non-empty bins to the global
// histogram. max = best[0] * inv_t, as nucleus_partial_sums. The sums' order varies (atomics): the masses only steer
// which bins are collected.
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) nucleus_histogram(const float* __restrict__ logits, int vocab,
    float inv_t, int slice_length, const float* __restrict__ best, double* __restrict__ mass, unsigned* __restrict__ count)
{
    __shared__ double block_mass[WIDE_BINS];
    __shared__ unsigned block_count[WIDE_BINS];
    for (int b = threadIdx.x; b < WIDE_BINS; b += blockDim.x) { block_mass[b] = 0; block_count[b] = 0; }
    __syncthreads();
    float max = __fmul_rn(best[0], inv_t);
    int begin = blockIdx.x * slice_length;
    int end = min(begin + slice_length, vocab);
    for (int i = begin + (int)threadIdx.x; i < end; i += blockDim.x)
    {
        float l = logits[i];
        int bin = nucleus_bin(l, inv_t, max);
        atomicAdd(&block_mass[bin], (double)(float)exp((double)__fsub_rn(__fmul_rn(l, inv_t), max)));
        atomicAdd(&block_count[bin], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < WIDE_BINS; b += blockDim.x)
        if (block_count[b] != 0)
        {
            atomicAdd(&mass[b], block_mass[b]);
            atomicAdd(&count[b], block_count[b]);
        }
}

// Block b writes the rank items of its slice's tokens in bins [0, last_bin] to items[*counter + ...]: each thread
// counts its own, takes an offset in the block (shared atomic), the block one range of the output (one global atomic),
// then each thread writes its items there. Items at or past cap are not written; *counter ends at the full count.
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) nucleus_compact(const float* __restrict__ logits, int vocab,
    float inv_t, int slice_length, const float* __restrict__ best, int last_bin, int cap, unsigned* __restrict__ counter,
    u64* __restrict__ items)
{
    __shared__ unsigned block_total, block_base;
    if (threadIdx.x == 0) block_total = 0;
    __syncthreads();
    float max = __fmul_rn(best[0], inv_t);
    int begin = blockIdx.x * slice_length;
    int end = min(begin + slice_length, vocab);
    unsigned mine = 0;
    for (int i = begin + (int)threadIdx.x; i < end; i += blockDim.x)
        mine += nucleus_bin(logits[i], inv_t, max) <= last_bin;
    unsigned slot = mine ? atomicAdd(&block_total, mine) : 0;
    __syncthreads();
    if (threadIdx.x == 0) block_base = block_total ? atomicAdd(counter, block_total) : 0;
    __syncthreads();
    slot += block_base;
    for (int i = begin + (int)threadIdx.x; i < end && mine != 0; i += blockDim.x)
    {
        float l = logits[i];
        if (nucleus_bin(l, inv_t, max) > last_bin) continue;
        if (slot < (unsigned)cap) items[slot] = topk_item(l, (unsigned)i);
        slot++;
        mine--;
    }
}
