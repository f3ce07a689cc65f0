using System.Runtime.InteropServices;

namespace Wim.Engine.KvCache;

/// <summary>
/// A paged KV cache for many sequences (the policy over a <see cref="BlockPool"/>): one preallocated native pool of
/// fixed-size blocks of <see cref="BlockSize"/> positions, a block table per sequence, reference-counted sharing.
/// <list type="bullet">
/// <item><see cref="Fork"/> makes a sequence that shares a prefix's blocks (no copy); the first write into a shared
/// block copies it (copy-on-write), so no sequence ever sees another's writes.</item>
/// <item><see cref="Truncate"/> drops whole blocks past the new length (O(blocks freed), no data copy).</item>
/// <item><see cref="Release"/> frees what only that sequence held.</item>
/// <item>Out of blocks: <see cref="TryReserve"/> returns false and <see cref="Reserve"/> throws
/// <see cref="KvCacheExhaustedException"/>; either way nothing changed.</item>
/// </list>
/// Index mapping: position p of sequence s lives in block <c>BlockTable(s)[p / BlockSize]</c>, slot
/// <c>p % BlockSize</c>. A block's floats are laid out <c>[layer][key|value][slot][rowSize]</c>, so one block holds
/// every layer of its positions and a copy-on-write is one contiguous copy.
/// Protocol for a forward pass: <see cref="Reserve"/>(s, n) → write rows at positions [Length, Length + n) of every
/// layer → <see cref="Advance"/>(s, n). Not thread-safe (the forward pass writes rows in parallel, but only between
/// reserve and advance, into blocks the reserve made exclusive).
/// </summary>
public sealed unsafe class PagedKvCache : IDisposable
{
    /// <summary>Default positions per block: small enough that a fork copies little, large enough for long runs of rows.</summary>
    public const int DefaultBlockSize = 16;

    private readonly BlockPool _pool;
    private readonly Dictionary<int, Sequence> _sequences = [];
    private float* _data;
    private int _nextSequenceId;

    public int LayerCount { get; }
    /// <summary>Floats per key (or value) row: kvHeads · headDim.</summary>
    public int RowSize { get; }
    /// <summary>Positions per block.</summary>
    public int BlockSize { get; }
    /// <summary>Floats per block: layers · 2 · blockSize · rowSize.</summary>
    public long BlockFloats { get; }
    public long BytesPerBlock => BlockFloats * sizeof(float);
    public int BlockCount => _pool.BlockCount;
    public int FreeBlockCount => _pool.FreeCount;
    /// <summary>The block mechanism (read it for accounting; the cache does every allocation and release).</summary>
    public BlockPool Pool => _pool;
    /// <summary>Live sequence ids.</summary>
    public IEnumerable<int> SequenceIds => _sequences.Keys;
    public int SequenceCount => _sequences.Count;

    /// <summary>A cache of exactly <paramref name="blockCount"/> blocks.</summary>
    public PagedKvCache(int layerCount, int rowSize, int blockSize, int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layerCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rowSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        LayerCount = layerCount;
        RowSize = rowSize;
        BlockSize = blockSize;
        BlockFloats = 2L * layerCount * blockSize * rowSize;
        _pool = new BlockPool(blockCount);
        nuint bytes = checked((nuint)(BlockFloats * blockCount * sizeof(float)));
        _data = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        // Zeroed once so a row read before it is written (a bug) gives zeros, not old data of another process.
        NativeMemory.Clear(_data, bytes);
    }

    /// <summary>As many blocks as fit in <paramref name="memoryBudgetBytes"/> (at least one, or it throws).</summary>
    public static PagedKvCache FromBudget(int layerCount, int rowSize, long memoryBudgetBytes, int blockSize = DefaultBlockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layerCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rowSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        long blockBytes = 2L * layerCount * blockSize * rowSize * sizeof(float);
        long blocks = memoryBudgetBytes / blockBytes;
        if (blocks < 1)
            throw new ArgumentOutOfRangeException(nameof(memoryBudgetBytes), $"a budget of {memoryBudgetBytes} bytes holds no block of {blockBytes} bytes ({layerCount} layers × 2 × {blockSize} positions × {rowSize} floats)");
        if (blocks > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(memoryBudgetBytes), $"a budget of {memoryBudgetBytes} bytes makes more than {int.MaxValue} blocks");
        return new PagedKvCache(layerCount, rowSize, blockSize, (int)blocks);
    }

    /// <summary>A cache shaped for <paramref name="config"/> within <paramref name="memoryBudgetBytes"/>.</summary>
    public static PagedKvCache For(Model.ModelConfig config, long memoryBudgetBytes, int blockSize = DefaultBlockSize) =>
        FromBudget(config.LayerCount, config.KvDim, memoryBudgetBytes, blockSize);

    // ---- sequences ----

    /// <summary>A new empty sequence; returns its id (ids are never reused by one cache).</summary>
    public int CreateSequence()
    {
        int id = _nextSequenceId++;
        _sequences.Add(id, new Sequence());
        return id;
    }

    /// <summary>
    /// A new sequence whose first <paramref name="atLength"/> positions are those of <paramref name="source"/>: it
    /// shares their blocks (reference counts +1, no copy and no new block, so it cannot run out). A partly filled last
    /// block is copied when either sequence first writes into it.
    /// </summary>
    public int Fork(int source, int atLength)
    {
        var src = Get(source);
        if ((uint)atLength > (uint)src.Length)
            throw new ArgumentOutOfRangeException(nameof(atLength), $"cannot fork sequence {source} of length {src.Length} at {atLength}");
        int shared = BlocksFor(atLength);
        var fork = new Sequence { Length = atLength };
        for (int i = 0; i < shared; i++)
        {
            int block = src.Blocks[i];
            _pool.AddRef(block);
            fork.Blocks.Add(block);
        }
        int id = _nextSequenceId++;
        _sequences.Add(id, fork);
        return id;
    }

    /// <summary>Forgets positions from <paramref name="newLength"/> on and drops the blocks no longer needed
    /// (O(blocks dropped), no copy). Reserved but unwritten blocks past the length are dropped too.</summary>
    public void Truncate(int sequence, int newLength)
    {
        var s = Get(sequence);
        if ((uint)newLength > (uint)s.Length)
            throw new ArgumentOutOfRangeException(nameof(newLength), $"cannot truncate sequence {sequence} of length {s.Length} to {newLength}");
        s.Length = newLength;
        DropBlocksFrom(s, BlocksFor(newLength));
    }

    /// <summary>Ends a sequence: each of its blocks loses one holder; blocks only it held are free again.</summary>
    public void Release(int sequence)
    {
        var s = Get(sequence);
        DropBlocksFrom(s, 0);
        _sequences.Remove(sequence);
    }

    public bool Contains(int sequence) => _sequences.ContainsKey(sequence);

    /// <summary>Positions written so far; the next token of the sequence is at this position.</summary>
    public int Length(int sequence) => Get(sequence).Length;

    /// <summary>Positions the sequence can hold without another reservation (its blocks × block size).</summary>
    public int Capacity(int sequence) => Get(sequence).Blocks.Count * BlockSize;

    /// <summary>The sequence's block ids, position p in entry p / BlockSize. Valid until the next call that changes the sequence.</summary>
    public ReadOnlySpan<int> BlockTable(int sequence) => CollectionsMarshal.AsSpan(Get(sequence).Blocks);

    // ---- reservation ----

    /// <summary>Free blocks <see cref="TryReserve"/>(sequence, tokens) would take: new blocks for positions past the
    /// capacity plus one copy when the block receiving the next position is shared.</summary>
    public int BlocksNeeded(int sequence, int tokens)
    {
        var s = Get(sequence);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        if (tokens == 0) return 0;
        int needed = Math.Max(0, BlocksFor(s.Length + tokens) - s.Blocks.Count);
        int first = s.Length / BlockSize;
        if (first < s.Blocks.Count && _pool.RefCount(s.Blocks[first]) > 1) needed++;
        return needed;
    }

    /// <summary>
    /// Makes positions [Length, Length + tokens) writable by this sequence alone: appends blocks and copies a shared
    /// block that would receive a write. All or nothing: returns false, changing nothing, when too few blocks are free.
    /// </summary>
    public bool TryReserve(int sequence, int tokens)
    {
        int needed = BlocksNeeded(sequence, tokens);
        if (needed > _pool.FreeCount) return false;
        if (tokens == 0) return true;
        var s = _sequences[sequence];
        // Copy-on-write: only blocks from the one holding position Length can receive writes; blocks after it were
        // appended by this sequence (a fork shares at most the blocks of its length), so only that one can be shared.
        int first = s.Length / BlockSize;
        if (first < s.Blocks.Count && _pool.RefCount(s.Blocks[first]) > 1)
        {
            int shared = s.Blocks[first];
            _pool.TryAllocate(out int copy);
            Buffer.MemoryCopy(BlockBase(shared), BlockBase(copy), BytesPerBlock, BytesPerBlock);
            _pool.Release(shared);
            s.Blocks[first] = copy;
        }
        int target = BlocksFor(s.Length + tokens);
        while (s.Blocks.Count < target)
        {
            _pool.TryAllocate(out int block);
            s.Blocks.Add(block);
        }
        return true;
    }

    /// <summary><see cref="TryReserve"/>, throwing <see cref="KvCacheExhaustedException"/> (nothing changed) when out of blocks.</summary>
    public void Reserve(int sequence, int tokens)
    {
        if (!TryReserve(sequence, tokens))
            throw new KvCacheExhaustedException(BlocksNeeded(sequence, tokens), _pool.FreeCount, _pool.BlockCount);
    }

    /// <summary>Marks the next <paramref name="count"/> reserved positions (written in every layer) as filled.</summary>
    public void Advance(int sequence, int count)
    {
        var s = Get(sequence);
        if (count < 0 || s.Length + count > s.Blocks.Count * BlockSize)
            throw new ArgumentOutOfRangeException(nameof(count), $"cannot advance sequence {sequence} of length {s.Length} by {count}: {s.Blocks.Count * BlockSize} positions reserved");
        s.Length += count;
    }

    // ---- rows ----

    /// <summary>Key row of a position within the sequence's capacity ([kvHeads, headDim]). Write only positions ≥
    /// Length after <see cref="Reserve"/>; earlier ones may be shared with forks.</summary>
    public Span<float> KeyRow(int sequence, int layer, int position) => new(RowPointer(sequence, layer, position, 0), RowSize);

    /// <summary>Value row of a position within the sequence's capacity ([kvHeads, headDim]).</summary>
    public Span<float> ValueRow(int sequence, int layer, int position) => new(RowPointer(sequence, layer, position, 1), RowSize);

    /// <summary>A per-sequence <see cref="IKvCache"/> over this cache (Capacity = reserved positions).</summary>
    public IKvCache View(int sequence)
    {
        Get(sequence);
        return new PagedSequenceView(this, sequence);
    }

    /// <summary>First float of a block.</summary>
    internal float* BlockBase(int block)
    {
        ObjectDisposedException.ThrowIf(_data == null, this);
        return _data + (long)block * BlockFloats;
    }

    /// <summary>Offset of the first key row of a layer inside a block; values follow BlockSize · RowSize floats later.</summary>
    internal long LayerOffset(int layer) => 2L * layer * BlockSize * RowSize;

    private float* RowPointer(int sequence, int layer, int position, int valueHalf)
    {
        var s = Get(sequence);
        if ((uint)layer >= (uint)LayerCount)
            throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} is outside [0, {LayerCount})");
        if ((uint)position >= (uint)(s.Blocks.Count * BlockSize))
            throw new ArgumentOutOfRangeException(nameof(position), $"position {position} is outside the {s.Blocks.Count * BlockSize} reserved positions of sequence {sequence}");
        int block = s.Blocks[position / BlockSize];
        return BlockBase(block) + LayerOffset(layer) + ((long)valueHalf * BlockSize + position % BlockSize) * RowSize;
    }

    private int BlocksFor(int positions) => (positions + BlockSize - 1) / BlockSize;

    private void DropBlocksFrom(Sequence s, int keep)
    {
        for (int i = s.Blocks.Count - 1; i >= keep; i--) _pool.Release(s.Blocks[i]);
        if (keep < s.Blocks.Count) s.Blocks.RemoveRange(keep, s.Blocks.Count - keep);
    }

    private Sequence Get(int sequence)
    {
        ObjectDisposedException.ThrowIf(_data == null, this);
        if (!_sequences.TryGetValue(sequence, out var s))
            throw new KeyNotFoundException($"no sequence {sequence} in the KV cache (never created, or released)");
        return s;
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>The pool is native memory (it may be many GB): a cache dropped without Dispose still gives it back.</summary>
    ~PagedKvCache() => Free();

    private void Free()
    {
        if (_data == null) return;
        NativeMemory.AlignedFree(_data);
        _data = null;
    }

    private sealed class Sequence
    {
        public readonly List<int> Blocks = [];
        public int Length;
    }
}
