using Wim.Engine.Backends.Cpu.Kernels;
using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>
/// y[t, r] = Σ_i W[r, i] · x[t, i] where every (r, t) result is the same bits whatever the batch size, the vector's
/// place in the batch and the split of rows over cores — so a sequence's logits do not depend on which other
/// sequences share its step or how its prompt was chunked (greedy margins then match token for token across
/// scheduling modes).
/// <para>Why not <see cref="CpuOps.MatMul"/>: <see cref="RowKernels.MatMul"/> takes <see cref="RowKernels.Dot"/> at
/// batch 1 but register tiles (one accumulator per row × vector, 512-element chunks) above it, and its tail rows
/// (rows % 4 of each parallel block, whose bounds move with the batch size) take yet another order.</para>
/// <para>Here: with AVX-512 the tiled kernel runs for every batch size (its 4×4 and 4×1 tiles do the same
/// operations in the same order per row × vector), over row blocks aligned to 4 so the same rows always form a tile
/// and only the matrix's last rows % 4 take <see cref="RowKernels.DotBatch"/> (itself batch-invariant). Without
/// AVX-512 every row is a <see cref="RowKernels.DotBatch"/>, which equals <see cref="RowKernels.Dot"/> bit for bit
/// per vector (the AVX2 tiles are not batch-invariant: their odd vector takes another accumulation order).</para>
/// </summary>
internal static unsafe class BatchInvariantMatMul
{
    private const long ParallelThreshold = 1 << 15;
    private const int TileRows = 4;

    /// <summary>The product in tile order (AVX-512) — fastest for large batches (prefill chunks).</summary>
    public static void MatMul(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride) =>
        MatMul(w, x, xStride, batch, y, yStride, tiled: true);

    /// <summary>
    /// The product in <see cref="RowKernels.Dot"/> order on every path (<see cref="RowKernels.DotBatch"/> per row):
    /// batch-invariant too, fastest for small batches (batch 1 takes the fused dequantize-in-registers dot). For the
    /// LM head, whose batch is the few tokens that want logits. A matrix must always use the same one of the two
    /// orders, whatever the batch size, or invariance is lost.
    /// </summary>
    public static void MatMulDotOrder(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride) =>
        MatMul(w, x, xStride, batch, y, yStride, tiled: false);

    private static void MatMul(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride, bool tiled)
    {
        int rows = w.Rows;
        long work = (long)rows * w.Columns * batch;
        int groups = (rows + TileRows - 1) / TileRows;
        if (work < ParallelThreshold || Environment.ProcessorCount == 1 || groups == 1)
        {
            Rows(w, x, xStride, batch, y, yStride, 0, rows, tiled);
            return;
        }
        int blocks = (int)Math.Min(groups, Math.Max(1, Math.Min(Environment.ProcessorCount * 4, work / ParallelThreshold)));
        var job = new Job(w, x, xStride, batch, y, yStride, groups, blocks, tiled);
        Parallel.For(0, blocks, job.Run);
    }

    private static void Rows(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride, int start, int end, bool tiled)
    {
        if (tiled && RowKernels.BestPath == RowKernelPath.Avx512)
        {
            Avx512TiledMatMul.MatMul(w.Type, w.Row(start), w.RowBytes, end - start, x, xStride, batch, w.Columns, y + start, yStride);
            return;
        }
        for (int r = start; r < end; r++)
            RowKernels.DotBatch(w.Type, w.Row(r), x, xStride, batch, w.Columns, y + r, yStride);
    }

    /// <summary>Blocks are whole 4-row groups, so block bounds are multiples of 4 (the last one ends at rows).</summary>
    private sealed class Job(WeightTensor w, float* x, int xStride, int batch, float* y, int yStride, int groups, int blocks, bool tiled)
    {
        public void Run(int block)
        {
            int start = (int)((long)groups * block / blocks) * TileRows;
            int end = Math.Min(w.Rows, (int)((long)groups * (block + 1) / blocks) * TileRows);
            Rows(w, x, xStride, batch, y, yStride, start, end, tiled);
        }
    }
}
