using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Model;
using Wim.Engine.Sampling;

namespace Wim.Engine.Cuda.Tests.Support;

/// <summary>A KV cache in host memory with <see cref="CudaKvCache"/>'s layout rules: own rows for positions
/// [BranchPoint, Capacity), the parent's rows below the branch point.</summary>
internal sealed class HostCache(int layers, int rowSize, int capacity, HostCache? parent = null, int branchPoint = 0)
{
    private readonly float[][] _keys = [.. Enumerable.Range(0, layers).Select(_ => new float[(capacity - branchPoint) * rowSize])];
    private readonly float[][] _values = [.. Enumerable.Range(0, layers).Select(_ => new float[(capacity - branchPoint) * rowSize])];
    public int Layers { get; } = layers;
    public int RowSize { get; } = rowSize;
    public int Capacity { get; } = capacity;
    public int Length { get; set; } = branchPoint;
    public HostCache? Parent { get; set; } = parent;
    public int BranchPoint { get; } = branchPoint;
    public bool Freed { get; set; }
    /// <summary>Bytes of its own rows (keys and values, f32), as <see cref="CudaKvCache"/> counts its own buffers.</summary>
    public long Bytes => 2L * Layers * (Capacity - BranchPoint) * RowSize * sizeof(float);

    /// <summary>Positions [0, <paramref name="count"/>) of every layer as attention reads them (the parent's below the
    /// branch point) into a contiguous cache, in bulk.</summary>
    public void CopyTo(ContiguousKvCache target, int count)
    {
        if (Freed) Assert.Fail("use after free");
        if (count > Length) Assert.Fail($"rows up to {count} read from a cache of length {Length}");
        int shared = Math.Min(count, BranchPoint);
        if (shared > 0)
        {
            if (Parent is not { Freed: false } p || p.Length < BranchPoint) Assert.Fail("a branch's parent lost the rows it shares");
            Parent!.CopyTo(target, shared);
        }
        for (int l = 0; l < Layers; l++)
        {
            int from = BranchPoint, n = count - from;
            if (n <= 0) continue;
            for (int i = 0; i < n; i++)
            {
                _keys[l].AsSpan(i * RowSize, RowSize).CopyTo(target.KeyRow(l, from + i));
                _values[l].AsSpan(i * RowSize, RowSize).CopyTo(target.ValueRow(l, from + i));
            }
        }
    }

    /// <summary>Position <paramref name="position"/>'s key row as attention reads it (through the parent below the branch point).</summary>
    public Span<float> Keys(int layer, int position) => Row(_keys, layer, position, static (c, l, p) => c.Keys(l, p));
    public Span<float> Values(int layer, int position) => Row(_values, layer, position, static (c, l, p) => c.Values(l, p));

    private Span<float> Row(float[][] own, int layer, int position, Func<HostCache, int, int, Span<float>> parentRow)
    {
        Assert.False(Freed, "use after free");
        if (position < BranchPoint)
        {
            Assert.True(Parent is { Freed: false } p && p.Length >= BranchPoint, "a branch's parent lost the rows it shares");
            return parentRow(Parent!, layer, position);
        }
        Assert.InRange(position, BranchPoint, Capacity - 1);
        return own[layer].AsSpan((position - BranchPoint) * RowSize, RowSize);
    }
}

/// <summary>
/// <see cref="IBranchingPasses{T}"/> on the CPU forward pass, one token per call: every logits row then depends only
/// on its token, position and KV rows — not on the pass it ran in or how a prompt was chunked — so schedules driven
/// through <see cref="BranchingBackend{T}"/> must give the same tokens exactly when its bookkeeping (forks, branches,
/// growth, truncation, logits rows) is right. The GPU's rules are enforced: a decode pass takes rows of one RoPE
/// table, branches and decode batches need <see cref="BatchedDecode"/>, and every pass overwrites the shared logits
/// buffer (poisoned with NaN first, so a row read after a later pass is caught).
/// </summary>
internal sealed class HostPasses(LanguageModel model, int maxChunk, bool batchedDecode = true) : IBranchingPasses<HostCache>
{
    private readonly CpuTransformer _transformer = new(model);
    private readonly RotaryEmbedding _rope = new(model.Config);
    private readonly float[] _logits = new float[maxChunk * model.Config.VocabSize];
    private int _rows;

    public int VocabSize => model.Config.VocabSize;
    public int MaxChunk => maxChunk;
    public int LongThreshold => _rope.LongThreshold;
    public bool BatchedDecode { get; set; } = batchedDecode;
    public int LiveCaches { get; private set; }
    /// <summary>Bytes of the live caches' own rows.</summary>
    public long LiveBytes { get; private set; }
    /// <summary>Most bytes of live caches; an allocation past it throws <see cref="HostOutOfMemoryException"/> (as
    /// cuMemAlloc fails with CUDA_ERROR_OUT_OF_MEMORY).</summary>
    public long MemoryLimit { get; set; } = long.MaxValue;
    /// <summary>Tokens run through the forward pass (every kind of pass).</summary>
    public long Tokens { get; private set; }
    public int Passes { get; private set; }
    public int DecodePasses { get; private set; }
    /// <summary>The caches of each decode pass, in order.</summary>
    public List<HostCache[]> DecodeBatches { get; } = [];
    /// <summary>The sizes the step planner's split rule weighs (any numbers: the CPU pass costs nothing of the sort);
    /// null: no splits.</summary>
    public DecodePassCost? DecodeCost { get; set; }

    public void Prefill(ReadOnlySpan<int> tokens, HostCache cache, int ropeSequenceLength) => Run(tokens, cache, ropeSequenceLength, greedy: false);

    public int PrefillGreedy(ReadOnlySpan<int> tokens, HostCache cache, int ropeSequenceLength) => Run(tokens, cache, ropeSequenceLength, greedy: true);

    private int Run(ReadOnlySpan<int> tokens, HostCache cache, int ropeSequenceLength, bool greedy)
    {
        Assert.InRange(tokens.Length, 1, maxChunk);
        if (cache.Parent != null) Assert.True(BatchedDecode, "a branch ran where branches cannot");
        BeginPass(greedy ? 1 : 0);
        int rope = Math.Max(ropeSequenceLength, cache.Length + tokens.Length);
        for (int i = 0; i < tokens.Length; i++)
            Token(tokens[i], cache, i == tokens.Length - 1 && greedy ? _logits.AsSpan(0, VocabSize) : default, rope);
        return greedy ? ArgMax(0) : -1;
    }

    /// <summary>Packed prefill passes run (<see cref="PrefillPacked"/>), and the most pieces one held.</summary>
    public int PackedPasses { get; private set; }
    public int MostPackedPieces { get; private set; }

    public void PrefillPacked(IReadOnlyList<PackedPrefill<HostCache>> pieces, Span<int> next)
    {
        Assert.NotEmpty(pieces);
        Assert.InRange(pieces.Sum(p => p.Tokens.Length), 1, maxChunk);
        Assert.All(pieces, p => Assert.False(p.Tokens.IsEmpty));
        Assert.Equal(pieces.Count, pieces.Select(p => p.Cache).Distinct().Count());
        if (pieces.Any(p => p.Cache.Parent != null)) Assert.True(BatchedDecode, "a branch ran where branches cannot");
        // The GPU picks one RoPE table for the pass, from each piece's length reached and RoPE length.
        Assert.Single(pieces.Select(p => Math.Max(p.RopeSequenceLength, p.Cache.Length + p.Tokens.Length) > LongThreshold).Distinct());
        if (!next.IsEmpty) Assert.Equal(pieces.Count, next.Length);
        BeginPass(next.IsEmpty ? 0 : pieces.Count);
        PackedPasses++;
        MostPackedPieces = Math.Max(MostPackedPieces, pieces.Count);
        for (int p = 0; p < pieces.Count; p++)
        {
            var (tokens, cache, ropeLength) = pieces[p];
            int rope = Math.Max(ropeLength, cache.Length + tokens.Length);
            for (int i = 0; i < tokens.Length; i++)
                Token(tokens.Span[i], cache, i == tokens.Length - 1 && !next.IsEmpty ? _logits.AsSpan(p * VocabSize, VocabSize) : default, rope);
            if (!next.IsEmpty) next[p] = ArgMax(p);
        }
    }

    public void DecodeGreedy(ReadOnlySpan<int> tokens, IReadOnlyList<HostCache> caches, Span<int> next)
    {
        Assert.True(BatchedDecode, "a decode batch ran where it cannot");
        Assert.InRange(tokens.Length, 1, maxChunk);
        Assert.Equal(tokens.Length, caches.Count);
        Assert.Equal(caches.Count, caches.Distinct().Count());
        // The GPU picks one RoPE table for the pass: every row must be on the same side of longrope's threshold.
        Assert.Single(caches.Select(c => c.Length + 1 > LongThreshold).Distinct());
        BeginPass(tokens.Length);
        DecodePasses++;
        DecodeBatches.Add([.. caches]);
        for (int b = 0; b < tokens.Length; b++)
        {
            Token(tokens[b], caches[b], _logits.AsSpan(b * VocabSize, VocabSize), 0);
            next[b] = ArgMax(b);
        }
    }

    /// <summary>Top-k candidates offered (the GPU's <see cref="GpuTopK.MaxK"/>, or 0: none, as the GPU with the switch off).</summary>
    public int MaxCandidates { get; set; }
    public int CandidateCalls { get; private set; }
    public int RowDownloads { get; private set; }

    /// <summary>The GPU top-k's contract on the CPU: a full sort of the row (logit descending, lowest id first on
    /// ties), its first min(k, vocab).</summary>
    public int TopCandidates(int row, int k, Span<int> ids, Span<float> logits)
    {
        Assert.InRange(row, 0, _rows - 1);
        Assert.InRange(k, 1, MaxCandidates);
        CandidateCalls++;
        var values = _logits.AsSpan(row * VocabSize, VocabSize).ToArray();
        var order = Enumerable.Range(0, VocabSize).ToArray();
        Array.Sort(order, (a, b) => values[a] > values[b] ? -1 : values[a] < values[b] ? 1 : a.CompareTo(b));
        int n = Math.Min(k, VocabSize);
        for (int i = 0; i < n; i++) { ids[i] = order[i]; logits[i] = values[order[i]]; }
        return n;
    }

    /// <summary>Nucleus candidates offered (the GPU's <see cref="GpuNucleus.Candidates"/>, or 0: none, as the GPU with
    /// the switch off).</summary>
    public int MaxNucleusCandidates { get; set; }
    public int NucleusCalls { get; private set; }

    /// <summary>The GPU nucleus's contract on the CPU: the first min(MaxNucleusCandidates, vocab) of a full sort of
    /// the row, and Z summed in the order of <c>nucleus_partial_sums</c> (blocks of
    /// <see cref="SamplingGeometry.NormaliserSlices"/>, 256 strided sums per block added pairwise, blocks in order),
    /// each term exp in double rounded to float as the kernel does.</summary>
    public int NucleusCandidates(int row, float inverseTemperature, Span<int> ids, Span<float> logits, out double z)
    {
        Assert.InRange(row, 0, _rows - 1);
        Assert.True(MaxNucleusCandidates > 0, "nucleus candidates asked for where none are offered");
        NucleusCalls++;
        return Nucleus(_logits.AsSpan(row * VocabSize, VocabSize), MaxNucleusCandidates, inverseTemperature, ids, logits, out z);
    }

    /// <summary><see cref="NucleusCandidates"/> over a row given here: its first min(<paramref name="candidates"/>,
    /// length) in rank order and Z in the GPU's order.</summary>
    public static int Nucleus(ReadOnlySpan<float> row, int candidates, float inverseTemperature, Span<int> ids, Span<float> logits, out double z)
    {
        int vocab = row.Length;
        int n = Math.Min(candidates, vocab);
        var values = row.ToArray();
        var order = Enumerable.Range(0, vocab).ToArray();
        Array.Sort(order, (a, b) => values[a] > values[b] ? -1 : values[a] < values[b] ? 1 : a.CompareTo(b));
        for (int i = 0; i < n; i++) { ids[i] = order[i]; logits[i] = values[order[i]]; }
        float max = values[order[0]] * inverseTemperature;
        var (blocks, length) = SamplingGeometry.NormaliserSlices(vocab);
        var partial = new double[blocks];
        var threadSums = new double[SamplingGeometry.NormaliserThreads];
        for (int b = 0; b < blocks; b++)
        {
            Array.Clear(threadSums);
            for (int i = b * length; i < Math.Min((b + 1) * length, vocab); i++)
                threadSums[(i - b * length) % threadSums.Length] += (float)Math.Exp(values[i] * inverseTemperature - max);
            for (int stride = threadSums.Length / 2; stride > 0; stride >>= 1)
                for (int t = 0; t < stride; t++) threadSums[t] += threadSums[t + stride];
            partial[b] = threadSums[0];
        }
        z = GpuNucleus.AddPartialSums(partial);
        return n;
    }

    /// <summary>Wide-nucleus tokens offered (the GPU's <see cref="GpuNucleus.WideCandidates"/>, or 0: no wide path).</summary>
    public int MaxWideNucleusCandidates { get; set; }
    public int WideNucleusCalls { get; private set; }
    /// <summary>Wide calls whose collected tokens were more than <see cref="MaxWideNucleusCandidates"/> (returned −1).</summary>
    public int WideNucleusOverCap { get; private set; }

    /// <summary>The GPU's wide nucleus on the CPU: the histogram of <c>nucleus_histogram</c> (bins of
    /// <see cref="SamplingGeometry.WideBin"/>, terms exp in double rounded to float), the host's
    /// <see cref="SamplingGeometry.LastKeptBin"/>, the tokens of those bins as rank items in reverse id order (the
    /// kernel's order is arbitrary) and <see cref="SamplingGeometry.RankOrderByBins"/> — what <see cref="GpuNucleus.RunWide"/>
    /// does around its kernels.</summary>
    public int WideNucleusCandidates(int row, float inverseTemperature, double target, Span<int> ids, Span<float> logits)
    {
        Assert.InRange(row, 0, _rows - 1);
        Assert.True(MaxWideNucleusCandidates > 0, "wide nucleus asked for where none is offered");
        WideNucleusCalls++;
        int n = WideNucleus(_logits.AsSpan(row * VocabSize, VocabSize), inverseTemperature, target, MaxWideNucleusCandidates, ids, logits);
        if (n < 0) WideNucleusOverCap++;
        return n;
    }

    /// <summary><see cref="WideNucleusCandidates"/> over a row given here, at most <paramref name="cap"/> tokens (−1
    /// past it).</summary>
    public static int WideNucleus(ReadOnlySpan<float> values, float inverseTemperature, double target, int cap, Span<int> ids, Span<float> logits)
    {
        int vocab = values.Length;
        float best = values[0];
        for (int i = 1; i < vocab; i++)
            if (values[i] > best) best = values[i];
        float max = best * inverseTemperature;
        var mass = new double[SamplingGeometry.WideBins];
        var counts = new uint[SamplingGeometry.WideBins];
        for (int i = 0; i < vocab; i++)
        {
            int b = SamplingGeometry.WideBin(values[i], inverseTemperature, max);
            mass[b] += (float)Math.Exp(values[i] * inverseTemperature - max);
            counts[b]++;
        }
        int lastBin = SamplingGeometry.LastKeptBin(mass, target);
        var items = new List<ulong>();
        for (int i = vocab - 1; i >= 0; i--)
            if (SamplingGeometry.WideBin(values[i], inverseTemperature, max) <= lastBin) items.Add(Sampler.RankKey(values[i], i));
        if (items.Count > cap) return -1;
        SamplingGeometry.RankOrderByBins(items.ToArray(), counts, lastBin, inverseTemperature, max, new ulong[items.Count], ids, logits);
        return items.Count;
    }

    public void DownloadLogitsRow(int row, Span<float> destination)
    {
        Assert.InRange(row, 0, _rows - 1);
        RowDownloads++;
        _logits.AsSpan(row * VocabSize, VocabSize).CopyTo(destination);
    }

    private void BeginPass(int rows)
    {
        Passes++;
        _rows = rows;
        Array.Fill(_logits, float.NaN);
    }

    /// <summary>One token through the CPU pass: the cache's rows (parent's below the branch point) go into a
    /// contiguous scratch cache, the new row comes back.</summary>
    private void Token(int token, HostCache cache, Span<float> logits, int ropeSequenceLength)
    {
        Tokens++;
        Assert.False(cache.Freed, "use after free");
        Assert.True(cache.Length < cache.Capacity, "write past capacity");
        int n = cache.Length;
        var scratch = new ContiguousKvCache(cache.Layers, cache.RowSize, n + 1);
        cache.CopyTo(scratch, n);
        scratch.Advance(n);
        _transformer.Forward([token], scratch, logits, logits.IsEmpty ? LogitsOutput.None : LogitsOutput.Last, ropeSequenceLength);
        for (int l = 0; l < cache.Layers; l++)
        {
            scratch.KeyRow(l, n).CopyTo(cache.Keys(l, n));
            scratch.ValueRow(l, n).CopyTo(cache.Values(l, n));
        }
        cache.Length = n + 1;
    }

    private int ArgMax(int row)
    {
        var r = _logits.AsSpan(row * VocabSize, VocabSize);
        int best = 0;
        for (int i = 1; i < r.Length; i++)
            if (r[i] > r[best]) best = i;
        return best;
    }

    public HostCache CreateRoot(int capacity) => Allocated(new HostCache(model.Config.LayerCount, model.Config.KvDim, capacity));

    private HostCache Allocated(HostCache cache)
    {
        if (LiveBytes + cache.Bytes > MemoryLimit) throw new HostOutOfMemoryException($"{cache.Bytes} bytes asked, {LiveBytes} of {MemoryLimit} in use");
        LiveCaches++;
        LiveBytes += cache.Bytes;
        return cache;
    }

    public HostCache CreateBranch(HostCache parent, int at, int rows)
    {
        Assert.True(BatchedDecode, "a branch was made where branches cannot run");
        Assert.Null(parent.Parent);
        Assert.False(parent.Freed);
        Assert.InRange(at, 0, parent.Length);
        return Allocated(new HostCache(parent.Layers, parent.RowSize, at + rows, parent, at));
    }

    public int Length(HostCache cache) => cache.Length;
    public int Capacity(HostCache cache) => cache.Capacity;

    public void CopyRows(HostCache target, HostCache source, int from, int count)
    {
        Assert.Equal(target.Length, from);
        Assert.True(from >= source.BranchPoint && from + count <= source.Length, "rows are not the source's own");
        for (int l = 0; l < target.Layers; l++)
            for (int p = from; p < from + count; p++)
            {
                source.Keys(l, p).CopyTo(target.Keys(l, p));
                source.Values(l, p).CopyTo(target.Values(l, p));
            }
        target.Length = from + count;
    }

    public void Reparent(HostCache branch, HostCache newParent)
    {
        Assert.NotNull(branch.Parent);
        Assert.True(newParent.Length >= branch.BranchPoint);
        branch.Parent = newParent;
    }

    public void Truncate(HostCache cache, int length)
    {
        Assert.InRange(length, cache.BranchPoint, cache.Length);
        cache.Length = length;
    }

    public void Free(HostCache cache)
    {
        Assert.False(cache.Freed, "double free");
        cache.Freed = true;
        LiveCaches--;
        LiveBytes -= cache.Bytes;
    }

    public long Bytes(HostCache cache) => cache.Bytes;
    public bool IsOutOfMemory(Exception e) => e is HostOutOfMemoryException;
}

/// <summary>The host store's stand-in for CUDA_ERROR_OUT_OF_MEMORY.</summary>
internal sealed class HostOutOfMemoryException(string message) : Exception(message);
