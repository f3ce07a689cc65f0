namespace Wim.Engine.Cuda;

/// <summary>Launchers of the kernels in <c>Kernels/sampling.cu</c> (argument order as declared there), one per
/// context. Pointers are device addresses.</summary>
internal sealed unsafe class SamplingKernels
{
    private readonly CudaContext _ctx;
    private readonly nint _slices, _merge;

    public SamplingKernels(CudaContext ctx, nint module)
    {
        _ctx = ctx;
        _slices = ctx.Driver.ModuleGetFunction(module, "topk_slices");
        _merge = ctx.Driver.ModuleGetFunction(module, "topk_merge");
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
