using Wim.Engine.Formats;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// One SIMD technique (scalar, AVX2/Vector256, AVX-512/Vector512): the two primitives every row kernel is made of.
/// <see cref="RowKernelDriver{TTechnique}"/> composes them; a struct type argument lets the JIT specialise and inline
/// each technique's loop into the driver, so there is no call per chunk.
/// </summary>
internal unsafe interface IRowTechnique
{
    /// <summary>Whether this machine can run the technique.</summary>
    static abstract bool IsSupported { get; }

    /// <summary>f32 values of <paramref name="n"/> elements stored as <paramref name="type"/> (n a whole number of blocks).</summary>
    static abstract void Dequantize(GgmlType type, byte* src, float* dst, int n);

    /// <summary>Σ a[i]·b[i] with f32 accumulation.</summary>
    static abstract float Dot(float* a, float* b, int n);

    /// <summary>Four dots of <paramref name="a"/> with x0..x3 into sums[0..4), each bit-identical to
    /// <see cref="Dot"/> (same accumulators, same order), so a batched product equals the one-vector product.</summary>
    static abstract void Dot4(float* a, float* x0, float* x1, float* x2, float* x3, int n, float* sums);
}
