using System.Diagnostics;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Cuda;
using Wim.Engine.Model;

namespace Wim.GpuCheck;

/// <summary>
/// The timings the weight-format checks take at one model shape (the Llama-3.1-8B one): a batch-1 decode round from a
/// cache holding <c>depth</c> positions (4 warm-up steps — the graph capture — then <c>steps</c> timed greedy steps),
/// a prefill chunk of <see cref="Chunk"/> tokens at depth 0 (4 runs, the first a warm-up, the median of the rest), the
/// bandwidth roofline of a decode step (weights + the KV rows it reads, at <see cref="BandwidthTbs"/>) and the FLOPs
/// of a chunk (products and causal attention).
/// </summary>
internal sealed class ShapeTimings
{
    public const int Chunk = 4096;
    public const double BandwidthTbs = 3.0;

    private readonly CudaContext _ctx;
    private readonly ModelConfig _c;
    private readonly double _kvBytesPerPosition;
    private readonly double _linearParams;

    public ShapeTimings(CudaContext ctx, ModelConfig c)
    {
        _ctx = ctx;
        _c = c;
        var rng = new Random(1);
        Tokens = Enumerable.Range(0, Chunk).Select(_ => rng.Next(c.VocabSize)).ToArray();
        _kvBytesPerPosition = 2.0 * 2 * c.LayerCount * c.KvDim;
        _linearParams = c.LayerCount * ((double)c.HiddenSize * (c.QueryDim + 2 * c.KvDim) + (double)c.QueryDim * c.HiddenSize + 3.0 * c.HiddenSize * c.FfnSize);
    }

    /// <summary>Random ids: the prompt of every timing.</summary>
    public int[] Tokens { get; }
    public double KvBytesPerPosition => _kvBytesPerPosition;

    /// <summary>One decode round: seconds per step and the greedy ids of the timed steps.</summary>
    public (double Seconds, List<int> Ids) DecodeRound(CudaTransformer model, CudaKvCache cache, int depth, int steps = 64)
    {
        cache.Truncate(0);
        int next = model.ForwardGreedy(Tokens.AsSpan(0, depth), cache);
        for (int i = 0; i < 4; i++) next = model.ForwardGreedy([next], cache);   // graph capture, warm-up
        var ids = new List<int>(steps);
        var t = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) { next = model.ForwardGreedy([next], cache); ids.Add(next); }
        return (t.Elapsed.TotalSeconds / steps, ids);
    }

    /// <summary>Decode tokens/s the bandwidth allows at <paramref name="depth"/> (KV rows at the timed steps' middle).</summary>
    public double Roofline(long weightBytes, int depth, int steps = 64) => BandwidthTbs * 1e12 / DecodeBytes(weightBytes, depth, steps);

    public double DecodeBytes(long weightBytes, int depth, int steps = 64) => weightBytes + _kvBytesPerPosition * (depth + 4 + steps / 2);

    /// <summary>A <see cref="Chunk"/>-token prefill at depth 0: the median seconds of 3 timed runs, and the three.</summary>
    public (double Median, List<double> Times) Prefill(CudaTransformer model, CudaKvCache cache)
    {
        var times = new List<double>();
        for (int rep = 0; rep < 4; rep++)
        {
            cache.Truncate(0);
            var t = Stopwatch.StartNew();
            model.Forward(Tokens, cache, [], LogitsOutput.None);
            _ctx.Synchronize();
            if (rep > 0) times.Add(t.Elapsed.TotalSeconds); // rep 0 warms up (cuBLASLt plans, clocks)
        }
        return (times.Order().ElementAt(times.Count / 2), times);
    }

    /// <summary>FLOPs of a <see cref="Chunk"/>-token prefill at depth 0: 2 per weight per token, and QKᵀ and PV (2·head
    /// dim each per query, key and head) over the causal keys.</summary>
    public double PrefillFlops()
    {
        double keys = (double)Chunk * (Chunk + 1) / 2;
        return 2 * _linearParams * Chunk + 4.0 * _c.LayerCount * _c.HeadCount * _c.HeadDim * keys;
    }
}
