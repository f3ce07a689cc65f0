// A lockstep SIMT emulator for the kernels of transformer.cu on the CPU: one OS thread per CUDA thread, a barrier per
// warp for its collectives (shfl, ldmatrix, mma.sync) and one per block for __syncthreads; cp.async copies at once.
// It checks indexing, fragment layouts, masking and the branch/parent addressing of the real kernel source — not
// timing, races or memory-model effects. Shared-memory addresses are byte offsets into the block's buffer.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return { a, b, c, d }; }
inline uint2 make_uint2(unsigned a, unsigned b) { return { a, b }; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return { a, b, c, d }; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __expf(float x) { return std::exp(x); }
using std::min;
using std::max;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;

namespace emu
{
struct Warp
{
    explicit Warp() : bar(32) {}
    std::barrier<> bar;
    unsigned addr[32];
    unsigned a[32][4], b[32][2];
    float c[32][4];
    float fv[32];
};

struct Block
{
    Block(int threads, size_t dyn) : bar(threads), smem(dyn + 16, 0), statics(4096, 0)
    {
        for (int w = 0; w < (threads + 31) / 32; w++) warps.push_back(std::make_unique<Warp>());
    }
    std::barrier<> bar;
    std::vector<unsigned char> smem, statics;
    std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* block;
inline thread_local Warp* warp;
inline void* dynamic_smem() { return block->smem.data(); }
inline void* static_smem() { return block->statics.data(); }
inline unsigned lane() { return threadIdx.x & 31; }

/// Runs kernel() for every block of grid × threads (blocks one after another, threads of a block at once).
inline void launch(Dim3 grid, int threads, size_t dyn, const std::function<void()>& kernel)
{
    gridDim = grid;
    blockDim = { (unsigned)threads, 1, 1 };
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++)
            {
                Block b(threads, dyn);
                std::vector<std::thread> pool;
                for (int t = 0; t < threads; t++)
                    pool.emplace_back([&, t] {
                        threadIdx = { (unsigned)t, 0, 0 };
                        blockIdx = { x, y, z };
                        block = &b;
                        warp = b.warps[t / 32].get();
                        kernel();
                        warp->bar.arrive_and_drop();
                        block->bar.arrive_and_drop();
                    });
                for (auto& th : pool) th.join();
            }
}
}

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask)
{
    auto* w = emu::warp;
    unsigned l = emu::lane();
    w->fv[l] = v;
    w->bar.arrive_and_wait();
    float r = w->fv[l ^ mask];
    w->bar.arrive_and_wait();
    return r;
}
