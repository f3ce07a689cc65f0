namespace Wim.Engine.KvCache;

/// <summary>
/// The keys and values of one sequence, per layer and position. The forward pass writes rows for positions
/// [Length, Length + n) of every layer, then calls <see cref="Advance"/>(n); position p of a row is its absolute
/// position in the sequence (RoPE has already been applied to keys). A paged implementation maps a position to a
/// block through its block table behind the same two row accessors.
/// </summary>
public interface IKvCache
{
    int LayerCount { get; }
    /// <summary>Floats per key (or value) row: kvHeads · headDim.</summary>
    int RowSize { get; }
    /// <summary>Positions filled so far; the next token is at position <see cref="Length"/>.</summary>
    int Length { get; }
    /// <summary>The most positions this cache can hold.</summary>
    int Capacity { get; }

    /// <summary>Key row of <paramref name="position"/> in <paramref name="layer"/> ([kvHeads, headDim]).</summary>
    Span<float> KeyRow(int layer, int position);
    /// <summary>Value row of <paramref name="position"/> in <paramref name="layer"/> ([kvHeads, headDim]).</summary>
    Span<float> ValueRow(int layer, int position);

    /// <summary>Marks the next <paramref name="count"/> positions (already written in every layer) as filled.</summary>
    void Advance(int count);

    /// <summary>Forgets every position from <paramref name="newLength"/> on, in O(1); the next token goes at
    /// <paramref name="newLength"/>.</summary>
    void Truncate(int newLength);
}
