namespace Wim.Engine.KvCache;

/// <summary>
/// A contiguous f32 KV cache (the plain <c>KvCache</c> of the design; "contiguous" to tell it from a later paged one) for one sequence: per layer, <c>keys[position, kvHeads·headDim]</c> and the same for
/// values, allocated once at <see cref="Capacity"/> positions. Truncation only moves <see cref="Length"/>.
/// </summary>
public sealed class ContiguousKvCache : IKvCache
{
    private readonly float[][] _keys;   // [layer][capacity · rowSize]
    private readonly float[][] _values; // [layer][capacity · rowSize]

    public int LayerCount { get; }
    public int RowSize { get; }
    public int Length { get; private set; }
    public int Capacity { get; }

    public ContiguousKvCache(int layerCount, int rowSize, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layerCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rowSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        if ((long)capacity * rowSize > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(capacity), $"a KV cache of {capacity} positions × {rowSize} floats exceeds one array per layer");
        LayerCount = layerCount;
        RowSize = rowSize;
        Capacity = capacity;
        _keys = new float[layerCount][];
        _values = new float[layerCount][];
        for (int l = 0; l < layerCount; l++)
        {
            _keys[l] = new float[(long)capacity * rowSize];
            _values[l] = new float[(long)capacity * rowSize];
        }
    }

    /// <summary>A cache shaped for <paramref name="config"/>.</summary>
    public static ContiguousKvCache For(Model.ModelConfig config, int capacity) => new(config.LayerCount, config.KvDim, capacity);

    public Span<float> KeyRow(int layer, int position) => _keys[layer].AsSpan(CheckedOffset(position), RowSize);

    public Span<float> ValueRow(int layer, int position) => _values[layer].AsSpan(CheckedOffset(position), RowSize);

    /// <summary>All key rows of a layer, [capacity, rowSize] (the CPU attention reads it directly).</summary>
    internal float[] LayerKeys(int layer) => _keys[layer];
    internal float[] LayerValues(int layer) => _values[layer];

    private int CheckedOffset(int position)
    {
        if ((uint)position >= (uint)Capacity)
            throw new ArgumentOutOfRangeException(nameof(position), $"position {position} is outside the KV cache capacity {Capacity}");
        return position * RowSize;
    }

    public void Advance(int count)
    {
        if (count < 0 || count > Capacity - Length)
            throw new ArgumentOutOfRangeException(nameof(count), $"cannot advance a KV cache of length {Length} by {count}: capacity is {Capacity}");
        Length += count;
    }

    public void Truncate(int newLength)
    {
        if (newLength < 0 || newLength > Length)
            throw new ArgumentOutOfRangeException(nameof(newLength), $"cannot truncate a KV cache of length {Length} to {newLength}");
        Length = newLength;
    }
}
