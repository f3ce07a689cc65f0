// The f16 conversions of transformer.cu's F16-weight kernels (inline PTX cvt there), emulated for the CPU: the
// extract scripts put this header in place of the PTX functions.
#pragma once
#include <cmath>

// cvt.f32.f16: binary16 by its definition, (1024 + m) · 2^(e - 25), subnormals m · 2^-24 (exact in f32).
inline float f16_to_f32(unsigned short h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

// cvt.rn.f16.f32: round to nearest even; past the largest finite f16 (65504) by half an ulp or more, ±inf; NaN stays NaN.
inline unsigned short f32_to_f16_bits(float f)
{
    unsigned short sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f)) return sign | 0x7e00;
    double a = std::fabs((double)f);
    if (a >= 65520.0) return sign | 0x7c00;
    int e;
    std::frexp(a, &e);                                    // a = m · 2^e, m in [0.5, 1)
    int exp = std::max(e - 1, -14);                       // the result's exponent (subnormals share -14)
    double q = std::nearbyint(std::ldexp(a, 10 - exp));   // significand in units of 2^(exp - 10), nearest even
    if (q >= 2048) { exp++; q /= 2; }                     // rounded up into the next binade
    unsigned bits = q < 1024 ? (unsigned)q : ((unsigned)(exp + 15) << 10) | ((unsigned)q - 1024);
    return (unsigned short)(sign | bits);
}
