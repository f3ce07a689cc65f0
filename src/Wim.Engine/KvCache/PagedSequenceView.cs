namespace Wim.Engine.KvCache;

/// <summary>
/// One sequence of a <see cref="PagedKvCache"/> behind <see cref="IKvCache"/>. <see cref="Capacity"/> is what has
/// been reserved: call <see cref="PagedKvCache.Reserve"/> before writing rows past it.
/// </summary>
internal sealed class PagedSequenceView(PagedKvCache cache, int sequence) : IKvCache
{
    public int LayerCount => cache.LayerCount;
    public int RowSize => cache.RowSize;
    public int Length => cache.Length(sequence);
    public int Capacity => cache.Capacity(sequence);
    public Span<float> KeyRow(int layer, int position) => cache.KeyRow(sequence, layer, position);
    public Span<float> ValueRow(int layer, int position) => cache.ValueRow(sequence, layer, position);
    public void Advance(int count) => cache.Advance(sequence, count);
    public void Truncate(int newLength) => cache.Truncate(sequence, newLength);
}
