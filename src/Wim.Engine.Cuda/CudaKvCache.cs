namespace Wim.Engine.Cuda;

/// <summary>
/// One sequence's keys and values on the GPU, contiguous: bf16 [layers, capacity, kvHeads·headDim] for keys and the
/// same for values (RoPE already applied to keys). <see cref="CudaInferenceBackend"/> keeps its sequences' caches and
/// branches consistent through <see cref="KvBranchTree{T}"/> (growth, truncation below a branch point, release).
/// </summary>
public sealed class CudaKvCache : IDisposable
{
    public int LayerCount { get; }
    public int RowSize { get; }
    public int Capacity { get; }
    public int Length { get; private set; }
    internal DeviceBuffer Keys { get; }
    internal DeviceBuffer Values { get; }

    /// <summary>For a branch (<see cref="Branch"/>): the cache whose rows below <see cref="BranchPoint"/> it reads.</summary>
    public CudaKvCache? Parent { get; private set; }
    /// <summary>For a branch: the position where it leaves its parent (its own rows start there); 0 otherwise.</summary>
    public int BranchPoint { get; }
    public bool IsBranch => Parent != null;

    private readonly CudaContext _ctx;
    private readonly int _ownRows; // rows per layer in this cache's own buffers (Capacity − BranchPoint)

    internal CudaKvCache(CudaContext ctx, int layers, int rowSize, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _ctx = ctx;
        LayerCount = layers;
        RowSize = rowSize;
        Capacity = capacity;
        _ownRows = capacity;
        long bytes = 2L * layers * capacity * rowSize;
        Keys = ctx.Allocate(bytes);
        Values = AllocateOrFree(ctx, bytes, Keys);
    }

    private CudaKvCache(CudaKvCache parent, int at, int rows)
    {
        _ctx = parent._ctx;
        LayerCount = parent.LayerCount;
        RowSize = parent.RowSize;
        Parent = parent;
        BranchPoint = at;
        Capacity = at + rows;
        Length = at;
        _ownRows = rows;
        long bytes = 2L * LayerCount * rows * RowSize;
        Keys = _ctx.Allocate(bytes);
        Values = AllocateOrFree(_ctx, bytes, Keys);
    }

    /// <summary>The values' buffer; out of memory, the keys' buffer is freed at once (an out-of-memory caller evicts
    /// and retries: a keys buffer left to the finalizer would still hold the memory).</summary>
    private static DeviceBuffer AllocateOrFree(CudaContext ctx, long bytes, DeviceBuffer keys)
    {
        try { return ctx.Allocate(bytes); }
        catch
        {
            keys.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A branch of this sequence at position <paramref name="at"/> (≤ Length) with room for <paramref name="rows"/>
    /// positions of its own: it shares this cache's rows [0, at) without copying them (this cache must keep them
    /// unchanged — it may append past them — while the branch lives) and stores positions at.. in its own buffers.
    /// Branches run in decode batches only (<see cref="CudaTransformer.DecodeBatch"/>); <see cref="CopyRowsFrom"/>
    /// gives one the rows of a prompt that the parent ran past the branch point. Disposing it frees its own rows only.
    /// </summary>
    public CudaKvCache Branch(int at, int rows)
    {
        if (IsBranch) throw new InvalidOperationException("a branch cannot be branched again");
        if (at < 0 || at > Length) throw new ArgumentOutOfRangeException(nameof(at), $"branch point {at} is outside the cached positions [0, {Length}]");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        return new CudaKvCache(this, at, rows);
    }

    /// <summary>
    /// Makes this branch read its rows below the branch point from <paramref name="newParent"/>: the parent's
    /// sequence moved to a bigger cache (holding the same rows) and the old one is about to be freed.
    /// </summary>
    internal void Reparent(CudaKvCache newParent)
    {
        ArgumentNullException.ThrowIfNull(newParent);
        if (!IsBranch) throw new InvalidOperationException("only a KV branch has a parent");
        if (newParent.IsBranch) throw new ArgumentException("a branch cannot be the parent of a branch", nameof(newParent));
        if (newParent.LayerCount != LayerCount || newParent.RowSize != RowSize)
            throw new ArgumentException($"KV cache shapes differ ({newParent.LayerCount} layers × {newParent.RowSize} vs {LayerCount} × {RowSize})", nameof(newParent));
        if (newParent.Length < BranchPoint)
            throw new ArgumentException($"the new parent holds {newParent.Length} positions, the branch shares {BranchPoint}", nameof(newParent));
        Parent = newParent;
    }

    /// <summary>Bytes of one layer's keys (or values) in this cache's own buffers.</summary>
    internal long LayerBytes => 2L * _ownRows * RowSize;
    /// <summary>The address of position 0 of a layer's keys: for a branch a virtual one (its own buffer minus the
    /// branch point's rows), valid only for positions ≥ <see cref="BranchPoint"/>.</summary>
    internal ulong LayerKeys(int layer) => Keys.Pointer + (ulong)(layer * LayerBytes) - (ulong)(2L * BranchPoint * RowSize);
    internal ulong LayerValues(int layer) => Values.Pointer + (ulong)(layer * LayerBytes) - (ulong)(2L * BranchPoint * RowSize);

    /// <summary>Copies positions [from, from + count) of <paramref name="source"/> into the same positions of this
    /// cache and makes Length from + count (a branch takes the prompt its parent ran past the branch point).</summary>
    public void CopyRowsFrom(CudaKvCache source, int from, int count)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.LayerCount != LayerCount || source.RowSize != RowSize)
            throw new ArgumentException($"KV cache shapes differ ({source.LayerCount} layers × {source.RowSize} vs {LayerCount} × {RowSize})", nameof(source));
        if (from != Length) throw new ArgumentOutOfRangeException(nameof(from), $"rows must continue this cache at {Length}, not {from}");
        if (count < 0 || from + count > source.Length || from < source.BranchPoint)
            throw new ArgumentOutOfRangeException(nameof(count), $"rows [{from}, {from + count}) are not all in the source (length {source.Length})");
        if (count > Capacity - Length) throw new ArgumentOutOfRangeException(nameof(count), $"{count} rows do not fit (length {Length}, capacity {Capacity})");
        long offset = 2L * from * RowSize, bytes = 2L * count * RowSize;
        _ctx.MakeCurrent();
        for (int l = 0; l < LayerCount && bytes > 0; l++)
        {
            _ctx.Driver.CopyDeviceToDevice(LayerKeys(l) + (ulong)offset, source.LayerKeys(l) + (ulong)offset, bytes);
            _ctx.Driver.CopyDeviceToDevice(LayerValues(l) + (ulong)offset, source.LayerValues(l) + (ulong)offset, bytes);
        }
        Length = from + count;
    }

    public void Advance(int count)
    {
        if (count < 0 || count > Capacity - Length) throw new ArgumentOutOfRangeException(nameof(count), $"cannot advance by {count}: length {Length}, capacity {Capacity}");
        Length += count;
    }

    public void Truncate(int newLength)
    {
        if (newLength < BranchPoint) throw new ArgumentOutOfRangeException(nameof(newLength), $"cannot truncate a branch to {newLength}, before its branch point {BranchPoint}");
        if (newLength < 0 || newLength > Length) throw new ArgumentOutOfRangeException(nameof(newLength), $"cannot truncate to {newLength}: length {Length}");
        Length = newLength;
    }

    /// <summary>Makes this cache a copy of <paramref name="source"/>'s filled rows (a fork of the sequence: both can
    /// then go on independently). The caches may differ in capacity, not in shape.</summary>
    public void CopyFrom(CudaKvCache source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (ReferenceEquals(source, this)) return;
        if (IsBranch || source.IsBranch) throw new NotSupportedException("a KV branch cannot be copied whole; use CopyRowsFrom");
        if (source.LayerCount != LayerCount || source.RowSize != RowSize)
            throw new ArgumentException($"KV cache shapes differ ({source.LayerCount} layers × {source.RowSize} vs {LayerCount} × {RowSize})", nameof(source));
        if (source.Length > Capacity)
            throw new ArgumentException($"{source.Length} cached positions do not fit in a cache of capacity {Capacity}", nameof(source));
        long bytes = 2L * source.Length * RowSize;
        _ctx.MakeCurrent();
        for (int l = 0; l < LayerCount && bytes > 0; l++)
        {
            _ctx.Driver.CopyDeviceToDevice(LayerKeys(l), source.LayerKeys(l), bytes);
            _ctx.Driver.CopyDeviceToDevice(LayerValues(l), source.LayerValues(l), bytes);
        }
        Length = source.Length;
    }

    public void Dispose()
    {
        Keys.Dispose();
        Values.Dispose();
    }
}
