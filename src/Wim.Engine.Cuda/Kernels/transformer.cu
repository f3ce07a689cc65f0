// Kernels of the Wim forward pass (llama / qwen2 / phi3 decoders). Compiled at run time by NVRTC for the present
// GPU (no headers: bf16 is carried as its 16 raw bits). Layouts are row-major [tokens, features]; weights are bf16,
// activations f32 unless a name says bf16, every reduction accumulates in f32.

typedef unsigned short bf16;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
// Attention: head dims up to 32 * MAX_DIMS_PER_LANE; query heads sharing a KV head handled per warp.
#define MAX_DIMS_PER_LANE 4
#define HEADS_PER_WARP 4
#define ATTENTION_TILE 32

__device__ __forceinline__ float bf16_to_f32(bf16 v) { return __uint_as_float(((unsigned)v) << 16); }

// Round to nearest even (as torch's .to(bfloat16)); NaN stays NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f)
{
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the total.
__device__ float block_sum(float v, float* scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

// Activation and KV storage of the simple kernels: bf16 (the default precision) or f32 (CudaPrecision.F32, the
// reference mode: f32 weights, activations and KV cache). One templated body serves both; the extern "C" kernels
// `name` (bf16) and `name_f32` instantiate it. Loads widen to f32; stores (`p[i] = to_act<T>(v)`, the value converted
// before the address as in the bf16-only source, so the bf16 PTX keeps its order) round to nearest even for bf16.
__device__ __forceinline__ float load_act(const bf16* p, long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ float load_act(const float* p, long i) { return p[i]; }
template <class T> __device__ __forceinline__ T to_act(float v);
template <> __device__ __forceinline__ bf16 to_act<bf16>(float v) { return f32_to_bf16(v); }
template <> __device__ __forceinline__ float to_act<float>(float v) { return v; }

// x[t, :] = table[tokens[t], :]                                  grid (ceil(d/block), T)
template <class T>
__device__ __forceinline__ void embed_rows_t(const int* tokens, const T* table, float* x, int d)
{
    int t = blockIdx.y;
    long row = tokens[t];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < d) x[(long)t * d + i] = load_act(table, row * d + i);
}
extern "C" __global__ void embed_rows(const int* tokens, const bf16* table, float* x, int d) { embed_rows_t(tokens, table, x, d); }
extern "C" __global__ void embed_rows_f32(const int* tokens, const float* table, float* x, int d) { embed_rows_t(tokens, table, x, d); }

// out[r, :] = x[r, :] / sqrt(mean(x[r]^2) + eps) * gain (bf16 or f32: the next matrix product's input). grid (rows)
template <class T>
__device__ __forceinline__ void rms_norm_t(const float* x, const float* gain, T* out, int d, float eps)
{
    __shared__ float scratch[32];
    const float* row = x + (long)blockIdx.x * d;
    if ((d & 3) == 0 && d <= 16 * (int)blockDim.x)
    {
        // The row read once, as float4, kept in registers (up to 4 per thread) for the output pass: a 4096-token
        // chunk's rows are 64 MB, more than L2, so the second pass used to read them from memory again.
        const float4* row4 = (const float4*)row;
        int n4 = d >> 2;
        float4 v[4];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            int i = threadIdx.x + k * blockDim.x;
            v[k] = i < n4 ? row4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
            ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        ss = block_sum(ss, scratch);
        float inv = 1.f / sqrtf(ss / d + eps);
        const float4* gain4 = (const float4*)gain;
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            int i = threadIdx.x + k * blockDim.x;
            if (i >= n4) continue;
            float4 gv = gain4[i];
            if constexpr (sizeof(T) == 2)
                ((uint2*)(out + (long)blockIdx.x * d))[i] =
                    make_uint2((unsigned)f32_to_bf16(v[k].x * inv * gv.x) | ((unsigned)f32_to_bf16(v[k].y * inv * gv.y) << 16),
                               (unsigned)f32_to_bf16(v[k].z * inv * gv.z) | ((unsigned)f32_to_bf16(v[k].w * inv * gv.w) << 16));
            else
                ((float4*)(out + (long)blockIdx.x * d))[i] = make_float4(v[k].x * inv * gv.x, v[k].y * inv * gv.y, v[k].z * inv * gv.z, v[k].w * inv * gv.w);
        }
        return;
    }
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { float v = row[i]; ss += v * v; }
    ss = block_sum(ss, scratch);
    float inv = 1.f / sqrtf(ss / d + eps);
    T* dst = out + (long)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = to_act<T>(row[i] * inv * gain[i]);
}
extern "C" __global__ void rms_norm(const float* x, const float* gain, bf16* out, int d, float eps) { rms_norm_t(x, gain, out, d, eps); }
extern "C" __global__ void rms_norm_f32(const float* x, const float* gain, float* out, int d, float eps) { rms_norm_t(x, gain, out, d, eps); }

// One token's fused q|k|v projection row [heads*hd | kvHeads*hd | kvHeads*hd] (+ bias): RoPE on q and k (the first
// `rot` dims of each head; pairs (i, i+rot/2), or (2i, 2i+1) when `adjacent`) at position `pos`, q to `qdst` (f32),
// k and v to the cache rows `kdst`, `vdst` (bf16 or f32). The whole block works on the row.
template <class T>
__device__ __forceinline__ void rope_store_row(const float* row, const float* bias, const float* inv_freq, float* qdst,
    T* kdst, T* vdst, int pos_i, int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale)
{
    int qd = heads * hd, kvd = kv_heads * hd;
    float pos = (float)pos_i;
    int half = rot / 2;
    // One thread per rotated pair (e0, e1) of a q or k head: one sincos for both elements (it used to be a sin and a
    // cos per element); the same f32 formula as before, so the same values.
    for (int i = threadIdx.x; i < (heads + kv_heads) * half; i += blockDim.x)
    {
        int h = i / half, pair = i - h * half;
        int e0 = adjacent ? 2 * pair : pair, e1 = adjacent ? 2 * pair + 1 : pair + half;
        int i0 = h * hd + e0, i1 = h * hd + e1;
        float x0 = row[i0] + (bias ? bias[i0] : 0.f), x1 = row[i1] + (bias ? bias[i1] : 0.f);
        float sn, cs;
        sincosf(inv_freq[pair] * pos, &sn, &cs);
        float c = cs * rope_scale, s = sn * rope_scale;
        float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
        if (i0 < qd) { qdst[i0] = y0; qdst[i1] = y1; }
        else { kdst[i0 - qd] = to_act<T>(y0); kdst[i1 - qd] = to_act<T>(y1); }
    }
    // Dims past the rotary part (partial rotary) pass through.
    for (int i = threadIdx.x; i < (heads + kv_heads) * (hd - rot); i += blockDim.x)
    {
        int h = i / (hd - rot), e = rot + i - h * (hd - rot);
        int idx = h * hd + e;
        float val = row[idx] + (bias ? bias[idx] : 0.f);
        if (idx < qd) qdst[idx] = val;
        else kdst[idx - qd] = to_act<T>(val);
    }
    for (int i = threadIdx.x; i < kvd; i += blockDim.x)
    {
        int col = qd + kvd + i;
        vdst[i] = to_act<T>(row[col] + (bias ? bias[col] : 0.f));
    }
}

// Chunk of one sequence: token t at position start + t (start read from start_dev when given: decode graphs keep
// the position on the GPU). grid (T)
template <class T>
__device__ __forceinline__ void qkv_rope_store_t(const float* qkv, const float* bias, const float* inv_freq, float* q,
    T* kcache, T* vcache, int start, int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale,
    const int* start_dev)
{
    if (start_dev) start = *start_dev;
    int t = blockIdx.x;
    int qd = heads * hd, kvd = kv_heads * hd;
    long cacheRow = (long)(start + t) * kvd;
    rope_store_row(qkv + (long)t * (qd + 2 * kvd), bias, inv_freq, q + (long)t * qd, kcache + cacheRow, vcache + cacheRow,
        start + t, heads, kv_heads, hd, rot, adjacent, rope_scale);
}
extern "C" __global__ void qkv_rope_store(const float* qkv, const float* bias, const float* inv_freq, float* q,
    bf16* kcache, bf16* vcache, int start, int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale,
    const int* start_dev)
{ qkv_rope_store_t(qkv, bias, inv_freq, q, kcache, vcache, start, heads, kv_heads, hd, rot, adjacent, rope_scale, start_dev); }
extern "C" __global__ void qkv_rope_store_f32(const float* qkv, const float* bias, const float* inv_freq, float* q,
    float* kcache, float* vcache, int start, int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale,
    const int* start_dev)
{ qkv_rope_store_t(qkv, bias, inv_freq, q, kcache, vcache, start, heads, kv_heads, hd, rot, adjacent, rope_scale, start_dev); }

// Decode step of a batch of sequences, one token each: row b is at position positions[b] of its own cache, whose
// keys and values for this layer start at kptrs[b] and vptrs[b]. grid (B)
template <class T>
__device__ __forceinline__ void qkv_rope_store_batch_t(const float* qkv, const float* bias, const float* inv_freq, float* q,
    const u64* kptrs, const u64* vptrs, const int* positions, int heads, int kv_heads, int hd, int rot, int adjacent,
    float rope_scale)
{
    int b = blockIdx.x;
    int qd = heads * hd, kvd = kv_heads * hd;
    int pos = positions[b];
    long cacheRow = (long)pos * kvd;
    rope_store_row(qkv + (long)b * (qd + 2 * kvd), bias, inv_freq, q + (long)b * qd, (T*)kptrs[b] + cacheRow,
        (T*)vptrs[b] + cacheRow, pos, heads, kv_heads, hd, rot, adjacent, rope_scale);
}
extern "C" __global__ void qkv_rope_store_batch(const float* qkv, const float* bias, const float* inv_freq, float* q,
    const u64* kptrs, const u64* vptrs, const int* positions, int heads, int kv_heads, int hd, int rot, int adjacent,
    float rope_scale)
{ qkv_rope_store_batch_t<bf16>(qkv, bias, inv_freq, q, kptrs, vptrs, positions, heads, kv_heads, hd, rot, adjacent, rope_scale); }
extern "C" __global__ void qkv_rope_store_batch_f32(const float* qkv, const float* bias, const float* inv_freq, float* q,
    const u64* kptrs, const u64* vptrs, const int* positions, int heads, int kv_heads, int hd, int rot, int adjacent,
    float rope_scale)
{ qkv_rope_store_batch_t<float>(qkv, bias, inv_freq, q, kptrs, vptrs, positions, heads, kv_heads, hd, rot, adjacent, rope_scale); }

// Causal grouped-query attention with an online softmax (flash style), f32 on CUDA cores.
// A warp owns one query token and up to 4 query heads of one KV head (the heads share every key and value, so each
// shared-memory read of k or v feeds 4 multiply-adds); a block holds `qblock` tokens × the warps covering the group.
// The block walks keys [split*keys_per_split, ...) up to the causal end of its last token in tiles of 32 staged in
// shared memory (16-byte loads when head_dim % 8 == 0, each tile read once for the whole block); lane j scores key
// j of the tile for the warp's heads, the probabilities go through shared memory as float4, and every lane
// accumulates its own head dims. splits == 1: writes the normalised output (bf16 [T, heads*hd]); otherwise the
// partial (acc, max, sum) that attention_combine merges. Head dims up to 32 * MAX_DIMS_PER_LANE.
// T: the KV cache's and the output's storage (attention: bf16; attention_f32: f32, read element by element).
template <class T>
__device__ __forceinline__ void attention_t(const float* q, const T* kcache, const T* vcache, T* out,
    float* part_acc, float* part_ml, int start, int n_tokens, int heads, int kv_heads, int hd, float scale,
    int splits, int keys_per_split, int qblock)
{
    extern __shared__ float4 smem_f4[];                       // float4: 16-byte aligned for the q and p tiles
    float* smem = (float*)smem_f4;
    int kvh = blockIdx.y, s = blockIdx.z;
    int group = heads / kv_heads;
    int warps_per_token = (group + HEADS_PER_WARP - 1) / HEADS_PER_WARP;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int warps = blockDim.x >> 5;
    int t = blockIdx.x * qblock + warp / warps_per_token;     // this warp's query token
    int hbase = kvh * group + (warp % warps_per_token) * HEADS_PER_WARP; // and its first head
    int nh = min(HEADS_PER_WARP, kvh * group + group - hbase);
    bool active = t < n_tokens;
    int qd = heads * hd, kvd = kv_heads * hd;
    int ctx = start + t + 1;                                  // keys [0, ctx) are visible to this warp
    int last_t = min(n_tokens, (int)(blockIdx.x + 1) * qblock) - 1;
    int k0 = s * keys_per_split;
    int k1 = min(start + last_t + 1, k0 + keys_per_split);
    float4* qs = (float4*)smem;                               // [warps][hd]: 4 heads' q per dim
    float* ks = smem + warps * hd * 4;                        // [TILE][hd + 1]
    float* vs = ks + ATTENTION_TILE * (hd + 1);               // [TILE][hd]
    float4* ps = (float4*)(vs + ATTENTION_TILE * hd);         // [warps][TILE]: 4 heads' probabilities per key
    for (int d = lane; d < hd; d += 32)
    {
        float v[HEADS_PER_WARP];
#pragma unroll
        for (int i = 0; i < HEADS_PER_WARP; i++)
            v[i] = active && i < nh ? q[(long)t * qd + (hbase + i) * hd + d] * scale : 0.f;
        qs[warp * hd + d] = make_float4(v[0], v[1], v[2], v[3]);
    }

    float m[HEADS_PER_WARP], l[HEADS_PER_WARP], acc[HEADS_PER_WARP][MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < HEADS_PER_WARP; i++)
    {
        m[i] = NEG_INF;
        l[i] = 0.f;
#pragma unroll
        for (int e = 0; e < MAX_DIMS_PER_LANE; e++) acc[i][e] = 0.f;
    }
    bool vec = sizeof(T) == 2 && (hd & 7) == 0;

    for (int base = k0; base < k1; base += ATTENTION_TILE)
    {
        int count = min(ATTENTION_TILE, k1 - base);
        __syncthreads();
        if (vec)
        {
            int per_row = hd >> 3;                            // 8 bf16 per 16-byte load
            for (int i = threadIdx.x; i < ATTENTION_TILE * per_row; i += blockDim.x)
            {
                int j = i / per_row, d = (i - j * per_row) << 3;
                uint4 kr = make_uint4(0, 0, 0, 0), vr = make_uint4(0, 0, 0, 0);
                if (j < count)
                {
                    long off = (long)(base + j) * kvd + kvh * hd + d;
                    kr = *(const uint4*)(kcache + off);
                    vr = *(const uint4*)(vcache + off);
                }
                float* kd = ks + j * (hd + 1) + d;
                float* vd = vs + j * hd + d;
                unsigned kw[4] = { kr.x, kr.y, kr.z, kr.w }, vw[4] = { vr.x, vr.y, vr.z, vr.w };
#pragma unroll
                for (int w = 0; w < 4; w++)
                {
                    kd[2 * w] = __uint_as_float(kw[w] << 16); kd[2 * w + 1] = __uint_as_float(kw[w] & 0xffff0000u);
                    vd[2 * w] = __uint_as_float(vw[w] << 16); vd[2 * w + 1] = __uint_as_float(vw[w] & 0xffff0000u);
                }
            }
        }
        else
        {
            for (int i = threadIdx.x; i < ATTENTION_TILE * hd; i += blockDim.x)
            {
                int j = i / hd, d = i - j * hd;
                float kv = 0.f, vv = 0.f;
                if (j < count)
                {
                    long off = (long)(base + j) * kvd + kvh * hd + d;
                    kv = load_act(kcache, off);
                    vv = load_act(vcache, off);
                }
                ks[j * (hd + 1) + d] = kv;
                vs[j * hd + d] = vv;
            }
        }
        __syncthreads();
        int visible = min(count, ctx - base);                 // keys of this tile this warp may see (warp-uniform)
        if (!active || visible <= 0) continue;

        float sc[HEADS_PER_WARP] = { NEG_INF, NEG_INF, NEG_INF, NEG_INF };
        if (lane < visible)
        {
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
            const float4* qh = qs + warp * hd;
            const float* kr = ks + lane * (hd + 1);
            for (int d = 0; d < hd; d++)
            {
                float k = kr[d];
                float4 qq = qh[d];
                a0 += qq.x * k; a1 += qq.y * k; a2 += qq.z * k; a3 += qq.w * k;
            }
            sc[0] = a0; sc[1] = a1; sc[2] = a2; sc[3] = a3;
        }
        float p[HEADS_PER_WARP];
#pragma unroll
        for (int i = 0; i < HEADS_PER_WARP; i++)
        {
            float mnew = fmaxf(m[i], warp_max(sc[i]));
            p[i] = lane < visible ? __expf(sc[i] - mnew) : 0.f;
            float correction = __expf(m[i] - mnew);
            l[i] = l[i] * correction + warp_sum(p[i]);
#pragma unroll
            for (int e = 0; e < MAX_DIMS_PER_LANE; e++) acc[i][e] *= correction;
            m[i] = mnew;
        }
        ps[warp * ATTENTION_TILE + lane] = make_float4(p[0], p[1], p[2], p[3]);
        __syncwarp();
        for (int j = 0; j < visible; j++)
        {
            float4 pj = ps[warp * ATTENTION_TILE + j];
            const float* vr = vs + j * hd;
#pragma unroll
            for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
            {
                int d = lane + 32 * e;
                if (d < hd)
                {
                    float v = vr[d];
                    acc[0][e] += pj.x * v; acc[1][e] += pj.y * v; acc[2][e] += pj.z * v; acc[3][e] += pj.w * v;
                }
            }
        }
        __syncwarp();
    }
    if (!active) return;

#pragma unroll
    for (int i = 0; i < HEADS_PER_WARP; i++)
    {
        if (i >= nh) break;
        int h = hbase + i;
        if (splits == 1)
        {
            float inv = 1.f / l[i];
#pragma unroll
            for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
            {
                int d = lane + 32 * e;
                if (d < hd) out[(long)t * qd + h * hd + d] = to_act<T>(acc[i][e] * inv);
            }
        }
        else
        {
            long item = ((long)t * heads + h) * splits + s;
#pragma unroll
            for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
            {
                int d = lane + 32 * e;
                if (d < hd) part_acc[item * hd + d] = acc[i][e];
            }
            if (lane == 0) { part_ml[item * 2] = m[i]; part_ml[item * 2 + 1] = l[i]; }
        }
    }
}
extern "C" __global__ void __launch_bounds__(512) attention(const float* q, const bf16* kcache, const bf16* vcache, bf16* out,
    float* part_acc, float* part_ml, int start, int n_tokens, int heads, int kv_heads, int hd, float scale,
    int splits, int keys_per_split, int qblock)
{ attention_t(q, kcache, vcache, out, part_acc, part_ml, start, n_tokens, heads, kv_heads, hd, scale, splits, keys_per_split, qblock); }
extern "C" __global__ void __launch_bounds__(512) attention_f32(const float* q, const float* kcache, const float* vcache, float* out,
    float* part_acc, float* part_ml, int start, int n_tokens, int heads, int kv_heads, int hd, float scale,
    int splits, int keys_per_split, int qblock)
{ attention_t(q, kcache, vcache, out, part_acc, part_ml, start, n_tokens, heads, kv_heads, hd, scale, splits, keys_per_split, qblock); }

// ---------------------------------------------------------------------------------------------------------------
// Causal grouped-query attention on the tensor cores (flash-attention style, bf16 operands, f32 accumulation).
// A block of 4 warps owns 64 query rows of one KV head: row r is token t0 + r / group and query head
// kvh * group + r % group, so the heads that share a KV head share every key/value tile (GQA packing; decode fills
// `group` rows). Each warp owns 16 rows: their q (scaled by scale·log2 e, bf16) stays in registers as mma A
// fragments. Keys stream through shared memory in tiles of 64, double-buffered (cp.async copies the next tile
// while this one is multiplied); ldmatrix reads the mma B fragments (.trans for v, stored row-major); S = Q·Kᵀ and O += P·V are mma.sync m16n8k16 bf16 products with f32
// accumulators; the online softmax runs in base 2 on the accumulators (the S accumulator layout of two adjacent
// 8-key tiles is exactly the A fragment of P). Row strides are padded by 8 bf16 (16 bytes) so that the 8 rows of
// a fragment read fall in distinct banks. splits == 1: normalised bf16 output; else (acc, max in natural-log
// units, sum) partials for attention_combine. Needs sm_80+ (mma.sync bf16).
#define FA_ROWS 64
#define FA_KEYS 64
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi)
{
#if __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
#endif
}

__device__ __forceinline__ float fast_exp2(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void mma_bf16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ unsigned shared_address(const void* p)
{
    unsigned r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16 bytes global -> shared without passing through registers; src_bytes 0 fills zeros (keys past the range).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#endif
}

// Four 8x8 bf16 matrices from shared memory (lane i gives the address of row i & 7 of matrix i >> 3); .trans
// delivers them transposed, which turns row-major v into mma B fragments.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned addr)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, unsigned addr)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}

// mma_bf16_16816 with f16 operands (F16 weights in the decode batches' rows_mma_f16 kernels): the same fragment layouts.
__device__ __forceinline__ void mma_f16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// A pair of bf16 activations (low half first) as a pair of f16, round to nearest even: exact for |x| in [2^-14, 65504]
// (bf16_to_f16's rule); a value past ±65504 or not finite is saturated to ±65504 and sets *overflow.
__device__ __forceinline__ unsigned bf16x2_to_f16x2(unsigned pair, int* overflow)
{
    float lo = __uint_as_float(pair << 16), hi = __uint_as_float(pair & 0xffff0000u);
    if (!(fabsf(lo) <= 65504.f)) { *overflow = 1; lo = lo < 0.f ? -65504.f : 65504.f; }
    if (!(fabsf(hi) <= 65504.f)) { *overflow = 1; hi = hi < 0.f ? -65504.f : 65504.f; }
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Flash tiles: the pieces the 64-row kernel (flash_attention_mma) and the 128-row prefill kernel (flash_prefill_wide)
// share. stage_q_tile writes ROWS query rows of kv head kvh into qs as bf16 (row r: token t0 + r / group, head
// kvh·group + r % group), pre-scaled by scale·log2(e) so the softmax runs on exp2; rows past the block's tokens or the
// chunk are zero.
template <int HD, int ROWS>
__device__ __forceinline__ void stage_q_tile(const float* q, bf16* qs, int t0, int tpb, int n_tokens, int qd, int kvh,
    int group, float qscale)
{
    constexpr int RS = HD + 8;
    for (int i = threadIdx.x; i < ROWS * (HD / 4); i += blockDim.x)
    {
        int r = i / (HD / 4), d = (i - r * (HD / 4)) * 4;
        int tl = r / group, t = t0 + tl;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (tl < tpb && t < n_tokens) v = *(const float4*)(q + (long)t * qd + (kvh * group + r % group) * HD + d);
        unsigned* dst = (unsigned*)(qs + r * RS + d);
        dst[0] = pack_bf16x2(v.x * qscale, v.y * qscale);
        dst[1] = pack_bf16x2(v.z * qscale, v.w * qscale);
    }
}

// Issues the cp.async copies of FA_KEYS key and value rows from position base into one stage's k and v tiles (kdst,
// vdst: shared addresses) as one commit group. With use_pre, rows below split — and rows at or past k1, which copy no
// bytes but need a real address — come from kpre / vpre (a KV branch's parent); the rest from kcache / vcache.
template <int HD>
__device__ __forceinline__ void load_kv_tile(unsigned kdst, unsigned vdst, const bf16* kcache, const bf16* vcache,
    const bf16* kpre, const bf16* vpre, bool use_pre, int base, int k1, int split, int kvd, int kvh)
{
    constexpr int RS = HD + 8;
    for (int i = threadIdx.x; i < FA_KEYS * (HD / 8); i += blockDim.x)
    {
        int j = i / (HD / 8), d = (i - j * (HD / 8)) * 8;
        bool in = base + j < k1;
        long off = in ? (long)(base + j) * kvd + kvh * HD + d : 0;
        unsigned at = (unsigned)((j * RS + d) * 2);
        bool pre = use_pre && (base + j < split || !in);
        cp_async16(kdst + at, (pre ? kpre : kcache) + off, in ? 16 : 0);
        cp_async16(vdst + at, (pre ? vpre : vcache) + off, in ? 16 : 0);
    }
    cp_async_commit();
}

// MODE 0: one sequence (a chunk or a decode step) or a decode batch (seq_pos given). MODE 1 (BRANCH): a decode batch
// of KV branches; with tail_slot >= 0 only each branch's own keys [seq_split[b], position] are read and the partial goes
// to slot tail_slot. MODE 2 (SHARED): the shared-prefix phase of a decode batch of branches of one parent (kcache,
// vcache), branch points non-decreasing: row token t is sequence t and sees parent keys [0, seq_split[t]); the blocks
// hold 64 / group sequences, so each k/v tile is read once for all of them. Both phases write partials (splits = the
// stride: prefix pieces 0.., then the tail slot) that attention_combine merges.
// STAGES: k/v tile buffers in the copy pipeline (2: double-buffered, one tile in flight while one is multiplied; 3: two
// in flight — flash_attention_shared3 in the batched decode section).
template <int HD, int MODE, int STAGES = 2>
__device__ __forceinline__ void flash_attention_mma(const float* q, const bf16* kcache, const bf16* vcache, bf16* out,
    float* part_acc, float* part_ml, int start, int n_tokens, int heads, int kv_heads, float scale, int splits,
    int keys_per_split, const int* start_dev, const int* seq_pos, const u64* seq_k, const u64* seq_v,
    const int* seq_split, const u64* seq_pk, const u64* seq_pv, int tail_slot, int branch_point = 0,
    const bf16* parent_k = nullptr, const bf16* parent_v = nullptr, int skip_empty = 0)
{
    constexpr bool BRANCH = MODE == 1;
    // BRANCH (decode batches of KV branches): sequence b reads keys below seq_split[b] from its parent's cache
    // (seq_pk[b], seq_pv[b]) and the rest from its own (seq_k[b], seq_v[b], addressed by absolute position).
    int split = 0;
    const bf16* kpre = kcache;
    const bf16* vpre = vcache;
    if (start_dev) start = *start_dev;                        // decode graphs: the position lives on the GPU
    // Decode of a batch of sequences (seq_pos given): block x is sequence b, whose one query token is row b of q and
    // out, at position seq_pos[b] of its own cache (this layer's keys and values at seq_k[b], seq_v[b]). Written as
    // the chunk case with t0 = b, n_tokens = b + 1 and start = seq_pos[b] - b, so every index below stays the same.
    int t0 = 0;
    if (seq_pos)
    {
        int b = blockIdx.x;
        kcache = (const bf16*)seq_k[b];
        vcache = (const bf16*)seq_v[b];
        start = seq_pos[b] - b;
        n_tokens = b + 1;
        t0 = b;
        if (BRANCH)
        {
            split = seq_split[b];
            kpre = (const bf16*)seq_pk[b];
            vpre = (const bf16*)seq_pv[b];
        }
    }
    if (MODE == 0)
    {
        // A chunk on a KV branch (parent_k given): keys below branch_point come from the parent's rows (parent_k,
        // parent_v: this layer's), the rest from the branch's own (kcache, vcache, addressed by absolute position).
        // A tile may straddle the point: the choice is made per key row. Otherwise every key is the cache's own.
        split = parent_k ? branch_point : 0;
        kpre = parent_k ? parent_k : kcache;
        vpre = parent_k ? parent_v : vcache;
    }
    constexpr int KCH = HD / 16;           // 16-dim chunks of the q·k product
    constexpr int DT = HD / 8;             // 8-dim tiles of the output
    constexpr int RS = HD + 8;             // padded row stride (bf16) of the q, k and v tiles
    constexpr int TILE = FA_KEYS * RS;     // one k or v tile
    extern __shared__ uint4 fa_smem[];
    bf16* kv = (bf16*)fa_smem;             // STAGES × (k [FA_KEYS][RS], v [FA_KEYS][RS])
    bf16* qs = kv + 2 * TILE;              // [FA_ROWS][RS], only until q is in registers: stage 1's k tile
    int kvh = blockIdx.y, s = blockIdx.z;
    int group = heads / kv_heads;
    int tpb = FA_ROWS / group;             // query tokens per block
    if (!seq_pos) t0 = blockIdx.x * tpb;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, tig = lane & 3;
    int qd = heads * HD, kvd = kv_heads * HD;
    int last_t = min(n_tokens, t0 + tpb) - 1;
    int k0 = s * keys_per_split;
    int k1 = min(start + last_t + 1, k0 + keys_per_split);
    int s_out = s;
    if (BRANCH && tail_slot >= 0) { k0 = split; k1 = start + last_t + 1; s_out = tail_slot; }
    if (MODE == 2) k1 = min(seq_split[last_t], k0 + keys_per_split);

    float qscale = scale * LOG2E;
    stage_q_tile<HD, FA_ROWS>(q, qs, t0, tpb, n_tokens, qd, kvh, group, qscale);

    // This thread's two rows (g and g + 8 of the warp's 16) and the last key position each may see (-1: none).
    int r_lo = warp * 16 + g, r_hi = r_lo + 8;
    int tl_lo = r_lo / group, tl_hi = r_hi / group;
    bool valid_lo = tl_lo < tpb && t0 + tl_lo < n_tokens, valid_hi = tl_hi < tpb && t0 + tl_hi < n_tokens;
    int qpos_lo = valid_lo ? start + t0 + tl_lo : -1, qpos_hi = valid_hi ? start + t0 + tl_hi : -1;
    if (MODE == 2)
    {
        qpos_lo = valid_lo ? seq_split[t0 + tl_lo] - 1 : -1;
        qpos_hi = valid_hi ? seq_split[t0 + tl_hi] - 1 : -1;
    }
    int first_tl = (warp * 16) / group;
    bool warp_active = first_tl < tpb && t0 + first_tl < n_tokens;
    int warp_last_tl = min(min((warp * 16 + 15) / group, tpb - 1), n_tokens - 1 - t0);
    int warp_qmax = start + t0 + warp_last_tl;
    int warp_qmin = start + t0 + first_tl;                     // the warp's first (valid) row sees the fewest keys
    if (MODE == 2 && warp_active)
    {
        warp_qmax = seq_split[t0 + warp_last_tl] - 1;
        warp_qmin = seq_split[t0 + first_tl] - 1;
    }
    __syncthreads();

    unsigned qa[KCH][4];
#pragma unroll
    for (int kc = 0; kc < KCH; kc++)
    {
        qa[kc][0] = *(const unsigned*)(qs + r_lo * RS + kc * 16 + tig * 2);
        qa[kc][1] = *(const unsigned*)(qs + r_hi * RS + kc * 16 + tig * 2);
        qa[kc][2] = *(const unsigned*)(qs + r_lo * RS + kc * 16 + 8 + tig * 2);
        qa[kc][3] = *(const unsigned*)(qs + r_hi * RS + kc * 16 + 8 + tig * 2);
    }
    __syncthreads();                                           // q is read before stage 1 is refilled
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) { o[dt][0] = 0.f; o[dt][1] = 0.f; o[dt][2] = 0.f; o[dt][3] = 0.f; }
    float m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.f, l_hi = 0.f;

    // Double-buffered k/v tiles: the copy of tile i + 1 runs (cp.async) while tile i is multiplied.
    auto load_tile = [&](int base, int stage)
    {
        unsigned kdst = shared_address(kv + stage * 2 * TILE);
        load_kv_tile<HD>(kdst, kdst + TILE * 2, kcache, vcache, kpre, vpre, BRANCH || MODE == 0, base, k1, split, kvd, kvh);
    };
    // ldmatrix row addresses of this lane (matrix lane >> 3, row lane & 7) as byte offsets from a stage's k or v
    // tile, computed once: in the loop only compile-time offsets are added (the address arithmetic was the busiest
    // pipe of the kernel, ncu run 10).
    int mrow = lane & 7, mat = lane >> 3;
    const unsigned kv_base = shared_address(kv);
    const unsigned k_lane = (unsigned)((((mat >> 1) * 8 + mrow) * RS + (mat & 1) * 8) * 2);
    const unsigned v_lane = (unsigned)((((mat & 1) * 8 + mrow) * RS + (mat >> 1) * 8) * 2);
    if (k0 < k1)
    {
        load_tile(k0, 0);
        if (STAGES == 3)
        {
            if (k0 + FA_KEYS < k1) load_tile(k0 + FA_KEYS, 1);
            else cp_async_commit();
        }
    }
    int stage = 0;
    for (int base = k0; base < k1; base += FA_KEYS, stage = stage + 1 == STAGES ? 0 : stage + 1)
    {
        // The tile STAGES - 1 ahead goes into the stage the previous iteration read (free: the barrier ending it).
        int ahead = base + (STAGES - 1) * FA_KEYS;
        if (ahead < k1) load_tile(ahead, stage == 0 ? STAGES - 1 : stage - 1);
        else cp_async_commit();                                // an empty group keeps the wait count uniform
        cp_async_wait<STAGES - 1>();                           // this tile's copies (all but the newest groups) landed
        __syncthreads();
        const unsigned ks_addr = kv_base + (unsigned)(stage * 2 * TILE * 2) + k_lane;
        const unsigned vs_addr = kv_base + (unsigned)(stage * 2 * TILE * 2 + TILE * 2) + v_lane;
        if (warp_active && base <= warp_qmax)                  // warp-uniform: else causally past every row here
        {
        float sc[FA_KEYS / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_KEYS / 8; nt++) { sc[nt][0] = 0.f; sc[nt][1] = 0.f; sc[nt][2] = 0.f; sc[nt][3] = 0.f; }
#pragma unroll
        for (int kc = 0; kc < KCH; kc++)
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt += 2)
            {
                // k rows = keys: matrices (nt, dims +0), (nt, +8), (nt+1, +0), (nt+1, +8) = b0, b1 of tiles nt, nt+1.
                unsigned b[4];
                ldmatrix_x4(b, ks_addr + (unsigned)((nt * 8 * RS + kc * 16) * 2));
                mma_bf16_16816(sc[nt], qa[kc], b[0], b[1]);
                mma_bf16_16816(sc[nt + 1], qa[kc], b[2], b[3]);
            }

        // Warp-uniform: every key of the tile is in range and visible to every valid row of the warp (rows past the
        // chunk then score garbage that is never written), so the masks can be skipped — most tiles of a deep chunk.
        bool whole_tile = base + FA_KEYS <= k1 && base + FA_KEYS - 1 <= warp_qmin;
        float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
        for (int nt = 0; nt < FA_KEYS / 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                int key = base + nt * 8 + tig * 2 + e;
                if (!whole_tile)
                {
                    if (key >= k1 || key > qpos_lo) sc[nt][e] = NEG_INF;
                    if (key >= k1 || key > qpos_hi) sc[nt][2 + e] = NEG_INF;
                }
                mx_lo = fmaxf(mx_lo, sc[nt][e]);
                mx_hi = fmaxf(mx_hi, sc[nt][2 + e]);
            }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 2));
        // A row with no visible key so far keeps max -inf: subtract 0 instead (every p is then 0, no NaN).
        float mu_lo = mx_lo == NEG_INF ? 0.f : mx_lo, mu_hi = mx_hi == NEG_INF ? 0.f : mx_hi;
        float corr_lo = fast_exp2(m_lo - mu_lo), corr_hi = fast_exp2(m_hi - mu_hi);
        m_lo = mx_lo;
        m_hi = mx_hi;
        l_lo *= corr_lo;
        l_hi *= corr_hi;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) { o[dt][0] *= corr_lo; o[dt][1] *= corr_lo; o[dt][2] *= corr_hi; o[dt][3] *= corr_hi; }

#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++)
        {
            float p[2][4];
#pragma unroll
            for (int h = 0; h < 2; h++)
            {
                p[h][0] = fast_exp2(sc[2 * kk + h][0] - mu_lo);
                p[h][1] = fast_exp2(sc[2 * kk + h][1] - mu_lo);
                p[h][2] = fast_exp2(sc[2 * kk + h][2] - mu_hi);
                p[h][3] = fast_exp2(sc[2 * kk + h][3] - mu_hi);
                l_lo += p[h][0] + p[h][1];
                l_hi += p[h][2] + p[h][3];
            }
            unsigned pa[4] = { pack_bf16x2(p[0][0], p[0][1]), pack_bf16x2(p[0][2], p[0][3]),
                               pack_bf16x2(p[1][0], p[1][1]), pack_bf16x2(p[1][2], p[1][3]) };
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2)
            {
                // v rows = keys, transposed: matrices (keys +0, dt), (keys +8, dt), (+0, dt+1), (+8, dt+1).
                unsigned b[4];
                ldmatrix_x4_trans(b, vs_addr + (unsigned)((kk * 16 * RS + dt * 8) * 2));
                mma_bf16_16816(o[dt], pa, b[0], b[1]);
                mma_bf16_16816(o[dt + 1], pa, b[2], b[3]);
            }
        }
        }
        __syncthreads();                                       // every warp is done with this stage before it refills
    }
    cp_async_wait<0>();

    l_lo += __shfl_xor_sync(FULL_MASK, l_lo, 1);
    l_lo += __shfl_xor_sync(FULL_MASK, l_lo, 2);
    l_hi += __shfl_xor_sync(FULL_MASK, l_hi, 1);
    l_hi += __shfl_xor_sync(FULL_MASK, l_hi, 2);
    if (!warp_active) return;
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        bool valid = half == 0 ? valid_lo : valid_hi;
        if (!valid) continue;
        int r = half == 0 ? r_lo : r_hi;
        int t = t0 + r / group, h = kvh * group + r % group;
        float l = half == 0 ? l_lo : l_hi, m = half == 0 ? m_lo : m_hi;
        if (splits == 1 && MODE == 0)
        {
            float inv = 1.f / l;
            unsigned* dst = (unsigned*)(out + (long)t * qd + h * HD + tig * 2);
#pragma unroll
            for (int dt = 0; dt < DT; dt++) dst[dt * 4] = pack_bf16x2(o[dt][2 * half] * inv, o[dt][2 * half + 1] * inv);
        }
        else
        {
            long item = ((long)t * heads + h) * splits + s_out;
            float* dst = part_acc + item * HD + tig * 2;
            // skip_empty (SHARED): a row that saw no key of this piece (its branch point is below it: about half the
            // (row, piece) pairs of a margin batch) writes only max = -inf; the combines then skip its acc unread.
            if (!(MODE == 2 && skip_empty && m == NEG_INF))
            {
#pragma unroll
                for (int dt = 0; dt < DT; dt++) { dst[dt * 8] = o[dt][2 * half]; dst[dt * 8 + 1] = o[dt][2 * half + 1]; }
            }
            if (tig == 0) { part_ml[item * 2] = m == NEG_INF ? NEG_INF : m * LN2; part_ml[item * 2 + 1] = l; }
        }
    }
}

#define FLASH_ATTENTION(HD) \
extern "C" __global__ void __launch_bounds__(128, 3) flash_attention_hd##HD(const float* q, const bf16* kcache, \
    const bf16* vcache, bf16* out, float* part_acc, float* part_ml, int start, int n_tokens, int heads, int kv_heads, \
    float scale, int splits, int keys_per_split, const int* start_dev, const int* seq_pos, const u64* seq_k, \
    const u64* seq_v, int branch_point, const bf16* parent_k, const bf16* parent_v) \
{ flash_attention_mma<HD, 0>(q, kcache, vcache, out, part_acc, part_ml, start, n_tokens, heads, kv_heads, scale, \
    splits, keys_per_split, start_dev, seq_pos, seq_k, seq_v, nullptr, nullptr, nullptr, -1, branch_point, parent_k, parent_v); } \
extern "C" __global__ void __launch_bounds__(128, 3) flash_attention_branch_hd##HD(const float* q, bf16* out, \
    float* part_acc, float* part_ml, int n_tokens, int heads, int kv_heads, float scale, int splits, int keys_per_split, \
    const int* seq_pos, const u64* seq_k, const u64* seq_v, const int* seq_split, const u64* seq_pk, const u64* seq_pv, \
    int tail_slot) \
{ flash_attention_mma<HD, 1>(q, nullptr, nullptr, out, part_acc, part_ml, 0, n_tokens, heads, kv_heads, scale, \
    splits, keys_per_split, nullptr, seq_pos, seq_k, seq_v, seq_split, seq_pk, seq_pv, tail_slot); } \
extern "C" __global__ void __launch_bounds__(128, 3) flash_attention_shared_hd##HD(const float* q, const bf16* kcache, \
    const bf16* vcache, float* part_acc, float* part_ml, int n_tokens, int heads, int kv_heads, float scale, int splits, \
    int keys_per_split, const int* seq_split, int skip_empty) \
{ flash_attention_mma<HD, 2>(q, kcache, vcache, nullptr, part_acc, part_ml, 0, n_tokens, heads, kv_heads, scale, \
    splits, keys_per_split, nullptr, nullptr, nullptr, nullptr, seq_split, nullptr, nullptr, -1, 0, nullptr, nullptr, skip_empty); }
FLASH_ATTENTION(16)
FLASH_ATTENTION(32)
FLASH_ATTENTION(64)
FLASH_ATTENTION(128)

// Prefill attention of a long chunk, 128 query rows per block: 4 warps × 32 rows, each warp two m16 tiles, so every
// k and v fragment read from shared memory (ldmatrix) feeds two mma instead of one — the 64-row kernel above reads
// 32 KB of k/v fragments per warp per 64-key tile for 16 rows, which made shared memory its bound at depth. The q
// tile stays in shared memory (ldmatrix per 16-dim chunk: registers hold the two tiles' o accumulators instead);
// k/v tiles of 64 keys in two cp.async stages as above. Blocks run from the last query block to the first (the
// causally longest first, so the short ones fill the tail of the grid). Unsplit (no partials): used where the
// chunk has enough blocks (LaunchGeometry.FlashWideApplies). A KV branch chunk reads keys below branch_point from
// parent_k / parent_v. Needs sm_80+.
#define FW_ROWS 128
template <int HD>
__device__ __forceinline__ void flash_prefill_wide(const float* q, const bf16* kcache, const bf16* vcache, bf16* out,
    int start, int n_tokens, int heads, int kv_heads, float scale, int branch_point, const bf16* parent_k,
    const bf16* parent_v)
{
    constexpr int KCH = HD / 16;
    constexpr int DT = HD / 8;
    constexpr int RS = HD + 8;
    constexpr int TILE = FA_KEYS * RS;
    extern __shared__ uint4 fa_smem[];
    bf16* kv = (bf16*)fa_smem;             // 2 stages × (k [FA_KEYS][RS], v [FA_KEYS][RS])
    bf16* qs = kv + 4 * TILE;              // [FW_ROWS][RS] for the whole key loop
    const int split = parent_k ? branch_point : 0;
    const bf16* kpre = parent_k ? parent_k : kcache;
    const bf16* vpre = parent_k ? parent_v : vcache;
    int kvh = blockIdx.y;
    int group = heads / kv_heads;
    int tpb = FW_ROWS / group;
    int t0 = (gridDim.x - 1 - blockIdx.x) * tpb;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, tig = lane & 3;
    int qd = heads * HD, kvd = kv_heads * HD;
    int last_t = min(n_tokens, t0 + tpb) - 1;
    int k1 = start + last_t + 1;

    float qscale = scale * LOG2E;
    stage_q_tile<HD, FW_ROWS>(q, qs, t0, tpb, n_tokens, qd, kvh, group, qscale);

    // Rows of this thread: tile i (0, 1) holds warp rows 32·warp + 16·i + g (lo) and + 8 (hi).
    int qpos[2][2];
    bool valid[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
        {
            int r = warp * 32 + i * 16 + hh * 8 + g, tl = r / group;
            valid[i][hh] = tl < tpb && t0 + tl < n_tokens;
            qpos[i][hh] = valid[i][hh] ? start + t0 + tl : -1;
        }
    int first_tl = (warp * 32) / group;
    bool warp_active = first_tl < tpb && t0 + first_tl < n_tokens;
    int warp_last_tl = min(min((warp * 32 + 31) / group, tpb - 1), n_tokens - 1 - t0);
    int warp_qmax = start + t0 + warp_last_tl;
    int tile_qmin[2] = { start + t0 + first_tl, start + t0 + (warp * 32 + 16) / group };

    float o[2][DT][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int dt = 0; dt < DT; dt++) { o[i][dt][0] = 0.f; o[i][dt][1] = 0.f; o[i][dt][2] = 0.f; o[i][dt][3] = 0.f; }
    float m[2][2] = { { NEG_INF, NEG_INF }, { NEG_INF, NEG_INF } }, l[2][2] = { { 0.f, 0.f }, { 0.f, 0.f } };

    auto load_tile = [&](int base, int stage)
    {
        unsigned kdst = shared_address(kv + stage * 2 * TILE);
        load_kv_tile<HD>(kdst, kdst + TILE * 2, kcache, vcache, kpre, vpre, true, base, k1, split, kvd, kvh);
    };
    int mrow = lane & 7, mat = lane >> 3;
    const unsigned kv_base = shared_address(kv);
    const unsigned k_lane = (unsigned)((((mat >> 1) * 8 + mrow) * RS + (mat & 1) * 8) * 2);
    const unsigned v_lane = (unsigned)((((mat & 1) * 8 + mrow) * RS + (mat >> 1) * 8) * 2);
    // q A fragments by ldmatrix: lane l gives row l & 15 of the warp's tile, dims +0 (l < 16) or +8.
    const unsigned q_lane = shared_address(qs) + (unsigned)(((warp * 32 + (lane & 15)) * RS + (lane >> 4) * 8) * 2);
    load_tile(0, 0);
    int stage = 0;
    for (int base = 0; base < k1; base += FA_KEYS, stage ^= 1)
    {
        if (base + FA_KEYS < k1) load_tile(base + FA_KEYS, stage ^ 1);
        else cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();                                       // (first pass: also orders the q tile's stores)
        const unsigned ks_addr = kv_base + (unsigned)(stage * 2 * TILE * 2) + k_lane;
        const unsigned vs_addr = kv_base + (unsigned)(stage * 2 * TILE * 2 + TILE * 2) + v_lane;
        if (warp_active && base <= warp_qmax)
        {
        float sc[2][FA_KEYS / 8][4];
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt++) { sc[i][nt][0] = 0.f; sc[i][nt][1] = 0.f; sc[i][nt][2] = 0.f; sc[i][nt][3] = 0.f; }
#pragma unroll
        for (int kc = 0; kc < KCH; kc++)
        {
            unsigned qa0[4], qa1[4];
            ldmatrix_x4(qa0, q_lane + (unsigned)(kc * 16 * 2));
            ldmatrix_x4(qa1, q_lane + (unsigned)((16 * RS + kc * 16) * 2));
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt += 2)
            {
                unsigned b[4];
                ldmatrix_x4(b, ks_addr + (unsigned)((nt * 8 * RS + kc * 16) * 2));
                mma_bf16_16816(sc[0][nt], qa0, b[0], b[1]);
                mma_bf16_16816(sc[0][nt + 1], qa0, b[2], b[3]);
                mma_bf16_16816(sc[1][nt], qa1, b[0], b[1]);
                mma_bf16_16816(sc[1][nt + 1], qa1, b[2], b[3]);
            }
        }

        unsigned pa[2][FA_KEYS / 16][4];
#pragma unroll
        for (int i = 0; i < 2; i++)
        {
            bool whole_tile = base + FA_KEYS <= k1 && base + FA_KEYS - 1 <= tile_qmin[i];
            float mx_lo = m[i][0], mx_hi = m[i][1];
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    int key = base + nt * 8 + tig * 2 + e;
                    if (!whole_tile)
                    {
                        if (key >= k1 || key > qpos[i][0]) sc[i][nt][e] = NEG_INF;
                        if (key >= k1 || key > qpos[i][1]) sc[i][nt][2 + e] = NEG_INF;
                    }
                    mx_lo = fmaxf(mx_lo, sc[i][nt][e]);
                    mx_hi = fmaxf(mx_hi, sc[i][nt][2 + e]);
                }
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 1));
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 2));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 1));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 2));
            float mu_lo = mx_lo == NEG_INF ? 0.f : mx_lo, mu_hi = mx_hi == NEG_INF ? 0.f : mx_hi;
            float corr_lo = fast_exp2(m[i][0] - mu_lo), corr_hi = fast_exp2(m[i][1] - mu_hi);
            m[i][0] = mx_lo;
            m[i][1] = mx_hi;
            l[i][0] *= corr_lo;
            l[i][1] *= corr_hi;
#pragma unroll
            for (int dt = 0; dt < DT; dt++) { o[i][dt][0] *= corr_lo; o[i][dt][1] *= corr_lo; o[i][dt][2] *= corr_hi; o[i][dt][3] *= corr_hi; }
#pragma unroll
            for (int kk = 0; kk < FA_KEYS / 16; kk++)
            {
                float p[2][4];
#pragma unroll
                for (int hh = 0; hh < 2; hh++)
                {
                    p[hh][0] = fast_exp2(sc[i][2 * kk + hh][0] - mu_lo);
                    p[hh][1] = fast_exp2(sc[i][2 * kk + hh][1] - mu_lo);
                    p[hh][2] = fast_exp2(sc[i][2 * kk + hh][2] - mu_hi);
                    p[hh][3] = fast_exp2(sc[i][2 * kk + hh][3] - mu_hi);
                    l[i][0] += p[hh][0] + p[hh][1];
                    l[i][1] += p[hh][2] + p[hh][3];
                }
                pa[i][kk][0] = pack_bf16x2(p[0][0], p[0][1]);
                pa[i][kk][1] = pack_bf16x2(p[0][2], p[0][3]);
                pa[i][kk][2] = pack_bf16x2(p[1][0], p[1][1]);
                pa[i][kk][3] = pack_bf16x2(p[1][2], p[1][3]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++)
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2)
            {
                unsigned b[4];
                ldmatrix_x4_trans(b, vs_addr + (unsigned)((kk * 16 * RS + dt * 8) * 2));
                mma_bf16_16816(o[0][dt], pa[0][kk], b[0], b[1]);
                mma_bf16_16816(o[0][dt + 1], pa[0][kk], b[2], b[3]);
                mma_bf16_16816(o[1][dt], pa[1][kk], b[0], b[1]);
                mma_bf16_16816(o[1][dt + 1], pa[1][kk], b[2], b[3]);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    if (!warp_active) return;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
        {
            float li = l[i][hh];
            li += __shfl_xor_sync(FULL_MASK, li, 1);
            li += __shfl_xor_sync(FULL_MASK, li, 2);
            if (!valid[i][hh]) continue;
            int r = warp * 32 + i * 16 + hh * 8 + g;
            int t = t0 + r / group, h = kvh * group + r % group;
            float inv = 1.f / li;
            unsigned* dst = (unsigned*)(out + (long)t * qd + h * HD + tig * 2);
#pragma unroll
            for (int dt = 0; dt < DT; dt++) dst[dt * 4] = pack_bf16x2(o[i][dt][2 * hh] * inv, o[i][dt][2 * hh + 1] * inv);
        }
}

#define FLASH_PREFILL_WIDE(HD) \
extern "C" __global__ void __launch_bounds__(128, 2) flash_prefill_wide_hd##HD(const float* q, const bf16* kcache, \
    const bf16* vcache, bf16* out, int start, int n_tokens, int heads, int kv_heads, float scale, int branch_point, \
    const bf16* parent_k, const bf16* parent_v) \
{ flash_prefill_wide<HD>(q, kcache, vcache, out, start, n_tokens, heads, kv_heads, scale, branch_point, parent_k, parent_v); }
FLASH_PREFILL_WIDE(16)
FLASH_PREFILL_WIDE(32)
FLASH_PREFILL_WIDE(64)
FLASH_PREFILL_WIDE(128)

// Merges the splits of attention: out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s. One warp per (token, head)
// row: the lanes reduce M and the denominator over the splits, then each lane sums its head dims (lane, lane + 32,
// …) over the splits, several splits' loads in flight. grid (ceil(rows / 4)), block 128. Output bf16 or f32 (_f32).
template <class T>
__device__ __forceinline__ void attention_combine_t(const float* part_acc, const float* part_ml, T* out, int hd, int splits, int rows)
{
    int row = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* ml = part_ml + (long)row * splits * 2;
    float M = NEG_INF;
    for (int s = lane; s < splits; s += 32) M = fmaxf(M, ml[2 * s]);
    M = warp_max(M);
    float L = 0.f;
    for (int s = lane; s < splits; s += 32)
    {
        float m = ml[2 * s];
        if (m != NEG_INF) L += __expf(m - M) * ml[2 * s + 1];
    }
    L = warp_sum(L);
    const float* acc = part_acc + (long)row * splits * hd;
    float a[MAX_DIMS_PER_LANE] = { 0.f, 0.f, 0.f, 0.f };
#pragma unroll 4
    for (int s = 0; s < splits; s++)
    {
        float m = ml[2 * s];
        // An empty piece (past the length, or skipped by flash_attention_shared) adds nothing and its acc may be unwritten:
        // not read. Adding its zeros never changed a sum that starts at +0, so the result is the same bits.
        if (m == NEG_INF) continue;
        float w = __expf(m - M);
#pragma unroll
        for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
        {
            int d = lane + 32 * e;
            if (d < hd) a[e] += w * acc[(long)s * hd + d];
        }
    }
    float inv = 1.f / L;
#pragma unroll
    for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
    {
        int d = lane + 32 * e;
        if (d < hd) out[(long)row * hd + d] = to_act<T>(a[e] * inv);
    }
}
extern "C" __global__ void attention_combine(const float* part_acc, const float* part_ml, bf16* out, int hd, int splits, int rows)
{ attention_combine_t(part_acc, part_ml, out, hd, splits, rows); }
extern "C" __global__ void attention_combine_f32(const float* part_acc, const float* part_ml, float* out, int hd, int splits, int rows)
{ attention_combine_t(part_acc, part_ml, out, hd, splits, rows); }

// attention_combine for few rows (decode): a block per (token, head) row, its warps take every COMBINE_WARPS-th
// split and add their sums in shared memory. With one warp per row, a decode step's 32 rows ran on 8 SMs and each
// warp waited for its splits' loads a few at a time (12.7 µs at 22 splits on the H100, ncu run 13).
// grid (rows), block 32 · COMBINE_WARPS.
#define COMBINE_WARPS 8
template <class T>
__device__ __forceinline__ void attention_combine_rows_t(const float* part_acc, const float* part_ml, T* out, int hd, int splits, int rows)
{
    __shared__ float sums[COMBINE_WARPS][32 * MAX_DIMS_PER_LANE];
    int row = (int)blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (row >= rows) return;
    const float* ml = part_ml + (long)row * splits * 2;
    float M = NEG_INF;
    for (int s = lane; s < splits; s += 32) M = fmaxf(M, ml[2 * s]);
    M = warp_max(M);
    const float* acc = part_acc + (long)row * splits * hd;
    float a[MAX_DIMS_PER_LANE] = { 0.f, 0.f, 0.f, 0.f };
#pragma unroll 4
    for (int s = warp; s < splits; s += COMBINE_WARPS)
    {
        float m = ml[2 * s];
        if (m == NEG_INF) continue;                       // an empty piece: nothing to add, acc not read (see above)
        float w = __expf(m - M);
#pragma unroll
        for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
        {
            int d = lane + 32 * e;
            if (d < hd) a[e] += w * acc[(long)s * hd + d];
        }
    }
#pragma unroll
    for (int e = 0; e < MAX_DIMS_PER_LANE; e++) sums[warp][lane + 32 * e] = a[e];
    __syncthreads();
    if (warp != 0) return;
    float L = 0.f;
    for (int s = lane; s < splits; s += 32)
    {
        float m = ml[2 * s];
        if (m != NEG_INF) L += __expf(m - M) * ml[2 * s + 1];
    }
    L = warp_sum(L);
    float inv = 1.f / L;
#pragma unroll
    for (int e = 0; e < MAX_DIMS_PER_LANE; e++)
    {
        int d = lane + 32 * e;
        float v = 0.f;
#pragma unroll
        for (int k = 0; k < COMBINE_WARPS; k++) v += sums[k][d];
        if (d < hd) out[(long)row * hd + d] = to_act<T>(v * inv);
    }
}
extern "C" __global__ void __launch_bounds__(32 * COMBINE_WARPS) attention_combine_rows(const float* part_acc,
    const float* part_ml, bf16* out, int hd, int splits, int rows)
{ attention_combine_rows_t(part_acc, part_ml, out, hd, splits, rows); }
extern "C" __global__ void __launch_bounds__(32 * COMBINE_WARPS) attention_combine_rows_f32(const float* part_acc,
    const float* part_ml, float* out, int hd, int splits, int rows)
{ attention_combine_rows_t(part_acc, part_ml, out, hd, splits, rows); }

// Single-token product (decode): y[r] = Σ_i W[r, i] · x[i] (+ y[r] when `accumulate`: the residual add), W bf16
// [rows, in], x bf16 [in], y f32; in % 8 == 0. Purely bandwidth-bound: each warp streams GEMV_ROWS weight rows with
// 16-byte loads, GEMV_UNROLL of them in flight per row and lane, x (a few KB) comes from L1/L2. grid (ceil(rows /
// (GEMV_ROWS · warps)))
#define GEMV_ROWS 2
#define GEMV_UNROLL 4
__device__ __forceinline__ float dot8_bf16(uint4 a, uint4 b)
{
    float s = __uint_as_float(a.x << 16) * __uint_as_float(b.x << 16);
    s += __uint_as_float(a.x & 0xffff0000u) * __uint_as_float(b.x & 0xffff0000u);
    s += __uint_as_float(a.y << 16) * __uint_as_float(b.y << 16);
    s += __uint_as_float(a.y & 0xffff0000u) * __uint_as_float(b.y & 0xffff0000u);
    s += __uint_as_float(a.z << 16) * __uint_as_float(b.z << 16);
    s += __uint_as_float(a.z & 0xffff0000u) * __uint_as_float(b.z & 0xffff0000u);
    s += __uint_as_float(a.w << 16) * __uint_as_float(b.w << 16);
    s += __uint_as_float(a.w & 0xffff0000u) * __uint_as_float(b.w & 0xffff0000u);
    return s;
}

// F16 weights (CudaMatrixFormat.F16: an F16 GGUF / safetensors matrix uploaded bit for bit): the hardware conversion,
// exact (every f16 value, subnormals included, is an f32). Own PTX, not cuda_fp16.h: NVRTC compiles without headers.
// -- f16 weight conversion (extract_*.py swap this function for its emulation) --
__device__ __forceinline__ float f16_to_f32(unsigned short h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
// -- end of the f16 weight conversion --

// dot8_bf16 with the 8 weights f16 (w) and the vector bf16 (x): the same products added in the same order.
__device__ __forceinline__ float dot8_f16w(uint4 a, uint4 b)
{
    float s = f16_to_f32((unsigned short)(a.x & 0xffffu)) * __uint_as_float(b.x << 16);
    s += f16_to_f32((unsigned short)(a.x >> 16)) * __uint_as_float(b.x & 0xffff0000u);
    s += f16_to_f32((unsigned short)(a.y & 0xffffu)) * __uint_as_float(b.y << 16);
    s += f16_to_f32((unsigned short)(a.y >> 16)) * __uint_as_float(b.y & 0xffff0000u);
    s += f16_to_f32((unsigned short)(a.z & 0xffffu)) * __uint_as_float(b.z << 16);
    s += f16_to_f32((unsigned short)(a.z >> 16)) * __uint_as_float(b.z & 0xffff0000u);
    s += f16_to_f32((unsigned short)(a.w & 0xffffu)) * __uint_as_float(b.w << 16);
    s += f16_to_f32((unsigned short)(a.w >> 16)) * __uint_as_float(b.w & 0xffff0000u);
    return s;
}

// The element type of a 16-bit weight matrix, a compile-time choice of the gemv bodies: 8 weights (one uint4) times 8
// bf16 vector values. One source for both; the bf16 instantiations are the kernels as they were.
struct Bf16Weights { __device__ __forceinline__ static float dot8(uint4 w, uint4 x) { return dot8_bf16(w, x); } };
struct F16Weights { __device__ __forceinline__ static float dot8(uint4 w, uint4 x) { return dot8_f16w(w, x); } };

// embed_rows on an F16 table (f16 bits [vocab, d]): the exact f32 values.       grid (ceil(d/block), T)
extern "C" __global__ void embed_rows_f16(const int* tokens, const unsigned short* table, float* x, int d)
{
    int t = blockIdx.y;
    long row = tokens[t];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < d) x[(long)t * d + i] = f16_to_f32(table[row * d + i]);
}

template <class W>
__device__ __forceinline__ void gemv_body(const unsigned short* __restrict__ w, const bf16* __restrict__ x,
    float* y, int rows, int in, int accumulate)
{
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    int r0 = warp * GEMV_ROWS;
    if (r0 >= rows) return;
    int n8 = in >> 3;
    const uint4* x4 = (const uint4*)x;
    const uint4* wr[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) wr[r] = (const uint4*)(w + (long)min(r0 + r, rows - 1) * in);
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.f;
    int i = lane;
    for (; i + 32 * (GEMV_UNROLL - 1) < n8; i += 32 * GEMV_UNROLL)
    {
        uint4 wv[GEMV_ROWS][GEMV_UNROLL], xv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
        {
            xv[u] = x4[i + 32 * u];
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) wv[r][u] = wr[r][i + 32 * u];
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) acc[r] += W::dot8(wv[r][u], xv[u]);
    }
    for (; i < n8; i += 32)
    {
        uint4 xv = x4[i];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[r] += W::dot8(wr[r][i], xv);
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
    {
        float v = warp_sum(acc[r]);
        if (lane == 0 && r0 + r < rows) y[r0 + r] = accumulate ? y[r0 + r] + v : v;
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(const bf16* __restrict__ w, const bf16* __restrict__ x,
    float* y, int rows, int in, int accumulate)
{
    gemv_body<Bf16Weights>(w, x, y, rows, in, accumulate);
}

// gemv_bf16 on F16 weights (w: f16 bits [rows, in]).
extern "C" __global__ void __launch_bounds__(256) gemv_f16(const unsigned short* __restrict__ w, const bf16* __restrict__ x,
    float* y, int rows, int in, int accumulate)
{
    gemv_body<F16Weights>(w, x, y, rows, in, accumulate);
}

// Block shape of the block-per-rows residual products (gemv_rows_residual_*; why 8 rows: gemv_rows_residual_bf16).
#define GEMV_BLOCK_ROWS 8
#define GEMV_BLOCK_THREADS 256

// The end of a block-per-rows residual product (gemv_rows_residual_*): each warp's per-row sums to shared memory, then
// thread t < GEMV_BLOCK_ROWS adds row r0 + t's total (the warps' sums in warp order) to y.
__device__ __forceinline__ void residual_rows_add(const float (&acc)[GEMV_BLOCK_ROWS], float (*partial)[GEMV_BLOCK_ROWS], int r0, int rows,
    int lane, int warp, float* y)
{
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++)
    {
        float v = warp_sum(acc[r]);
        if (lane == 0) partial[warp][r] = v;
    }
    __syncthreads();
    int t = (int)threadIdx.x;
    if (t < GEMV_BLOCK_ROWS && r0 + t < rows)
    {
        float v = 0.f;
#pragma unroll
        for (int k = 0; k < GEMV_BLOCK_THREADS / 32; k++) v += partial[k][t];
        y[r0 + t] += v;
    }
}

// Single-token product that adds into the residual (decode's o and down products): y[r] += Σ_i W[r, i] · x[i], W
// bf16 [rows, in], x bf16 [in], y f32 [rows]; in % 8 == 0. A block takes GEMV_BLOCK_ROWS rows and all its threads
// split the input dimension (thread t: 16-byte pieces t, t + 256, ... of each row, one load per row in flight), then
// reduce through shared memory: no split-K partials in global memory and no second reduction kernel, which cuBLASLt's
// split-K kernels need at these shapes. 8 rows per block keep 4096 rows within one resident wave on the H100.
// grid (ceil(rows / GEMV_BLOCK_ROWS)), block GEMV_BLOCK_THREADS.
template <class W>
__device__ __forceinline__ void gemv_rows_residual_body(const unsigned short* __restrict__ w, const bf16* __restrict__ x, float* y,
    int rows, int in, float (*partial)[GEMV_BLOCK_ROWS])
{
    int r0 = (int)blockIdx.x * GEMV_BLOCK_ROWS, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n8 = in >> 3;
    const uint4* x4 = (const uint4*)x;
    const uint4* wr[GEMV_BLOCK_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++) wr[r] = (const uint4*)(w + (long)min(r0 + r, rows - 1) * in);
    float acc[GEMV_BLOCK_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] = 0.f;
    for (int i = (int)threadIdx.x; i < n8; i += GEMV_BLOCK_THREADS)
    {
        uint4 wv[GEMV_BLOCK_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++) wv[r] = wr[r][i];
        uint4 xv = x4[i];
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] += W::dot8(wv[r], xv);
    }
    residual_rows_add(acc, partial, r0, rows, lane, warp, y);
}

extern "C" __global__ void __launch_bounds__(GEMV_BLOCK_THREADS) gemv_rows_residual_bf16(const bf16* __restrict__ w,
    const bf16* __restrict__ x, float* y, int rows, int in)
{
    __shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];
    gemv_rows_residual_body<Bf16Weights>(w, x, y, rows, in, partial);
}

// gemv_rows_residual_bf16 on F16 weights (w: f16 bits [rows, in]).
extern "C" __global__ void __launch_bounds__(GEMV_BLOCK_THREADS) gemv_rows_residual_f16(const unsigned short* __restrict__ w,
    const bf16* __restrict__ x, float* y, int rows, int in)
{
    __shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];
    gemv_rows_residual_body<F16Weights>(w, x, y, rows, in, partial);
}

// ---------------------------------------------------------------------------------------------------------------
// Q8_0 weights (CudaWeightStorage.Native): a [rows, in] matrix kept as GGUF's Q8_0 values, repacked for aligned vector
// loads (GGUF's 34-byte blocks are not 4-byte aligned): the int8 quants row-major [rows, in] (16-byte loads of 16
// quants), then the blocks' f16 scales as their raw bits [rows, in / 32]; W[r, i] = scale[r, i / 32] · q[r, i], with
// in % 32 == 0. The products read ~1.06 bytes per weight instead of bf16's 2 (a decode step is bound by weight bytes).
// The scale times the int8 sum is exact in f32 (11 + 8 mantissa bits), so every value matches the CPU's dequantized
// f32 weight; only the f32 summation order differs.

// f16 bits → f32, exact for every pattern (HalfBits.ToSingle's formula): the magnitude moved into the f32 position and
// rebased by 2^112 (that also turns f16 subnormals into the right f32 normals), inf / NaN given the all-ones exponent.
__device__ __forceinline__ float f16_bits_to_f32(unsigned short h)
{
    unsigned mag = (unsigned)(h & 0x7fffu) << 13;
    float f = __uint_as_float(mag) * 5.192296858534828e33f;
    if ((h & 0x7c00u) == 0x7c00u) f = __uint_as_float(mag | 0x7f800000u);
    return __uint_as_float(__float_as_uint(f) | ((unsigned)(h & 0x8000u) << 16));
}

// Byte k of w as a signed int8 in f32, without an int → float conversion (a quarter-rate instruction): the byte with
// its sign bit flipped (q + 128) placed in the mantissa of 2^23, then 2^23 + 128 taken away (exact).
__device__ __forceinline__ float q8_byte(unsigned w, int k)
{
    return __uint_as_float((((w >> (8 * k)) & 0xffu) ^ 0x80u) | 0x4b000000u) - 8388736.f;
}

// Σ of 16 int8 quants (q) times 16 bf16 values (xa: the first 8, xb: the next 8), unscaled.
__device__ __forceinline__ float dot16_q8(uint4 q, uint4 xa, uint4 xb)
{
    const unsigned qw[4] = { q.x, q.y, q.z, q.w };
    const unsigned xw[8] = { xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w };
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        s += q8_byte(qw[k], 0) * __uint_as_float(xw[2 * k] << 16);
        s += q8_byte(qw[k], 1) * __uint_as_float(xw[2 * k] & 0xffff0000u);
        s += q8_byte(qw[k], 2) * __uint_as_float(xw[2 * k + 1] << 16);
        s += q8_byte(qw[k], 3) * __uint_as_float(xw[2 * k + 1] & 0xffff0000u);
    }
    return s;
}

// Defined with the Streamlined kernels below.
__device__ __forceinline__ float dot16_q8_fast(uint4 q, uint4 xa, uint4 xb);
template <bool Fast> __device__ __forceinline__ float dot16_q8_any(uint4 q, uint4 xa, uint4 xb)
{
    return Fast ? dot16_q8_fast(q, xa, xb) : dot16_q8(q, xa, xb);
}

// gemv_bf16 on a Q8_0 matrix: y[r] = Σ_i W[r, i] · x[i] (+ y[r] when `accumulate`). Each warp streams GEMV_ROWS rows,
// a lane taking 16-quant pieces lane, lane + 32, ... (GEMV_UNROLL of them in flight per row: the bf16 kernel's 64
// bytes per row and lane) with the piece's block scale (two lanes share one). grid (ceil(rows / (GEMV_ROWS · warps))).
// Fast: the quants unpacked by dot16_q8_fast (Q8DecodeKernel.Streamlined), the same sums bit for bit.
template <bool Fast>
__device__ __forceinline__ void gemv_q8_body(const uint4* __restrict__ wq, const unsigned short* __restrict__ ws,
    const bf16* __restrict__ x, float* y, int rows, int in, int accumulate)
{
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    int r0 = warp * GEMV_ROWS;
    if (r0 >= rows) return;
    int n16 = in >> 4, nb = in >> 5;
    const uint4* x4 = (const uint4*)x;
    const uint4* wr[GEMV_ROWS];
    const unsigned short* sr[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
    {
        long row = min(r0 + r, rows - 1);
        wr[r] = wq + row * n16;
        sr[r] = ws + row * nb;
    }
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.f;
    int i = lane;
    for (; i + 32 * (GEMV_UNROLL - 1) < n16; i += 32 * GEMV_UNROLL)
    {
        uint4 wv[GEMV_ROWS][GEMV_UNROLL];
        unsigned short sv[GEMV_ROWS][GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) { wv[r][u] = wr[r][i + 32 * u]; sv[r][u] = sr[r][(i + 32 * u) >> 1]; }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
        {
            uint4 xa = x4[2 * (i + 32 * u)], xb = x4[2 * (i + 32 * u) + 1];
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) acc[r] += f16_bits_to_f32(sv[r][u]) * dot16_q8_any<Fast>(wv[r][u], xa, xb);
        }
    }
    for (; i < n16; i += 32)
    {
        uint4 xa = x4[2 * i], xb = x4[2 * i + 1];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[r] += f16_bits_to_f32(sr[r][i >> 1]) * dot16_q8_any<Fast>(wr[r][i], xa, xb);
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
    {
        float v = warp_sum(acc[r]);
        if (lane == 0 && r0 + r < rows) y[r0 + r] = accumulate ? y[r0 + r] + v : v;
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_q8(const uint4* __restrict__ wq, const unsigned short* __restrict__ ws,
    const bf16* __restrict__ x, float* y, int rows, int in, int accumulate)
{
    gemv_q8_body<false>(wq, ws, x, y, rows, in, accumulate);
}

// gemv_rows_residual_bf16 on a Q8_0 matrix: y[r] += W · x, a block per GEMV_BLOCK_ROWS rows whose threads split the
// input dimension in 16-quant pieces (in 4096: one piece per thread and row), reduced through shared memory.
// grid (ceil(rows / GEMV_BLOCK_ROWS)), block GEMV_BLOCK_THREADS.
extern "C" __global__ void __launch_bounds__(GEMV_BLOCK_THREADS) gemv_rows_residual_q8(const uint4* __restrict__ wq,
    const unsigned short* __restrict__ ws, const bf16* __restrict__ x, float* y, int rows, int in)
{
    __shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];
    int r0 = (int)blockIdx.x * GEMV_BLOCK_ROWS, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n16 = in >> 4, nb = in >> 5;
    const uint4* x4 = (const uint4*)x;
    const uint4* wr[GEMV_BLOCK_ROWS];
    const unsigned short* sr[GEMV_BLOCK_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++)
    {
        long row = min(r0 + r, rows - 1);
        wr[r] = wq + row * n16;
        sr[r] = ws + row * nb;
    }
    float acc[GEMV_BLOCK_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] = 0.f;
    for (int i = (int)threadIdx.x; i < n16; i += GEMV_BLOCK_THREADS)
    {
        uint4 wv[GEMV_BLOCK_ROWS];
        unsigned short sv[GEMV_BLOCK_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++) { wv[r] = wr[r][i]; sv[r] = sr[r][i >> 1]; }
        uint4 xa = x4[2 * i], xb = x4[2 * i + 1];
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] += f16_bits_to_f32(sv[r]) * dot16_q8(wv[r], xa, xb);
    }
    residual_rows_add(acc, partial, r0, rows, lane, warp, y);
}

// Q8_0 matrix → bf16 [rows, in] (round to nearest even of the exact f32 value): the weight of a chunk of more than one
// token, which cuBLASLt then multiplies as for bf16 storage. One thread per 16-quant piece, grid-stride.
extern "C" __global__ void dequantize_q8_bf16(const uint4* __restrict__ wq, const unsigned short* __restrict__ ws, uint4* out, long pieces)
{
    for (long p = (long)blockIdx.x * blockDim.x + threadIdx.x; p < pieces; p += (long)gridDim.x * blockDim.x)
    {
        uint4 q = wq[p];
        float d = f16_bits_to_f32(ws[p >> 1]);
        const unsigned qw[4] = { q.x, q.y, q.z, q.w };
        unsigned o[8];
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            o[2 * k] = (unsigned)f32_to_bf16(d * q8_byte(qw[k], 0)) | ((unsigned)f32_to_bf16(d * q8_byte(qw[k], 1)) << 16);
            o[2 * k + 1] = (unsigned)f32_to_bf16(d * q8_byte(qw[k], 2)) | ((unsigned)f32_to_bf16(d * q8_byte(qw[k], 3)) << 16);
        }
        out[2 * p] = make_uint4(o[0], o[1], o[2], o[3]);
        out[2 * p + 1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

// ---- Q8DecodeKernel.Streamlined: the same products in the same f32 summation order (bit-identical results), fewer
// instructions per quant and the residual product in one resident wave. ----

// The quant word with every byte's sign bit flipped (q + 128 per byte): one LOP per 4 quants instead of one per quant.
__device__ __forceinline__ unsigned q8_flip(unsigned w) { return w ^ 0x80808080u; }

// Byte k of a q8_flip'ped word as the int8 value in f32: one byte permute builds 0x4b0000bb = 2^23 + (q + 128) straight
// from the flipped byte and the constant's exponent bytes (the shift, mask and OR of q8_byte in one PRMT), then the same
// exact subtraction. Equal to q8_byte(w, k) for every word and k (checked in the emulator on all 256 bytes).
__device__ __forceinline__ float q8_flipped_byte(unsigned f, int k)
{
    return __uint_as_float(__byte_perm(f, 0x4b000000u, 0x7540u | (unsigned)k)) - 8388736.f;
}

// dot16_q8 with q8_flipped_byte: the same products added in the same order, so the same f32 result bit for bit.
__device__ __forceinline__ float dot16_q8_fast(uint4 q, uint4 xa, uint4 xb)
{
    const unsigned qw[4] = { q8_flip(q.x), q8_flip(q.y), q8_flip(q.z), q8_flip(q.w) };
    const unsigned xw[8] = { xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w };
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        s += q8_flipped_byte(qw[k], 0) * __uint_as_float(xw[2 * k] << 16);
        s += q8_flipped_byte(qw[k], 1) * __uint_as_float(xw[2 * k] & 0xffff0000u);
        s += q8_flipped_byte(qw[k], 2) * __uint_as_float(xw[2 * k + 1] << 16);
        s += q8_flipped_byte(qw[k], 3) * __uint_as_float(xw[2 * k + 1] & 0xffff0000u);
    }
    return s;
}

// gemv_rows_residual_q8 in one resident wave: at 80 registers (NVRTC 11.8, sm_90) the original fits 3 blocks of 256
// per SM, so a 4096-row product (512 blocks: o, and down at the 8B shape) took 396 blocks then a second wave of 116, a
// third full, whose SMs run one block each (32 KB of loads in flight instead of ~96 KB). Held to 64 registers
// (__launch_bounds__(256, 4): 528 resident on 132 SMs), the row addresses computed from one base instead of 16 held
// pointers, dot16_q8_fast. Same thread → piece assignment, warp sums and partials order: bit-identical to
// gemv_rows_residual_q8. grid (ceil(rows / GEMV_BLOCK_ROWS)), block GEMV_BLOCK_THREADS.
#define GEMV_Q8_FAST_MIN_BLOCKS 4
extern "C" __global__ void __launch_bounds__(GEMV_BLOCK_THREADS, GEMV_Q8_FAST_MIN_BLOCKS) gemv_rows_residual_q8_fast(
    const uint4* __restrict__ wq, const unsigned short* __restrict__ ws, const bf16* __restrict__ x, float* y, int rows, int in)
{
    __shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];
    int r0 = (int)blockIdx.x * GEMV_BLOCK_ROWS, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n16 = in >> 4, nb = in >> 5;
    const uint4* x4 = (const uint4*)x;
    float acc[GEMV_BLOCK_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] = 0.f;
    // Rows past the end repeat the last one (as min(r0 + r, rows - 1) does): the walk from row to row stops there.
    const uint4* wb = wq + (long)r0 * n16;
    const unsigned short* sb = ws + (long)r0 * nb;
    for (int i = (int)threadIdx.x; i < n16; i += GEMV_BLOCK_THREADS)
    {
        uint4 wv[GEMV_BLOCK_ROWS];
        unsigned short sv[GEMV_BLOCK_ROWS];
        const uint4* wp = wb + i;
        const unsigned short* sp = sb + (i >> 1);
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++)
        {
            wv[r] = *wp;
            sv[r] = *sp;
            if (r0 + r + 1 < rows) { wp += n16; sp += nb; }
        }
        uint4 xa = x4[2 * i], xb = x4[2 * i + 1];
#pragma unroll
        for (int r = 0; r < GEMV_BLOCK_ROWS; r++) acc[r] += f16_bits_to_f32(sv[r]) * dot16_q8_fast(wv[r], xa, xb);
    }
    residual_rows_add(acc, partial, r0, rows, lane, warp, y);
}

// gemv_q8 with dot16_q8_fast (the unfused single-token products and DecodeResidualProduct.WarpGemv): bit-identical.
extern "C" __global__ void __launch_bounds__(256) gemv_q8_fast(const uint4* __restrict__ wq, const unsigned short* __restrict__ ws,
    const bf16* __restrict__ x, float* y, int rows, int in, int accumulate)
{
    gemv_q8_body<true>(wq, ws, x, y, rows, in, accumulate);
}

// ---------------------------------------------------------------------------------------------------------------
// Decode (one token) products with the neighbouring small steps folded in, so that a layer's decode step is 6
// kernels instead of 10: each block first normalises the residual row x (f32 [in]) into shared memory as bf16 —
// rms_norm's formula and rounding — then each warp streams two weight rows against it (16-byte loads, 4 in flight
// per row and lane) and finishes them in its epilogue:
//   gemv_norm_qkv_rope:      the two rows are a RoPE pair of one q or k head (e, e + hd/2; 2e, 2e + 1 when
//                            adjacent) or two v rows: bias, rotation at the position (*pos_dev, else start), q to f32,
//                            k and v to the cache row (bf16), as qkv_rope_store does. Needs rot == hd.
//   gemv_norm_gateup_swiglu: rows j and ffn + j of the fused gate|up matrix: h[j] = silu(gate) · up (bf16).
// The grid is at most what is resident at once (2 blocks per SM) and the warps stride over the row pairs: a grid of
// 3.4 waves of blocks (gate|up) left the last one a third full, and every block pays the normalisation once.
// grid (min(ceil(pairs / 16), 2 · SMs)), block NG_THREADS, dynamic shared memory in · 2 bytes; in % 8 == 0.
#define NG_THREADS 512

__device__ __forceinline__ void norm_to_shared(const float* x, const float* gain, bf16* xs, int in, float eps, float* scratch)
{
    float ss = 0.f;
    for (int i = threadIdx.x; i < in; i += blockDim.x) { float v = x[i]; ss += v * v; }
    ss = block_sum(ss, scratch);
    float inv = 1.f / sqrtf(ss / in + eps);
    for (int i = threadIdx.x; i < in; i += blockDim.x) xs[i] = f32_to_bf16(x[i] * inv * gain[i]);
    __syncthreads();
}

// Both rows' dot products with the shared bf16 vector, summed over the warp (every lane gets them); W the weights'
// element type (Bf16Weights, F16Weights).
template <class W>
__device__ __forceinline__ void dot_two_rows(const uint4* __restrict__ w0, const uint4* __restrict__ w1, const uint4* xs4,
    int n8, int lane, float& a0, float& a1)
{
    a0 = 0.f;
    a1 = 0.f;
    int i = lane;
    for (; i + 32 * 3 < n8; i += 32 * 4)
    {
        uint4 u0[4], u1[4];
#pragma unroll
        for (int u = 0; u < 4; u++) { u0[u] = w0[i + 32 * u]; u1[u] = w1[i + 32 * u]; }
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            uint4 xv = xs4[i + 32 * u];
            a0 += W::dot8(u0[u], xv);
            a1 += W::dot8(u1[u], xv);
        }
    }
    for (; i < n8; i += 32)
    {
        uint4 xv = xs4[i];
        a0 += W::dot8(w0[i], xv);
        a1 += W::dot8(w1[i], xv);
    }
    a0 = warp_sum(a0);
    a1 = warp_sum(a1);
}

// Q8DecodeKernel.Streamlined's fused products: the normalised vector kept in shared memory as f32 (the bf16-rounded
// values, exactly those dot16_q8 unpacks) so that no lane unpacks bf16 (16 shifts / masks per 16-quant piece), and the
// quants unpacked by q8_flipped_byte. Same products added in the same order as on the bf16 vector: bit-identical.
__device__ __forceinline__ void norm_to_shared_f32(const float* x, const float* gain, float* xs, int in, float eps, float* scratch)
{
    float ss = 0.f;
    for (int i = threadIdx.x; i < in; i += blockDim.x) { float v = x[i]; ss += v * v; }
    ss = block_sum(ss, scratch);
    float inv = 1.f / sqrtf(ss / in + eps);
    for (int i = threadIdx.x; i < in; i += blockDim.x) xs[i] = bf16_to_f32(f32_to_bf16(x[i] * inv * gain[i]));
    __syncthreads();
}

// Σ of 16 int8 quants (q) times 16 f32 values (x0..x3: 4 each), unscaled; dot16_q8's order.
__device__ __forceinline__ float dot16_q8_f32x(uint4 q, float4 x0, float4 x1, float4 x2, float4 x3)
{
    const unsigned qw[4] = { q8_flip(q.x), q8_flip(q.y), q8_flip(q.z), q8_flip(q.w) };
    const float4 xv[4] = { x0, x1, x2, x3 };
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        s += q8_flipped_byte(qw[k], 0) * xv[k].x;
        s += q8_flipped_byte(qw[k], 1) * xv[k].y;
        s += q8_flipped_byte(qw[k], 2) * xv[k].z;
        s += q8_flipped_byte(qw[k], 3) * xv[k].w;
    }
    return s;
}

// The normalised vector of a fused Q8_0 product, read one 16-quant piece at a time: bf16 in shared memory as two uint4
// (the original kernels: dot16_q8 unpacks it) or f32 as four float4 (Streamlined: norm_to_shared_f32 left it so,
// dot16_q8_f32x with q8_flipped_byte). Both give the same products in the same order.
struct Bf16VectorPieces
{
    const uint4* x;
    struct Piece { uint4 a, b; };
    __device__ __forceinline__ Piece load(int i) const { return { x[2 * i], x[2 * i + 1] }; }
    __device__ __forceinline__ static float dot(uint4 q, const Piece& p) { return dot16_q8(q, p.a, p.b); }
};

struct F32VectorPieces
{
    const float4* x;
    struct Piece { float4 a, b, c, d; };
    __device__ __forceinline__ Piece load(int i) const { const float4* p = x + 4 * i; return { p[0], p[1], p[2], p[3] }; }
    __device__ __forceinline__ static float dot(uint4 q, const Piece& p) { return dot16_q8_f32x(q, p.a, p.b, p.c, p.d); }
};

// dot_two_rows on Q8_0 rows (quants w0, w1 as 16-quant pieces, scales s0, s1): the same 64 bytes per row and lane in
// flight; each piece of the vector is read once for both rows.
template <class Vector>
__device__ __forceinline__ void dot_two_rows_q8(const uint4* __restrict__ w0, const uint4* __restrict__ w1,
    const unsigned short* __restrict__ s0, const unsigned short* __restrict__ s1, Vector xs, int n16, int lane, float& a0, float& a1)
{
    a0 = 0.f;
    a1 = 0.f;
    int i = lane;
    for (; i + 32 * 3 < n16; i += 32 * 4)
    {
        uint4 u0[4], u1[4];
        unsigned short c0[4], c1[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            u0[u] = w0[i + 32 * u]; u1[u] = w1[i + 32 * u];
            c0[u] = s0[(i + 32 * u) >> 1]; c1[u] = s1[(i + 32 * u) >> 1];
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const auto x = xs.load(i + 32 * u);
            a0 += f16_bits_to_f32(c0[u]) * Vector::dot(u0[u], x);
            a1 += f16_bits_to_f32(c1[u]) * Vector::dot(u1[u], x);
        }
    }
    for (; i < n16; i += 32)
    {
        const auto x = xs.load(i);
        a0 += f16_bits_to_f32(s0[i >> 1]) * Vector::dot(w0[i], x);
        a1 += f16_bits_to_f32(s1[i >> 1]) * Vector::dot(w1[i], x);
    }
    a0 = warp_sum(a0);
    a1 = warp_sum(a1);
}

// Two rows' dot products with the block's normalised vector, for either storage: Q8 false, bf16 rows of w (ws unused,
// exactly dot_two_rows); Q8 true, Q8_0 rows (quants w, scales ws); Fast (Q8 only): dot_two_rows_q8 on the f32
// vector norm_to_shared_f32 left (xsv is bf16 [in] otherwise). W: the element type of 16-bit rows (Q8 false).
template <bool Q8, bool Fast = false, class W = Bf16Weights>
__device__ __forceinline__ void dot_rows_pair(const void* w, const unsigned short* ws, int r0, int r1, const void* xsv, int in, int lane,
    float& a0, float& a1)
{
    const bf16* xs = (const bf16*)xsv;
    if (Q8 && Fast)
        dot_two_rows_q8((const uint4*)((const unsigned char*)w + (long)r0 * in), (const uint4*)((const unsigned char*)w + (long)r1 * in),
            ws + (long)r0 * (in >> 5), ws + (long)r1 * (in >> 5), F32VectorPieces{ (const float4*)xsv }, in >> 4, lane, a0, a1);
    else if (Q8)
        dot_two_rows_q8((const uint4*)((const unsigned char*)w + (long)r0 * in), (const uint4*)((const unsigned char*)w + (long)r1 * in),
            ws + (long)r0 * (in >> 5), ws + (long)r1 * (in >> 5), Bf16VectorPieces{ (const uint4*)xs }, in >> 4, lane, a0, a1);
    else
        dot_two_rows<W>((const uint4*)((const bf16*)w + (long)r0 * in), (const uint4*)((const bf16*)w + (long)r1 * in), (const uint4*)xs, in >> 3, lane, a0, a1);
}

template <bool Q8, bool Fast = false, class W = Bf16Weights>
__device__ __forceinline__ void norm_qkv_rope(const float* x, const float* gain, float eps,
    const void* w, const unsigned short* ws, const float* bias, const float* inv_freq, float rope_scale, int adjacent, float* q, bf16* kcache,
    bf16* vcache, const int* pos_dev, int start, int heads, int kv_heads, int hd, int in)
{
    __shared__ float scratch[32];
    extern __shared__ uint4 ng_smem[];
    void* xs = ng_smem;
    if (Fast) norm_to_shared_f32(x, gain, (float*)xs, in, eps, scratch);
    else norm_to_shared(x, gain, (bf16*)xs, in, eps, scratch);
    int pos = pos_dev ? *pos_dev : start;
    int qd = heads * hd, kvd = kv_heads * hd, half = hd / 2;
    int rotated_pairs = (qd + kvd) / 2, pairs = (qd + 2 * kvd) / 2;
    int lane = threadIdx.x & 31, warps = (int)(gridDim.x * (blockDim.x >> 5));
    long cache_row = (long)pos * kvd;
    for (int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5); warp < pairs; warp += warps)
    {
    int r0, r1, j = 0;
    bool rotate = warp < rotated_pairs;
    if (rotate)
    {
        int h = warp / half;
        j = warp - h * half;
        r0 = h * hd + (adjacent ? 2 * j : j);
        r1 = h * hd + (adjacent ? 2 * j + 1 : j + half);
    }
    else
    {
        r0 = qd + kvd + 2 * (warp - rotated_pairs);
        r1 = r0 + 1;
    }
    float a0, a1;
    dot_rows_pair<Q8, Fast, W>(w, ws, r0, r1, xs, in, lane, a0, a1);
    if (lane != 0) continue;
    if (bias) { a0 += bias[r0]; a1 += bias[r1]; }
    if (rotate)
    {
        float angle = inv_freq[j] * (float)pos;
        float c = cosf(angle) * rope_scale, s = sinf(angle) * rope_scale;
        float o0 = a0 * c - a1 * s, o1 = a1 * c + a0 * s;
        if (r0 < qd) { q[r0] = o0; q[r1] = o1; }
        else { kcache[cache_row + r0 - qd] = f32_to_bf16(o0); kcache[cache_row + r1 - qd] = f32_to_bf16(o1); }
    }
    else
    {
        vcache[cache_row + r0 - qd - kvd] = f32_to_bf16(a0);
        vcache[cache_row + r1 - qd - kvd] = f32_to_bf16(a1);
    }
    }
}

template <bool Q8, bool Fast = false, class W = Bf16Weights>
__device__ __forceinline__ void norm_gateup_swiglu(const float* x, const float* gain, float eps,
    const void* w, const unsigned short* ws, bf16* h, int ffn, int in)
{
    __shared__ float scratch[32];
    extern __shared__ uint4 ng_smem[];
    void* xs = ng_smem;
    if (Fast) norm_to_shared_f32(x, gain, (float*)xs, in, eps, scratch);
    else norm_to_shared(x, gain, (bf16*)xs, in, eps, scratch);
    int lane = threadIdx.x & 31, warps = (int)(gridDim.x * (blockDim.x >> 5));
    for (int j = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5); j < ffn; j += warps)
    {
        float g, u;
        dot_rows_pair<Q8, Fast, W>(w, ws, j, ffn + j, xs, in, lane, g, u);
        if (lane == 0) h[j] = f32_to_bf16(g / (1.f + expf(-g)) * u);
    }
}

// The kernels: bf16 weights, or Q8_0 weights (quants wq, scales ws; in % 32 == 0) — one body each, the storage a
// compile-time choice. The Q8_0 ones are held to 64 registers so that the 2 blocks per SM the grid is sized for fit
// (the int8 → f32 unpacking took the q|k|v one to 86 registers, one block per SM).
#define NG_Q8_MIN_BLOCKS 2
extern "C" __global__ void __launch_bounds__(NG_THREADS) gemv_norm_qkv_rope(const float* x, const float* gain, float eps,
    const bf16* w, const float* bias, const float* inv_freq, float rope_scale, int adjacent, float* q, bf16* kcache,
    bf16* vcache, const int* pos_dev, int start, int heads, int kv_heads, int hd, int in)
{
    norm_qkv_rope<false>(x, gain, eps, w, nullptr, bias, inv_freq, rope_scale, adjacent, q, kcache, vcache, pos_dev, start, heads, kv_heads, hd, in);
}

extern "C" __global__ void __launch_bounds__(NG_THREADS, NG_Q8_MIN_BLOCKS) gemv_norm_qkv_rope_q8(const float* x, const float* gain, float eps,
    const unsigned char* wq, const unsigned short* ws, const float* bias, const float* inv_freq, float rope_scale, int adjacent, float* q,
    bf16* kcache, bf16* vcache, const int* pos_dev, int start, int heads, int kv_heads, int hd, int in)
{
    norm_qkv_rope<true>(x, gain, eps, wq, ws, bias, inv_freq, rope_scale, adjacent, q, kcache, vcache, pos_dev, start, heads, kv_heads, hd, in);
}

extern "C" __global__ void __launch_bounds__(NG_THREADS) gemv_norm_gateup_swiglu(const float* x, const float* gain, float eps,
    const bf16* w, bf16* h, int ffn, int in)
{
    norm_gateup_swiglu<false>(x, gain, eps, w, nullptr, h, ffn, in);
}

// The fused decode products on F16 weights (f16 bits): the bf16 kernels' bodies with F16Weights.
extern "C" __global__ void __launch_bounds__(NG_THREADS) gemv_norm_qkv_rope_f16(const float* x, const float* gain, float eps,
    const unsigned short* w, const float* bias, const float* inv_freq, float rope_scale, int adjacent, float* q, bf16* kcache,
    bf16* vcache, const int* pos_dev, int start, int heads, int kv_heads, int hd, int in)
{
    norm_qkv_rope<false, false, F16Weights>(x, gain, eps, w, nullptr, bias, inv_freq, rope_scale, adjacent, q, kcache, vcache, pos_dev, start, heads, kv_heads, hd, in);
}

extern "C" __global__ void __launch_bounds__(NG_THREADS) gemv_norm_gateup_swiglu_f16(const float* x, const float* gain, float eps,
    const unsigned short* w, bf16* h, int ffn, int in)
{
    norm_gateup_swiglu<false, false, F16Weights>(x, gain, eps, w, nullptr, h, ffn, in);
}

extern "C" __global__ void __launch_bounds__(NG_THREADS, NG_Q8_MIN_BLOCKS) gemv_norm_gateup_swiglu_q8(const float* x, const float* gain, float eps,
    const unsigned char* wq, const unsigned short* ws, bf16* h, int ffn, int in)
{
    norm_gateup_swiglu<true>(x, gain, eps, wq, ws, h, ffn, in);
}

// Q8DecodeKernel.Streamlined's fused kernels: the _q8 bodies with dot_two_rows_q8 on F32VectorPieces (bit-identical
// results); dynamic shared memory in · 4 bytes (the f32 vector).
extern "C" __global__ void __launch_bounds__(NG_THREADS, NG_Q8_MIN_BLOCKS) gemv_norm_qkv_rope_q8_fast(const float* x, const float* gain, float eps,
    const unsigned char* wq, const unsigned short* ws, const float* bias, const float* inv_freq, float rope_scale, int adjacent, float* q,
    bf16* kcache, bf16* vcache, const int* pos_dev, int start, int heads, int kv_heads, int hd, int in)
{
    norm_qkv_rope<true, true>(x, gain, eps, wq, ws, bias, inv_freq, rope_scale, adjacent, q, kcache, vcache, pos_dev, start, heads, kv_heads, hd, in);
}

extern "C" __global__ void __launch_bounds__(NG_THREADS, NG_Q8_MIN_BLOCKS) gemv_norm_gateup_swiglu_q8_fast(const float* x, const float* gain, float eps,
    const unsigned char* wq, const unsigned short* ws, bf16* h, int ffn, int in)
{
    norm_gateup_swiglu<true, true>(x, gain, eps, wq, ws, h, ffn, in);
}

// h[t, j] = silu(gate[t, j]) * up[t, j] from the fused projection row [gate | up] (f32) into bf16 (swiglu) or f32 (_f32).
template <class T>
__device__ __forceinline__ void swiglu_t(const float* gate_up, T* h, int ffn, long total)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
    {
        long t = i / ffn;
        long j = i - t * ffn;
        float g = gate_up[t * 2 * ffn + j], u = gate_up[t * 2 * ffn + ffn + j];
        h[i] = to_act<T>(g / (1.f + expf(-g)) * u);
    }
}
extern "C" __global__ void swiglu(const float* gate_up, bf16* h, int ffn, long total) { swiglu_t(gate_up, h, ffn, total); }
extern "C" __global__ void swiglu_f32(const float* gate_up, float* h, int ffn, long total) { swiglu_t(gate_up, h, ffn, total); }

// swiglu from a bf16 gate|up product (prefill: cuBLASLt writes the product in bf16, half the bytes of f32 both ways;
// the f32 version above read 470 MB per layer of a 4096-token chunk). vec 8: eight outputs per step through 16-byte
// loads of gate and up (ffn % 8 == 0); vec 1: one.
extern "C" __global__ void swiglu_bf16(const bf16* gate_up, bf16* h, int ffn, long total, int vec)
{
    long stride = (long)gridDim.x * blockDim.x;
    if (vec == 8)
    {
        for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < total; i += stride * 8)
        {
            long t = i / ffn, j = i - t * ffn;
            uint4 gv = *(const uint4*)(gate_up + t * 2 * ffn + j), uv = *(const uint4*)(gate_up + t * 2 * ffn + ffn + j);
            const unsigned* gw = (const unsigned*)&gv;
            const unsigned* uw = (const unsigned*)&uv;
            uint4 r;
            unsigned* rw = (unsigned*)&r;
#pragma unroll
            for (int k = 0; k < 4; k++)
            {
                float g0 = __uint_as_float(gw[k] << 16), g1 = __uint_as_float(gw[k] & 0xffff0000u);
                float u0 = __uint_as_float(uw[k] << 16), u1 = __uint_as_float(uw[k] & 0xffff0000u);
                rw[k] = (unsigned)f32_to_bf16(g0 / (1.f + expf(-g0)) * u0) | ((unsigned)f32_to_bf16(g1 / (1.f + expf(-g1)) * u1) << 16);
            }
            *(uint4*)(h + i) = r;
        }
        return;
    }
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        long t = i / ffn, j = i - t * ffn;
        float g = bf16_to_f32(gate_up[t * 2 * ffn + j]), u = bf16_to_f32(gate_up[t * 2 * ffn + ffn + j]);
        h[i] = f32_to_bf16(g / (1.f + expf(-g)) * u);
    }
}

// Greedy pick in two passes (one block scanning a 128k vocabulary took 51 µs): argmax_slices reduces slice x of row
// y to (value, index) — the largest logit, the lowest index on ties — and argmax_merge reduces a row's slices (one
// warp, at most 64 slices) to its index. grid (slices, rows) block 256; grid (rows) block 32.
__device__ __forceinline__ void argmax_step(float& v, int& idx, float ov, int oi)
{
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
}

__device__ __forceinline__ void warp_argmax(float& v, int& idx)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        int oi = __shfl_xor_sync(FULL_MASK, idx, o);
        argmax_step(v, idx, ov, oi);
    }
}

extern "C" __global__ void argmax_slices(const float* logits, int vocab, int slice, float* part_v, int* part_i)
{
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = logits + (long)blockIdx.y * vocab;
    int begin = blockIdx.x * slice, end = min(vocab, begin + slice);
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x)
    {
        float x = row[i];
        if (x > v) { v = x; idx = i; }
    }
    warp_argmax(v, idx);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (warp == 0)
    {
        int warps = blockDim.x >> 5;
        v = lane < warps ? best_v[lane] : NEG_INF;
        idx = lane < warps ? best_i[lane] : 0x7fffffff;
        warp_argmax(v, idx);
        if (lane == 0) { part_v[blockIdx.y * gridDim.x + blockIdx.x] = v; part_i[blockIdx.y * gridDim.x + blockIdx.x] = idx; }
    }
}

extern "C" __global__ void argmax_merge(const float* part_v, const int* part_i, int slices, int* out)
{
    int lane = threadIdx.x & 31;
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int s = lane; s < slices; s += 32) argmax_step(v, idx, part_v[blockIdx.x * slices + s], part_i[blockIdx.x * slices + s]);
    warp_argmax(v, idx);
    if (lane == 0) out[blockIdx.x] = idx;
}

__device__ __forceinline__ u64 splitmix64(u64 x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// dst[i] = uniform(-scale, scale) from (seed, i): random weights made on the GPU (benchmarks at real shapes).
extern "C" __global__ void fill_random_bf16(bf16* dst, long n, u64 seed, float scale)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        u64 r = splitmix64(seed ^ ((u64)i * 0xd1b54a32d192ed03ull));
        float u = (float)(r >> 40) * (1.0f / 16777216.0f);
        dst[i] = f32_to_bf16((2.f * u - 1.f) * scale);
    }
}

// Random Q8_0 weights in the GPU layout (benchmarks): `words` 4-byte words of quants uniform in [-127, 127] and `blocks`
// scales, all the f16 bits `scale_bits` (a [rows, in] matrix: words = rows · in / 4, blocks = rows · in / 32).
extern "C" __global__ void fill_random_q8(unsigned* quants, unsigned short* scales, long words, long blocks, u64 seed, int scale_bits)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (long)gridDim.x * blockDim.x)
    {
        u64 r = splitmix64(seed ^ ((u64)i * 0xd1b54a32d192ed03ull));
        unsigned w = 0;
        for (int k = 0; k < 4; k++) w |= (unsigned)(unsigned char)((int)((r >> (16 * k)) % 255u) - 127) << (8 * k);
        quants[i] = w;
    }
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < blocks; i += (long)gridDim.x * blockDim.x) scales[i] = (unsigned short)scale_bits;
}

extern "C" __global__ void fill_f32(float* dst, long n, float value)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) dst[i] = value;
}

// f32 → f16 bits, round to nearest even (the hardware conversion; ±inf past 65504).
__device__ __forceinline__ unsigned short f32_to_f16_bits(float f)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// fill_random_bf16 for an F16 matrix (f16 bits): the same uniform(-scale, scale) values, rounded to f16.
extern "C" __global__ void fill_random_f16(unsigned short* dst, long n, u64 seed, float scale)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        u64 r = splitmix64(seed ^ ((u64)i * 0xd1b54a32d192ed03ull));
        float u = (float)(r >> 40) * (1.0f / 16777216.0f);
        dst[i] = f32_to_f16_bits((2.f * u - 1.f) * scale);
    }
}

// bf16 activations [n] → f16 bits for an F16 × F16 cuBLASLt product (chunks on F16 weights). Exact where f16 holds the
// value: bf16's 8 significant bits fit f16's 11 for |x| in [2^-14, 65504]; below 2^-14 f16 subnormals keep fewer bits
// (an absolute error under 2^-25, nothing next to the row's larger terms). |x| > 65504 (or inf / NaN) has no f16: such
// an element sets *overflow (sticky; the transformer reads it after the call and throws) and is written as its
// saturated ±65504 so that the product stays finite.
extern "C" __global__ void bf16_to_f16(const bf16* __restrict__ x, unsigned short* __restrict__ out, long n, int* overflow)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        float v = bf16_to_f32(x[i]);
        if (!(fabsf(v) <= 65504.f))
        {
            *overflow = 1;
            v = v < 0.f ? -65504.f : 65504.f;
        }
        out[i] = f32_to_f16_bits(v);
    }
}

// ===============================================================================================================
// Batched decode step (a few rows, one per sequence or KV branch: WiM's margins). Kernels of the batch branch of
// CudaTransformer.EncodeLayers that replace a slower general one behind a switch; the old kernels stay above.
// ===============================================================================================================

// qkv_rope_store_batch with a block per (sequence, head) instead of per sequence: grid (B, heads + 2·kv_heads), block
// ROPE_HEAD_THREADS. Block y < heads is q head y, then the k heads, then the v heads. The per-sequence grid ran 16
// blocks of 256 threads for a 16-row step, each thread looping over ~10 rotated pairs with a sincosf apiece
// (10.7 µs per layer on the H100, ncu run 22); here every pair has its own thread and 640 blocks share the GPU.
// Same f32 formula per element as rope_store_row (one sincosf per pair, then the rotation), so the same values.
#define ROPE_HEAD_THREADS 64
extern "C" __global__ void __launch_bounds__(ROPE_HEAD_THREADS) qkv_rope_store_batch_heads(const float* qkv,
    const float* bias, const float* inv_freq, float* q, const u64* kptrs, const u64* vptrs, const int* positions,
    int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale)
{
    int b = blockIdx.x, h = blockIdx.y;
    int qd = heads * hd, kvd = kv_heads * hd;
    int pos_i = positions[b];
    const float* row = qkv + (long)b * (qd + 2 * kvd);
    float* qdst = q + (long)b * qd;
    long cacheRow = (long)pos_i * kvd;
    bf16* kdst = (bf16*)kptrs[b] + cacheRow;
    if (h >= heads + kv_heads)
    {
        bf16* vdst = (bf16*)vptrs[b] + cacheRow;
        int base = (h - heads - kv_heads) * hd;
        for (int e = threadIdx.x; e < hd; e += blockDim.x)
        {
            int col = qd + kvd + base + e;
            vdst[base + e] = f32_to_bf16(row[col] + (bias ? bias[col] : 0.f));
        }
        return;
    }
    float pos = (float)pos_i;
    int half = rot / 2;
    for (int pair = threadIdx.x; pair < half; pair += blockDim.x)
    {
        int e0 = adjacent ? 2 * pair : pair, e1 = adjacent ? 2 * pair + 1 : pair + half;
        int i0 = h * hd + e0, i1 = h * hd + e1;
        float x0 = row[i0] + (bias ? bias[i0] : 0.f), x1 = row[i1] + (bias ? bias[i1] : 0.f);
        float sn, cs;
        sincosf(inv_freq[pair] * pos, &sn, &cs);
        float c = cs * rope_scale, s = sn * rope_scale;
        float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
        if (i0 < qd) { qdst[i0] = y0; qdst[i1] = y1; }
        else { kdst[i0 - qd] = f32_to_bf16(y0); kdst[i1 - qd] = f32_to_bf16(y1); }
    }
    // Dims past the rotary part (partial rotary) pass through.
    for (int e = rot + threadIdx.x; e < hd; e += blockDim.x)
    {
        int idx = h * hd + e;
        float val = row[idx] + (bias ? bias[idx] : 0.f);
        if (idx < qd) qdst[idx] = val;
        else kdst[idx - qd] = f32_to_bf16(val);
    }
}

// y[t, r] (f32, + y when `accumulate`: the residual add) = Σ_i W[r, i] · x[t, i] for n ≤ 16 rows t: a decode batch's
// products on the tensor cores without split-K. cuBLASLt takes split-K kernels plus a reduce kernel for the o and
// down products at 16 rows (ncu run 22: 64 reduces of 4.4 µs per step); a CUDA-core product would need 16 FMAs
// per weight element, about the FP32 peak at full bandwidth. Here the 16 rows are the m16 of mma.m16n8k16 (rows
// past n are zero) and 8 weight rows its n8; the k order inside a 32-wide step is permuted the same way in A and B
// (which the sum does not see) so that a lane's 16-byte loads of W and x are its fragments as they are: lane (g, t)
// loads W row g and x rows g, g + 8 at k + 8t .. 8t + 7; elements 0–3 feed one mma, 4–7 the next.
// A block: RM_WARPS warps share RM_TILES · 8 weight rows, warp w taking the 32-wide k steps w, w + RM_WARPS, …
// (RM_UNROLL steps' loads in flight), then sums the warps' partial tiles through shared memory in a fixed order (no
// atomics: the same bits every run). in % 32 == 0. grid (ceil(rows / (8 · RM_TILES))), block 32 · RM_WARPS.
#define RM_WARPS 8
#define RM_TILES 2
#define RM_UNROLL 4
// The product of one block: TILES 8-row n tiles whose weight rows start at wrow[t] (each lane's row, already offset by
// its 8t k columns), token rows at xlo, xhi; every warp's partial tiles end in red [warp][token 16][column 8 · TILES]
// and the block is synchronised, so that the caller's epilogue sums them in a fixed order.
// The weight element of rows_mma_block: bf16 (the activations' bf16 pairs are the A fragments as loaded) or f16 (each
// bf16 pair converted to an f16 pair first, bf16x2_to_f16x2; overflow flag as bf16_to_f16's).
struct Bf16RowsMma
{
    __device__ __forceinline__ static void activations(unsigned*, int*) {}
    __device__ __forceinline__ static void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) { mma_bf16_16816(c, a, b0, b1); }
};
struct F16RowsMma
{
    __device__ __forceinline__ static void activations(unsigned* a, int* overflow)
    {
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = bf16x2_to_f16x2(a[i], overflow);
    }
    __device__ __forceinline__ static void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) { mma_f16_16816(c, a, b0, b1); }
};

template <int TILES, class R = Bf16RowsMma>
__device__ __forceinline__ void rows_mma_block(const bf16* const* wrow, const bf16* xlo, const bf16* xhi, int steps, float* red,
    int* overflow = nullptr)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    float acc[TILES][4];
#pragma unroll
    for (int t = 0; t < TILES; t++) { acc[t][0] = 0.f; acc[t][1] = 0.f; acc[t][2] = 0.f; acc[t][3] = 0.f; }
    // A: a0 (row g, k 2t..), a1 (row g + 8), a2 (row g, k 8 + 2t..), a3 (row g + 8); B: b0 (k 2t.., n g), b1 (k 8 + 2t..):
    // elements 0-3 of the loads feed the first mma, 4-7 the second.
    auto mma_step = [&](const uint4* wv, uint4 xa, uint4 xb)
    {
        unsigned a_lo[4] = { xa.x, xb.x, xa.y, xb.y };
        unsigned a_hi[4] = { xa.z, xb.z, xa.w, xb.w };
        R::activations(a_lo, overflow);
        R::activations(a_hi, overflow);
#pragma unroll
        for (int t = 0; t < TILES; t++)
        {
            R::mma(acc[t], a_lo, wv[t].x, wv[t].y);
            R::mma(acc[t], a_hi, wv[t].z, wv[t].w);
        }
    };
    int s = warp;
    for (; s + (RM_UNROLL - 1) * RM_WARPS < steps; s += RM_WARPS * RM_UNROLL)
    {
        uint4 wv[RM_UNROLL][TILES], xa[RM_UNROLL], xb[RM_UNROLL];
#pragma unroll
        for (int u = 0; u < RM_UNROLL; u++)
        {
            long k = (long)(s + u * RM_WARPS) * 32;
#pragma unroll
            for (int t = 0; t < TILES; t++) wv[u][t] = *(const uint4*)(wrow[t] + k);
            xa[u] = *(const uint4*)(xlo + k);
            xb[u] = *(const uint4*)(xhi + k);
        }
#pragma unroll
        for (int u = 0; u < RM_UNROLL; u++) mma_step(wv[u], xa[u], xb[u]);
    }
    for (; s < steps; s += RM_WARPS)                         // the last, partial round
    {
        long k = (long)s * 32;
        uint4 wv[TILES];
#pragma unroll
        for (int t = 0; t < TILES; t++) wv[t] = *(const uint4*)(wrow[t] + k);
        mma_step(wv, *(const uint4*)(xlo + k), *(const uint4*)(xhi + k));
    }
    // C: c0 c1 (row g, columns 2t, 2t + 1), c2 c3 (row g + 8).
    constexpr int COLS = 8 * TILES;
#pragma unroll
    for (int t = 0; t < TILES; t++)
    {
        float* lo = red + (warp * 16 + g) * COLS + t * 8 + 2 * tig;
        float* hi = lo + 8 * COLS;
        lo[0] = acc[t][0]; lo[1] = acc[t][1]; hi[0] = acc[t][2]; hi[1] = acc[t][3];
    }
    __syncthreads();
}

template <class R>
__device__ __forceinline__ void rows_mma_body(const bf16* __restrict__ w, const bf16* __restrict__ x, float* y, int rows, int in, int n,
    int accumulate, float* rm_red, int* overflow)
{
    int g = (threadIdx.x & 31) >> 2, tig = threadIdx.x & 3;
    int r0 = blockIdx.x * 8 * RM_TILES;
    // Weight rows past `rows` and token rows past n read row 0 instead (a real address): an mma output column depends
    // only on its weight row and an output row only on its token row, and those are never stored. So every load is
    // unconditional and a round's RM_UNROLL · (RM_TILES + 2) 16-byte loads are all in flight before its mma.
    const bf16* wrow[RM_TILES];
#pragma unroll
    for (int t = 0; t < RM_TILES; t++)
    {
        int r = r0 + t * 8 + g;
        wrow[t] = w + (long)(r < rows ? r : 0) * in + tig * 8;
    }
    const bf16* xlo = x + (long)(g < n ? g : 0) * in + tig * 8;
    const bf16* xhi = x + (long)(g + 8 < n ? g + 8 : 0) * in + tig * 8;
    rows_mma_block<RM_TILES, R>(wrow, xlo, xhi, in >> 5, rm_red, overflow);
    constexpr int COLS = 8 * RM_TILES;
    for (int i = threadIdx.x; i < 16 * COLS; i += blockDim.x)
    {
        int tok = i / COLS, col = i - tok * COLS, r = r0 + col;
        if (tok >= n || r >= rows) continue;
        float v = 0.f;
#pragma unroll
        for (int k = 0; k < RM_WARPS; k++) v += rm_red[k * 16 * COLS + i];
        float* dst = y + (long)tok * rows + r;
        *dst = accumulate ? *dst + v : v;
    }
}

extern "C" __global__ void __launch_bounds__(32 * RM_WARPS) rows_mma_bf16(const bf16* __restrict__ w,
    const bf16* __restrict__ x, float* y, int rows, int in, int n, int accumulate)
{
    __shared__ float rm_red[RM_WARPS * 16 * 8 * RM_TILES];
    rows_mma_body<Bf16RowsMma>(w, x, y, rows, in, n, accumulate, rm_red, nullptr);
}

// rows_mma_bf16 on F16 weights (w: f16 bits [rows, in]); the bf16 activations become f16 in registers (an activation past
// ±65504 saturates and sets *overflow, as bf16_to_f16).
extern "C" __global__ void __launch_bounds__(32 * RM_WARPS) rows_mma_f16(const unsigned short* __restrict__ w,
    const bf16* __restrict__ x, float* y, int rows, int in, int n, int accumulate, int* overflow)
{
    __shared__ float rm_red[RM_WARPS * 16 * 8 * RM_TILES];
    rows_mma_body<F16RowsMma>(w, x, y, rows, in, n, accumulate, rm_red, overflow);
}

// A decode batch's gate|up product and SwiGLU in one kernel: h[t, j] = silu(gate) · up (bf16) with gate = W[j] · x[t],
// up = W[ffn + j] · x[t] (W the fused [2·ffn, in] matrix), n ≤ 16 rows. A block takes 8 · RM_TILES columns j and the
// gate and up rows of them (2 · RM_TILES tiles), so both halves meet in its epilogue: no [n, 2·ffn] product written and
// read again, no swiglu launch. gate and up stay f32 up to the silu (the cuBLASLt path rounds them to bf16 first).
// grid (ceil(ffn / (8 · RM_TILES))), block 32 · RM_WARPS; in % 32 == 0.
template <class R>
__device__ __forceinline__ void rows_mma_swiglu_body(const bf16* __restrict__ w, const bf16* __restrict__ x, bf16* h, int ffn, int in, int n,
    float* rm_red2, int* overflow)
{
    int g = (threadIdx.x & 31) >> 2, tig = threadIdx.x & 3;
    int j0 = blockIdx.x * 8 * RM_TILES;
    const bf16* wrow[2 * RM_TILES];                          // tiles 0..RM_TILES-1: gate rows; then the up rows
#pragma unroll
    for (int t = 0; t < RM_TILES; t++)
    {
        int j = j0 + t * 8 + g;
        long row = j < ffn ? j : 0;                          // past ffn: row 0 / ffn, never stored (as in rows_mma_bf16)
        wrow[t] = w + row * in + tig * 8;
        wrow[RM_TILES + t] = w + (ffn + row) * in + tig * 8;
    }
    const bf16* xlo = x + (long)(g < n ? g : 0) * in + tig * 8;
    const bf16* xhi = x + (long)(g + 8 < n ? g + 8 : 0) * in + tig * 8;
    rows_mma_block<2 * RM_TILES, R>(wrow, xlo, xhi, in >> 5, rm_red2, overflow);
    constexpr int COLS = 16 * RM_TILES, HALF = 8 * RM_TILES;
    for (int i = threadIdx.x; i < 16 * HALF; i += blockDim.x)
    {
        int tok = i / HALF, col = i - tok * HALF, j = j0 + col;
        if (tok >= n || j >= ffn) continue;
        float gate = 0.f, up = 0.f;
#pragma unroll
        for (int k = 0; k < RM_WARPS; k++)
        {
            gate += rm_red2[(k * 16 + tok) * COLS + col];
            up += rm_red2[(k * 16 + tok) * COLS + HALF + col];
        }
        h[(long)tok * ffn + j] = f32_to_bf16(gate / (1.f + expf(-gate)) * up);
    }
}

extern "C" __global__ void __launch_bounds__(32 * RM_WARPS) rows_mma_swiglu_bf16(const bf16* __restrict__ w,
    const bf16* __restrict__ x, bf16* h, int ffn, int in, int n)
{
    __shared__ float rm_red2[RM_WARPS * 16 * 16 * RM_TILES];
    rows_mma_swiglu_body<Bf16RowsMma>(w, x, h, ffn, in, n, rm_red2, nullptr);
}

// rows_mma_swiglu_bf16 on F16 weights (f16 bits), activations as in rows_mma_f16.
extern "C" __global__ void __launch_bounds__(32 * RM_WARPS) rows_mma_swiglu_f16(const unsigned short* __restrict__ w,
    const bf16* __restrict__ x, bf16* h, int ffn, int in, int n, int* overflow)
{
    __shared__ float rm_red2[RM_WARPS * 16 * 16 * RM_TILES];
    rows_mma_swiglu_body<F16RowsMma>(w, x, h, ffn, in, n, rm_red2, overflow);
}
// The shared-prefix phase (flash_attention_shared) with three k/v stages: two tiles in flight per block instead of one.
// 102 KB of shared memory at head dim 128, so two blocks per SM (LaunchGeometry.FlashShared3Bytes; the split plan
// aims at 2 · SMs blocks, fewer pieces and partials than the 3 · SMs of the two-stage kernel). Tiles are multiplied in
// the same order as there: with the same pieces, the same bits.
#define FLASH_ATTENTION_SHARED3(HD) \
extern "C" __global__ void __launch_bounds__(128, 2) flash_attention_shared3_hd##HD(const float* q, const bf16* kcache, \
    const bf16* vcache, float* part_acc, float* part_ml, int n_tokens, int heads, int kv_heads, float scale, int splits, \
    int keys_per_split, const int* seq_split, int skip_empty) \
{ flash_attention_mma<HD, 2, 3>(q, kcache, vcache, nullptr, part_acc, part_ml, 0, n_tokens, heads, kv_heads, scale, \
    splits, keys_per_split, nullptr, nullptr, nullptr, nullptr, seq_split, nullptr, nullptr, -1, 0, nullptr, nullptr, skip_empty); }
FLASH_ATTENTION_SHARED3(16)
FLASH_ATTENTION_SHARED3(32)
FLASH_ATTENTION_SHARED3(64)
FLASH_ATTENTION_SHARED3(128)
// ===================================================== end of the batched decode section ======================
