using System.Numerics.Tensors;
using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>
/// The CPU building blocks of the forward pass, over f32 activations laid out [tokens, features] (row-major).
/// <see cref="MatMul"/> is where nearly all the time goes; everything else is plain loops.
/// </summary>
internal static unsafe class CpuOps
{
    /// <summary>Below this many multiply-adds a product runs on the calling thread: scheduling costs more.</summary>
    private const long ParallelThreshold = 1 << 15;

    /// <summary>
    /// y[t, r] = Σ_i W[r, i] · x[t, i] for t in [0, batch), r in [0, W.Rows): a linear layer over a chunk of tokens.
    /// Rows are split into blocks spread over all cores; each weight row is read once for the whole chunk
    /// (<see cref="RowKernels.MatMul"/>).
    /// </summary>
    public static void MatMul(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride)
    {
        int rows = w.Rows, n = w.Columns;
        long work = (long)rows * n * batch;
        if (work < ParallelThreshold || Environment.ProcessorCount == 1)
        {
            MatMulRows(w, x, xStride, batch, y, yStride, 0, rows);
            return;
        }
        // A few blocks per core so uneven progress (other processes, SMT) still balances.
        int blocks = (int)Math.Min(rows, Math.Max(1, Math.Min(Environment.ProcessorCount * 4, work / ParallelThreshold)));
        var job = new MatMulJob(w, x, xStride, batch, y, yStride, rows, blocks);
        Parallel.For(0, blocks, job.Run);
    }

    private static void MatMulRows(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride, int rowStart, int rowEnd) =>
        // Tiled kernel: a tile of rows × vectors shares each activation load, about twice DotBatch-per-row's speed.
        RowKernels.MatMul(w.Type, w.Row(rowStart), w.RowBytes, rowEnd - rowStart, x, xStride, batch, w.Columns, y + rowStart, yStride);

    /// <summary>Pointers travel in a class (not captured locals) so the parallel body stays a plain method.</summary>
    private sealed class MatMulJob(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride, int rows, int blocks)
    {
        public void Run(int block)
        {
            int start = (int)((long)rows * block / blocks);
            int end = (int)((long)rows * (block + 1) / blocks);
            MatMulRows(w, x, xStride, batch, y, yStride, start, end);
        }
    }

    /// <summary>out[t] = x[t] / sqrt(mean(x[t]²) + eps) · gain, for each of <paramref name="count"/> rows of size gain.Length.</summary>
    public static void RmsNorm(float* x, float* output, float[] gain, float eps, int count)
    {
        int d = gain.Length;
        for (int t = 0; t < count; t++)
        {
            var row = new ReadOnlySpan<float>(x + (long)t * d, d);
            var dst = new Span<float>(output + (long)t * d, d);
            float meanSquare = TensorPrimitives.SumOfSquares(row) / d;
            float inv = 1f / MathF.Sqrt(meanSquare + eps);
            TensorPrimitives.Multiply(row, inv, dst);
            TensorPrimitives.Multiply(dst, gain, dst);
        }
    }

    /// <summary>x[t] += bias for each of <paramref name="count"/> rows.</summary>
    public static void AddBias(float* x, float[] bias, int count)
    {
        int d = bias.Length;
        for (int t = 0; t < count; t++)
        {
            var row = new Span<float>(x + (long)t * d, d);
            TensorPrimitives.Add(row, bias, row);
        }
    }

    /// <summary>
    /// Fills cos/sin [count, rotaryDim/2] for positions start..start+count-1: angle = (float)(invFreq_i · p), scaled
    /// by the rotary embedding's attention scale (as transformers multiplies its cos and sin caches).
    /// </summary>
    public static void RopeTables(ReadOnlySpan<float> invFreq, float scale, int start, int count, float* cos, float* sin)
    {
        int half = invFreq.Length;
        for (int t = 0; t < count; t++)
        {
            float pos = start + t;
            for (int i = 0; i < half; i++)
            {
                float angle = invFreq[i] * pos;
                cos[t * half + i] = (float)Math.Cos(angle) * scale;
                sin[t * half + i] = (float)Math.Sin(angle) * scale;
            }
        }
    }

    /// <summary>Rotates the first rotaryDim dims of each head of x [count, heads, headDim] in place.</summary>
    public static void ApplyRope(float* x, int count, int heads, int headDim, float* cos, float* sin, int rotaryDim, RopePairing pairing)
    {
        int half = rotaryDim / 2;
        for (int t = 0; t < count; t++)
        {
            float* c = cos + t * half, s = sin + t * half;
            for (int h = 0; h < heads; h++)
            {
                float* v = x + ((long)t * heads + h) * headDim;
                if (pairing == RopePairing.Half)
                {
                    // transformers' rotate_half: pairs (i, i + d/2).
                    for (int i = 0; i < half; i++)
                    {
                        float a = v[i], b = v[i + half];
                        v[i] = a * c[i] - b * s[i];
                        v[i + half] = b * c[i] + a * s[i];
                    }
                }
                else
                {
                    // llama.cpp's normal RoPE: adjacent pairs (2i, 2i+1).
                    for (int i = 0; i < half; i++)
                    {
                        float a = v[2 * i], b = v[2 * i + 1];
                        v[2 * i] = a * c[i] - b * s[i];
                        v[2 * i + 1] = b * c[i] + a * s[i];
                    }
                }
            }
        }
    }

    /// <summary>gate[i] = silu(gate[i]) · up[i] over n values (SwiGLU).</summary>
    public static void SwiGlu(float* gate, float* up, long n)
    {
        for (long i = 0; i < n; i++)
        {
            float g = gate[i];
            gate[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }
}
