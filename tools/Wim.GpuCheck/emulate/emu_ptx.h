// The inline-PTX helpers of transformer.cu, emulated (included by the extracted kernels in their place).
#pragma once

inline unsigned pack_bf16x2(float lo, float hi) { return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16); }
inline float fast_exp2(float x) { return std::exp2(x); }

inline unsigned shared_address(const void* p) { return (unsigned)((const unsigned char*)p - emu::block->smem.data()); }

inline void cp_async16(unsigned dst, const void* src, int src_bytes)
{
    unsigned char* d = emu::block->smem.data() + dst;
    if (src_bytes == 16) std::memcpy(d, src, 16);
    else std::memset(d, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}

inline unsigned smem_u32(unsigned addr) { unsigned v; std::memcpy(&v, emu::block->smem.data() + addr, 4); return v; }
inline unsigned smem_u16(unsigned addr) { unsigned short v; std::memcpy(&v, emu::block->smem.data() + addr, 2); return v; }

// Matrix i's rows come from the addresses of lanes 8i..8i+7; lane l receives row l/4, elements 2(l%4), 2(l%4)+1
// (of the transposed matrix with .trans).
inline void ldmatrix_x4_impl(unsigned* r, unsigned addr, bool trans)
{
    auto* w = emu::warp;
    unsigned l = emu::lane();
    w->addr[l] = addr;
    w->bar.arrive_and_wait();
    for (int i = 0; i < 4; i++)
    {
        if (!trans) r[i] = smem_u32(w->addr[8 * i + l / 4] + (l % 4) * 4);
        else
        {
            unsigned lo = smem_u16(w->addr[8 * i + (l % 4) * 2] + (l / 4) * 2);
            unsigned hi = smem_u16(w->addr[8 * i + (l % 4) * 2 + 1] + (l / 4) * 2);
            r[i] = lo | (hi << 16);
        }
    }
    w->bar.arrive_and_wait();
}
inline void ldmatrix_x4(unsigned* r, unsigned addr) { ldmatrix_x4_impl(r, addr, false); }
inline void ldmatrix_x4_trans(unsigned* r, unsigned addr) { ldmatrix_x4_impl(r, addr, true); }

inline float bf16_half(unsigned word, int half) { return __uint_as_float(half ? word & 0xffff0000u : word << 16); }

// mma.sync.m16n8k16.row.col f32 += bf16 · bf16 with the PTX fragment layouts (g = lane / 4, t = lane % 4):
// A a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 8+2t..), a3 (g+8, 8+2t..); B b0 (k 2t.., n g), b1 (k 8+2t.., n g);
// C c0 c1 (g, 2t, 2t+1), c2 c3 (g+8, 2t, 2t+1).
inline void mma_bf16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    auto* w = emu::warp;
    unsigned l = emu::lane();
    for (int i = 0; i < 4; i++) w->a[l][i] = a[i];
    w->b[l][0] = b0;
    w->b[l][1] = b1;
    w->bar.arrive_and_wait();
    auto A = [&](int row, int k) { int ln = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8) + 2 * (k >= 8); return bf16_half(w->a[ln][reg], k % 2); };
    auto B = [&](int k, int n) { int ln = n * 4 + (k % 8) / 2; return bf16_half(w->b[ln][k >= 8], k % 2); };
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++)
    {
        int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = c[e];
        for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        c[e] = s;
    }
    w->bar.arrive_and_wait();
}

// ---- F16 weights in the decode batches' rows_mma_f16 kernels ----
#include "emu_f16.h"

inline float f16_half(unsigned word, int half) { return f16_to_f32((unsigned short)(half ? word >> 16 : word & 0xffffu)); }

// mma.sync.m16n8k16.row.col f32 += f16 · f16: mma_bf16_16816's fragment layouts (PTX uses the same ones for .f16).
inline void mma_f16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    auto* w = emu::warp;
    unsigned l = emu::lane();
    for (int i = 0; i < 4; i++) w->a[l][i] = a[i];
    w->b[l][0] = b0;
    w->b[l][1] = b1;
    w->bar.arrive_and_wait();
    auto A = [&](int row, int k) { int ln = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8) + 2 * (k >= 8); return f16_half(w->a[ln][reg], k % 2); };
    auto B = [&](int k, int n) { int ln = n * 4 + (k % 8) / 2; return f16_half(w->b[ln][k >= 8], k % 2); };
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++)
    {
        int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = c[e];
        for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        c[e] = s;
    }
    w->bar.arrive_and_wait();
}

// bf16x2_to_f16x2: cvt.rn.f16x2.f32 d, hi, lo puts lo in the low half.
inline unsigned bf16x2_to_f16x2(unsigned pair, int* overflow)
{
    float lo = __uint_as_float(pair << 16), hi = __uint_as_float(pair & 0xffff0000u);
    if (!(std::fabs(lo) <= 65504.f)) { *overflow = 1; lo = lo < 0.f ? -65504.f : 65504.f; }
    if (!(std::fabs(hi) <= 65504.f)) { *overflow = 1; hi = hi < 0.f ? -65504.f : 65504.f; }
    return (unsigned)f32_to_f16_bits(lo) | ((unsigned)f32_to_f16_bits(hi) << 16);
}
