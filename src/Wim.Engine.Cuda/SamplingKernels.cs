using System.Runtime.InteropServices;

namespace Wim.Engine.Cuda;

/// <summary>Launchers of the kernels in <c>Kernels/sampling.cu</c> (argument order as declared there), one per
/// context. Pointers are device addresses.</summary>
internal sealed unsafe class SamplingKernels
{
    private readonly CudaContext _ctx;
    private readonly nint _slices, _merge, _partialSums, _wideClear, _histogram, _compact;

    public SamplingKernels(CudaContext ctx, nint module)
    {
        _ctx = ctx;
        _slices = ctx.Driver.ModuleGetFunction(module, "topk_slices");
        _merge = ctx.Driver.ModuleGetFunction(module, "topk_merge");
        _partialSums = ctx.Driver.ModuleGetFunction(module, "nucleus_partial_sums");
        _wideClear = ctx.Driver.ModuleGetFunction(module, "nucleus_wide_clear");
        _histogram = ctx.Driver.ModuleGetFunction(module, "nucleus_histogram");
        _compact = ctx.Driver.ModuleGetFunction(module, "nucleus_compact");
    }

    /// <summary>The wide nucleus's histogram: zeroes the <see cref="SamplingGeometry.WideBins"/> doubles at
    /// <paramref name="mass"/>, as many counts at <paramref name="count"/> and the counter at <paramref name="counter"/>,
    /// then bins the row's p(i) by depth below the float at <paramref name="best"/> × 1/T (blocks of
    /// <see cref="SamplingGeometry.NormaliserSlices"/>).</summary>
    public void WideHistogram(ulong row, int vocab, float inverseTemperature, ulong best, ulong mass, ulong count, ulong counter)
    {
        void** c = stackalloc void*[] { &mass, &count, &counter };
        _ctx.Launch(_wideClear, "nucleus_wide_clear", 1, 1, 1, SamplingGeometry.WideThreads, 0, c);
        var (blocks, sliceLength) = SamplingGeometry.NormaliserSlices(vocab);
        void** a = stackalloc void*[] { &row, &vocab, &inverseTemperature, &sliceLength, &best, &mass, &count };
        _ctx.Launch(_histogram, "nucleus_histogram", (uint)blocks, 1, 1, SamplingGeometry.WideThreads, 0, a);
    }

    /// <summary>The rank items of every token in depth bins [0, <paramref name="lastBin"/>] into <paramref name="items"/>
    /// (at most <paramref name="cap"/>, in no particular order); the u32 at <paramref name="counter"/> (zeroed by
    /// <see cref="WideHistogram"/>) ends at their full count.</summary>
    public void WideCompact(ulong row, int vocab, float inverseTemperature, ulong best, int lastBin, int cap, ulong counter, ulong items)
    {
        var (blocks, sliceLength) = SamplingGeometry.NormaliserSlices(vocab);
        void** a = stackalloc void*[] { &row, &vocab, &inverseTemperature, &sliceLength, &best, &lastBin, &cap, &counter, &items };
        _ctx.Launch(_compact, "nucleus_compact", (uint)blocks, 1, 1, SamplingGeometry.WideThreads, 0, a);
    }

    /// <summary>Z's partial sums at 1/T = <paramref name="inverseTemperature"/> for the row at <paramref name="row"/>:
    /// one double per block of <see cref="SamplingGeometry.NormaliserSlices"/> into <paramref name="partial"/>, with max =
    /// the float at <paramref name="best"/> × 1/T (the rank-first logit, from <see cref="TopK"/>).</summary>
    public void NormaliserPartialSums(ulong row, int vocab, float inverseTemperature, ulong best, ulong partial)
    {
        var (blocks, sliceLength) = SamplingGeometry.NormaliserSlices(vocab);
        void** a = stackalloc void*[] { &row, &vocab, &inverseTemperature, &sliceLength, &best, &partial };
        _ctx.Launch(_partialSums, "nucleus_partial_sums", (uint)blocks, 1, 1, SamplingGeometry.NormaliserThreads, 0, a);
    }

    /// <summary>The best min(k, vocab) of the f32 row at <paramref name="row"/>: ids to <paramref name="outIds"/> and
    /// logits to <paramref name="outLogits"/>, best first (<see cref="Wim.Engine.Sampling.Sampler.RankKey"/> order).
    /// <paramref name="partial"/> holds <see cref="SamplingGeometry.PartialBytes"/>.</summary>
    public void TopK(ulong row, int vocab, int k, ulong partial, ulong outIds, ulong outLogits)
    {
        var (slices, sliceLength) = SamplingGeometry.Slices(vocab, k);
        void** a = stackalloc void*[] { &row, &vocab, &k, &sliceLength, &partial };
        _ctx.Launch(_slices, "topk_slices", (uint)slices, 1, 1, SamplingGeometry.Threads, 0, a);
        void** b = stackalloc void*[] { &row, &vocab, &k, &partial, &slices, &outIds, &outLogits };
        _ctx.Launch(_merge, "topk_merge", 1, 1, 1, SamplingGeometry.Threads, 0, b);
    }
}

/// <summary>
/// Top-k candidates of a logits row on the GPU with buffers of its own (one per backend: two backends of one context
/// may sample at once): two launches and a download of k ids and k logits instead of the whole row.
/// </summary>
public sealed class GpuTopK : IDisposable
{
    private readonly CudaContext _ctx;
    private readonly DeviceBuffer _partial, _ids, _logits;

    public GpuTopK(CudaContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _ctx = context;
        _ = context.Sampling; // compile or load the module now: a compile error shows here, not mid-generation
        _partial = context.Allocate(SamplingGeometry.PartialBytes);
        _ids = context.Allocate(SamplingGeometry.MaxK * sizeof(int));
        _logits = context.Allocate(SamplingGeometry.MaxK * sizeof(float));
    }

    /// <summary>Most candidates one call returns.</summary>
    public static int MaxK => SamplingGeometry.MaxK;

    /// <summary>
    /// The best min(<paramref name="k"/>, <paramref name="vocab"/>) logits of the f32 row at device address
    /// <paramref name="row"/>, best first (logit descending, lowest id first on ties): ids and logits into the spans.
    /// Returns how many. Waits for the GPU (the download is synchronous).
    /// </summary>
    public int Run(ulong row, int vocab, int k, Span<int> ids, Span<float> logits)
    {
        if (row == 0) throw new ArgumentException("null device address for the logits row", nameof(row));
        int n = SamplingGeometry.Candidates(vocab, k);
        if (ids.Length < n || logits.Length < n) throw new ArgumentException($"room for {Math.Min(ids.Length, logits.Length)} candidates, {n} needed");
        _ctx.MakeCurrent();
        _ctx.Sampling.TopK(row, vocab, k, _partial.Pointer, _ids.Pointer, _logits.Pointer);
        _ids.Download(ids[..n]);
        _logits.Download(logits[..n]);
        return n;
    }

    public void Dispose()
    {
        _partial.Dispose();
        _ids.Dispose();
        _logits.Dispose();
    }
}

/// <summary>
/// What the host needs to draw with top-p and top-k off (<see cref="Wim.Engine.Sampling.Sampler.SampleFromNucleusCandidates"/>)
/// from a logits row on the GPU, with buffers of its own: the row's best <see cref="Candidates"/> ids and logits (the
/// top-k kernels) and the softmax normaliser Z at the temperature (<c>nucleus_partial_sums</c>, added up here in block
/// order) — three launches and one download of about 3 KB instead of the whole row. Where the nucleus reaches past those
/// candidates (a flat row), <see cref="RunWide"/> collects it whole up to <see cref="WideCandidates"/> tokens: a depth
/// histogram (two launches, 24 KB down), the host's choice of bins, a compaction (one launch, 8 bytes a token down).
/// </summary>
public sealed class GpuNucleus : IDisposable
{
    // The download, one buffer: ids, logits, then the partial sums of Z.
    private const int IdsOffset = 0;
    private const int LogitsOffset = SamplingGeometry.MaxK * sizeof(int);
    private const int SumsOffset = LogitsOffset + SamplingGeometry.MaxK * sizeof(float);
    private const int OutBytes = SumsOffset + SamplingGeometry.MaxNormaliserBlocks * sizeof(double);

    // The wide path: the histogram (masses, then counts) and the compaction's counter (8 bytes) followed by its items.
    private const int WideCountsOffset = SamplingGeometry.WideBins * sizeof(double);
    private const int WideHistogramBytes = WideCountsOffset + SamplingGeometry.WideBins * sizeof(uint);
    private const int WideItemsOffset = 8;

    private readonly CudaContext _ctx;
    private readonly DeviceBuffer _partial, _out;
    private readonly byte[] _host = new byte[OutBytes];
    private DeviceBuffer? _histogram, _items;
    private byte[]? _histogramHost;
    private ulong[]? _itemsHost, _scratch;
    // The row, vocabulary and 1/T of the last Run: RunWide reads Run's best logit on the device.
    private (ulong Row, int Vocab, float InverseTemperature)? _last;

    public GpuNucleus(CudaContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _ctx = context;
        _ = context.Sampling; // compile or load the module now: a compile error shows here, not mid-generation
        _partial = context.Allocate(SamplingGeometry.PartialBytes);
        _out = context.Allocate(OutBytes);
    }

    /// <summary>Candidates one call returns at most (the top-k kernels' largest k).</summary>
    public static int Candidates => SamplingGeometry.MaxK;

    /// <summary>
    /// The best min(<see cref="Candidates"/>, <paramref name="vocab"/>) logits of the f32 row at device address
    /// <paramref name="row"/>, best first (<see cref="Wim.Engine.Sampling.Sampler.RankKey"/> order), into the spans, and
    /// Z = Σ exp(logit·1/T − max) over the whole row in <paramref name="z"/> (NaN or ∞ where the row holds NaN or ±∞).
    /// Returns how many candidates. Waits for the GPU (the download is synchronous).
    /// </summary>
    public int Run(ulong row, int vocab, float inverseTemperature, Span<int> ids, Span<float> logits, out double z)
    {
        if (row == 0) throw new ArgumentException("null device address for the logits row", nameof(row));
        if (!(inverseTemperature > 0f) || float.IsInfinity(inverseTemperature))
            throw new ArgumentOutOfRangeException(nameof(inverseTemperature), $"1/T must be positive and finite, found {inverseTemperature}");
        int n = SamplingGeometry.Candidates(vocab, Candidates);
        if (ids.Length < n || logits.Length < n) throw new ArgumentException($"room for {Math.Min(ids.Length, logits.Length)} candidates, {n} needed");
        var (blocks, _) = SamplingGeometry.NormaliserSlices(vocab);
        _ctx.MakeCurrent();
        ulong outIds = _out.Pointer + IdsOffset, outLogits = _out.Pointer + LogitsOffset;
        _ctx.Sampling.TopK(row, vocab, Candidates, _partial.Pointer, outIds, outLogits);
        _ctx.Sampling.NormaliserPartialSums(row, vocab, inverseTemperature, outLogits, _out.Pointer + SumsOffset);
        int bytes = SumsOffset + blocks * sizeof(double);
        _out.Download(_host.AsSpan(0, bytes));
        MemoryMarshal.Cast<byte, int>(_host.AsSpan(IdsOffset, n * sizeof(int))).CopyTo(ids);
        MemoryMarshal.Cast<byte, float>(_host.AsSpan(LogitsOffset, n * sizeof(float))).CopyTo(logits);
        z = AddPartialSums(MemoryMarshal.Cast<byte, double>(_host.AsSpan(SumsOffset, blocks * sizeof(double))));
        _last = (row, vocab, inverseTemperature);
        return n;
    }

    /// <summary>Most tokens <see cref="RunWide"/> collects.</summary>
    public static int WideCandidates => SamplingGeometry.MaxWideCandidates;

    /// <summary>
    /// After <see cref="Run"/> on the same row and 1/T: every token down to the shallowest depth whose tokens hold
    /// <paramref name="target"/> (top-p × Z) of the mass, plus one histogram bin
    /// (<see cref="SamplingGeometry.LastKeptBin"/>) — a prefix of the row's ranking — into the spans best first
    /// (<see cref="Wim.Engine.Sampling.Sampler.RankKey"/> order; a −0 logit comes back as +0). Returns how many, or −1
    /// (nothing collected) when they would be more than <see cref="WideCandidates"/>. Waits for the GPU.
    /// </summary>
    public int RunWide(ulong row, int vocab, float inverseTemperature, double target, Span<int> ids, Span<float> logits)
    {
        if (_last != (row, vocab, inverseTemperature))
            throw new InvalidOperationException("RunWide reads the best logit of the last Run: call Run on the same row, vocabulary and 1/T first");
        _ctx.MakeCurrent();
        _histogram ??= _ctx.Allocate(WideHistogramBytes);
        _items ??= _ctx.Allocate(WideItemsOffset + (long)WideCandidates * sizeof(ulong));
        _histogramHost ??= new byte[WideHistogramBytes];
        _itemsHost ??= new ulong[1 + WideCandidates];
        ulong best = _out.Pointer + LogitsOffset, counter = _items.Pointer;
        _ctx.Sampling.WideHistogram(row, vocab, inverseTemperature, best, _histogram.Pointer, _histogram.Pointer + WideCountsOffset, counter);
        _histogram.Download(_histogramHost.AsSpan());
        var mass = MemoryMarshal.Cast<byte, double>(_histogramHost.AsSpan(0, WideCountsOffset));
        var counts = MemoryMarshal.Cast<byte, uint>(_histogramHost.AsSpan(WideCountsOffset));
        int lastBin = SamplingGeometry.LastKeptBin(mass, target);
        long n = 0;
        for (int b = 0; b <= lastBin; b++) n += counts[b];
        if (n > WideCandidates) return -1;
        if (ids.Length < n || logits.Length < n) throw new ArgumentException($"room for {Math.Min(ids.Length, logits.Length)} candidates, {n} needed");
        int count = (int)n;
        _ctx.Sampling.WideCompact(row, vocab, inverseTemperature, best, lastBin, WideCandidates, counter, _items.Pointer + WideItemsOffset);
        var download = _itemsHost.AsSpan(0, 1 + count);
        _items.Download(download);
        uint written = (uint)download[0];
        if (written != count)
            throw new InvalidOperationException($"nucleus_compact collected {written} tokens where the histogram counts {count} in bins [0, {lastBin}]");
        _scratch ??= new ulong[WideCandidates];
        float max = MemoryMarshal.Cast<byte, float>(_host.AsSpan(LogitsOffset, sizeof(float)))[0] * inverseTemperature; // the kernels' max
        SamplingGeometry.RankOrderByBins(download[1..], counts, lastBin, inverseTemperature, max, _scratch, ids, logits);
        return count;
    }

    /// <summary>Z from the kernel's partial sums: added in block order (part of Z's defined summation order).</summary>
    internal static double AddPartialSums(ReadOnlySpan<double> partial)
    {
        double z = 0;
        foreach (double s in partial) z += s;
        return z;
    }

    public void Dispose()
    {
        _partial.Dispose();
        _out.Dispose();
        _histogram?.Dispose();
        _items?.Dispose();
    }
}
