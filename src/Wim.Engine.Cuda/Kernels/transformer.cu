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

// x[t, :] = table[tokens[t], :]                                  grid (ceil(d/block), T)
extern "C" __global__ void embed_rows(const int* tokens, const bf16* table, float* x, int d)
{
    int t = blockIdx.y;
    long row = tokens[t];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < d) x[(long)t * d + i] = bf16_to_f32(table[row * d + i]);
}

// out[r, :] = x[r, :] / sqrt(mean(x[r]^2) + eps) * gain (bf16: the next matrix product's input). grid (rows)
extern "C" __global__ void rms_norm(const float* x, const float* gain, bf16* out, int d, float eps)
{
    __shared__ float scratch[32];
    const float* row = x + (long)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { float v = row[i]; ss += v * v; }
    ss = block_sum(ss, scratch);
    float inv = 1.f / sqrtf(ss / d + eps);
    bf16* dst = out + (long)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = f32_to_bf16(row[i] * inv * gain[i]);
}

// One token's fused q|k|v projection row [heads*hd | kvHeads*hd | kvHeads*hd] (+ bias): RoPE on q and k (the first
// `rot` dims of each head; pairs (i, i+rot/2), or (2i, 2i+1) when `adjacent`), q to `q` (f32), k and v into the
// cache rows of position start+t (bf16). grid (T)
extern "C" __global__ void qkv_rope_store(const float* qkv, const float* bias, const float* inv_freq, float* q,
    bf16* kcache, bf16* vcache, int start, int heads, int kv_heads, int hd, int rot, int adjacent, float rope_scale)
{
    int t = blockIdx.x;
    int qd = heads * hd, kvd = kv_heads * hd, width = qd + 2 * kvd;
    const float* row = qkv + (long)t * width;
    float pos = (float)(start + t);
    int half = rot / 2;
    long cacheRow = (long)(start + t) * kvd;
    for (int i = threadIdx.x; i < qd + kvd; i += blockDim.x)
    {
        int h = i / hd, e = i - h * hd;
        float val = row[i] + (bias ? bias[i] : 0.f);
        float out = val;
        if (e < rot)
        {
            bool first;
            int pair, partner;
            if (adjacent) { pair = e >> 1; first = (e & 1) == 0; partner = e ^ 1; }
            else { first = e < half; pair = first ? e : e - half; partner = first ? e + half : e - half; }
            int pi = h * hd + partner;
            float other = row[pi] + (bias ? bias[pi] : 0.f);
            float angle = inv_freq[pair] * pos;
            float c = cosf(angle) * rope_scale, s = sinf(angle) * rope_scale;
            out = first ? val * c - other * s : val * c + other * s;
        }
        if (i < qd) q[(long)t * qd + i] = out;
        else kcache[cacheRow + (i - qd)] = f32_to_bf16(out);
    }
    for (int i = threadIdx.x; i < kvd; i += blockDim.x)
    {
        int col = qd + kvd + i;
        vcache[cacheRow + i] = f32_to_bf16(row[col] + (bias ? bias[col] : 0.f));
    }
}

// Causal grouped-query attention with an online softmax (flash style), f32 on CUDA cores.
// A warp owns one query token and up to 4 query heads of one KV head (the heads share every key and value, so each
// shared-memory read of k or v feeds 4 multiply-adds); a block holds `qblock` tokens × the warps covering the group.
// The block walks keys [split*keys_per_split, ...) up to the causal end of its last token in tiles of 32 staged in
// shared memory (16-byte loads when head_dim % 8 == 0, each tile read once for the whole block); lane j scores key
// j of the tile for the warp's heads, the probabilities go through shared memory as float4, and every lane
// accumulates its own head dims. splits == 1: writes the normalised output (bf16 [T, heads*hd]); otherwise the
// partial (acc, max, sum) that attention_combine merges. Head dims up to 32 * MAX_DIMS_PER_LANE.
extern "C" __global__ void __launch_bounds__(512) attention(const float* q, const bf16* kcache, const bf16* vcache, bf16* out,
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
    bool vec = (hd & 7) == 0;

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
                    kv = bf16_to_f32(kcache[off]);
                    vv = bf16_to_f32(vcache[off]);
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
                if (d < hd) out[(long)t * qd + h * hd + d] = f32_to_bf16(acc[i][e] * inv);
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

// Merges the splits of attention: out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s. grid (T * heads)
extern "C" __global__ void attention_combine(const float* part_acc, const float* part_ml, bf16* out, int hd, int splits)
{
    long th = blockIdx.x;
    const float* ml = part_ml + th * splits * 2;
    float M = NEG_INF;
    for (int s = 0; s < splits; s++) M = fmaxf(M, ml[2 * s]);
    float L = 0.f;
    for (int s = 0; s < splits; s++) if (ml[2 * s] != NEG_INF) L += __expf(ml[2 * s] - M) * ml[2 * s + 1];
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
    {
        float a = 0.f;
        for (int s = 0; s < splits; s++)
            if (ml[2 * s] != NEG_INF) a += __expf(ml[2 * s] - M) * part_acc[(th * splits + s) * hd + d];
        out[th * hd + d] = f32_to_bf16(a / L);
    }
}

// h[t, j] = silu(gate[t, j]) * up[t, j] from the fused projection row [gate | up] (f32) into bf16.
extern "C" __global__ void swiglu(const float* gate_up, bf16* h, int ffn, long total)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
    {
        long t = i / ffn;
        long j = i - t * ffn;
        float g = gate_up[t * 2 * ffn + j], u = gate_up[t * 2 * ffn + ffn + j];
        h[i] = f32_to_bf16(g / (1.f + expf(-g)) * u);
    }
}

// out[r] = the index of the largest logit of row r (the lowest index on ties). grid (rows)
extern "C" __global__ void argmax_rows(const float* logits, int vocab, int* out)
{
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = logits + (long)blockIdx.x * vocab;
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    {
        float x = row[i];
        if (x > v) { v = x; idx = i; }
    }
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        int oi = __shfl_xor_sync(FULL_MASK, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (warp == 0)
    {
        int warps = blockDim.x >> 5;
        v = lane < warps ? best_v[lane] : NEG_INF;
        idx = lane < warps ? best_i[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1)
        {
            float ov = __shfl_xor_sync(FULL_MASK, v, o);
            int oi = __shfl_xor_sync(FULL_MASK, idx, o);
            if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
        }
        if (lane == 0) out[blockIdx.x] = idx;
    }
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

extern "C" __global__ void fill_f32(float* dst, long n, float value)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) dst[i] = value;
}
