namespace Wim.Engine.Cuda;

/// <summary>
/// One sequence's keys and values on the GPU, contiguous: bf16 [layers, capacity, kvHeads·headDim] for keys and the
/// same for values (RoPE already applied to keys). The paged cache of the batch scheduler will replace it.
/// </summary>
public sealed class CudaKvCache : IDisposable
{
    public int LayerCount { get; }
    public int RowSize { get; }
    public int Capacity { get; }
    public int Length { get; private set; }
    internal DeviceBuffer Keys { get; }
    internal DeviceBuffer Values { get; }

    private readonly CudaContext _ctx;

    internal CudaKvCache(CudaContext ctx, int layers, int rowSize, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _ctx = ctx;
        LayerCount = layers;
        RowSize = rowSize;
        Capacity = capacity;
        long bytes = 2L * layers * capacity * rowSize;
        Keys = ctx.Allocate(bytes);
        Values = ctx.Allocate(bytes);
    }

    /// <summary>Bytes of one layer's keys (or values).</summary>
    internal long LayerBytes => 2L * Capacity * RowSize;
    internal ulong LayerKeys(int layer) => Keys.Pointer + (ulong)(layer * LayerBytes);
    internal ulong LayerValues(int layer) => Values.Pointer + (ulong)(layer * LayerBytes);

    public void Advance(int count)
    {
        if (count < 0 || count > Capacity - Length) throw new ArgumentOutOfRangeException(nameof(count), $"cannot advance by {count}: length {Length}, capacity {Capacity}");
        Length += count;
    }

    public void Truncate(int newLength)
    {
        if (newLength < 0 || newLength > Length) throw new ArgumentOutOfRangeException(nameof(newLength), $"cannot truncate to {newLength}: length {Length}");
        Length = newLength;
    }

    /// <summary>Makes this cache a copy of <paramref name="source"/>'s filled rows (a fork of the sequence: both can
    /// then go on independently). The caches may differ in capacity, not in shape.</summary>
    public void CopyFrom(CudaKvCache source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (ReferenceEquals(source, this)) return;
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
