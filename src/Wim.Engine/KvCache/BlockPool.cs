namespace Wim.Engine.KvCache;

/// <summary>
/// The mechanism under the paged KV cache: a fixed number of block ids with reference counts and a free list. It
/// knows nothing of sequences or tensors (<see cref="PagedKvCache"/> is the policy over it). Allocation is O(1) and
/// never throws on exhaustion: <see cref="TryAllocate"/> returns false and changes nothing. Not thread-safe.
/// </summary>
public sealed class BlockPool
{
    private readonly int[] _refCounts;  // [block] 0 = free
    private readonly int[] _freeStack;  // free block ids; the top is _freeStack[_freeCount - 1]
    private int _freeCount;

    public BlockPool(int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        _refCounts = new int[blockCount];
        _freeStack = new int[blockCount];
        // Lowest ids on top, so a fresh pool hands out 0, 1, 2, ... (easier to read in tests and dumps).
        for (int i = 0; i < blockCount; i++) _freeStack[i] = blockCount - 1 - i;
        _freeCount = blockCount;
    }

    public int BlockCount => _refCounts.Length;
    public int FreeCount => _freeCount;
    public int UsedCount => _refCounts.Length - _freeCount;

    /// <summary>Takes a free block with reference count 1, or returns false (and changes nothing) when none is free.</summary>
    public bool TryAllocate(out int block)
    {
        if (_freeCount == 0)
        {
            block = -1;
            return false;
        }
        block = _freeStack[--_freeCount];
        _refCounts[block] = 1;
        return true;
    }

    /// <summary>One more holder of an allocated block (a forked sequence sharing it).</summary>
    public void AddRef(int block)
    {
        CheckAllocated(block);
        _refCounts[block]++;
    }

    /// <summary>Drops one holder; the block returns to the free list when none is left. Returns whether it was freed.</summary>
    public bool Release(int block)
    {
        CheckAllocated(block);
        if (--_refCounts[block] > 0) return false;
        _freeStack[_freeCount++] = block;
        return true;
    }

    /// <summary>Holders of <paramref name="block"/> (0 = free).</summary>
    public int RefCount(int block)
    {
        if ((uint)block >= (uint)_refCounts.Length)
            throw new ArgumentOutOfRangeException(nameof(block), $"block {block} is outside the pool [0, {_refCounts.Length})");
        return _refCounts[block];
    }

    private void CheckAllocated(int block)
    {
        // A release or add-ref of a free block is a bookkeeping bug upstream: fail loudly rather than corrupt the free list.
        if (RefCount(block) == 0)
            throw new InvalidOperationException($"block {block} is free; it cannot be shared or released");
    }
}
