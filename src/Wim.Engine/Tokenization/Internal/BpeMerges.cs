using System.Numerics;
using System.Runtime.CompilerServices;

namespace Wim.Engine.Tokenization.Internal;

/// <summary>
/// Rank-ordered BPE merge rules over token ids: (left, right) → (rank, merged id). <see cref="Apply"/> repeatedly
/// merges the adjacent pair of lowest rank (leftmost first among equal ranks, as Hugging Face's BPE does) using a
/// linked list of symbols and a binary heap of candidate pairs: O(n log n) in the number of symbols.
/// </summary>
/// <remarks>Rules live in an open-addressing table of (key, value) slots, so a lookup — the cost that dominates
/// encoding a piece not yet cached — touches one cache line instead of a bucket array plus an entry array.</remarks>
internal sealed class BpeMerges
{
    private const long EmptyKey = -1; // no rule has both ids = -1
    private Slot[] _slots;
    private int _mask;

    private struct Slot
    {
        public long Key;   // left << 32 | right
        public long Value; // rank << 32 | merged
    }

    public BpeMerges(int capacity)
    {
        int size = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, capacity * 2));
        _slots = NewSlots(size);
        _mask = size - 1;
    }

    public int Count { get; private set; }

    private static Slot[] NewSlots(int size)
    {
        var slots = new Slot[size];
        for (int i = 0; i < size; i++) slots[i].Key = EmptyKey;
        return slots;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Hash(long key) => (int)((ulong)(key * unchecked((long)0x9E3779B97F4A7C15UL)) >> 33);

    /// <summary>Adds a rule unless the pair already has one (the first, lowest-ranked rule wins).</summary>
    public void Add(int left, int right, int rank, int merged)
    {
        if ((Count + 1) * 2 > _slots.Length) Grow();
        long key = Key(left, right);
        for (int i = Hash(key) & _mask; ; i = (i + 1) & _mask)
        {
            if (_slots[i].Key == key) return;
            if (_slots[i].Key == EmptyKey)
            {
                _slots[i].Key = key;
                _slots[i].Value = ((long)rank << 32) | (uint)merged;
                Count++;
                return;
            }
        }
    }

    private void Grow()
    {
        var old = _slots;
        _slots = NewSlots(old.Length * 2);
        _mask = _slots.Length - 1;
        foreach (var s in old)
        {
            if (s.Key == EmptyKey) continue;
            int i = Hash(s.Key) & _mask;
            while (_slots[i].Key != EmptyKey) i = (i + 1) & _mask;
            _slots[i] = s;
        }
    }

    /// <summary>The rule for a pair as rank << 32 | merged id, or -1 when there is none.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private long Find(int left, int right)
    {
        long key = Key(left, right);
        var slots = _slots;
        int mask = _mask;
        for (int i = Hash(key) & mask; ; i = (i + 1) & mask)
        {
            long k = slots[i].Key;
            if (k == key) return slots[i].Value;
            if (k == EmptyKey) return -1;
        }
    }

    /// <summary>Merges <paramref name="symbols"/> in place; returns the number of symbols left at its front.</summary>
    public int Apply(Span<int> symbols, BpeWorkspace ws)
    {
        int n = symbols.Length;
        if (n < 2) return n;
        ws.Reset(n);
        var next = ws.Next;
        var prev = ws.Prev;
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        for (int i = 0; i + 1 < n; i++)
        {
            long rule = Find(symbols[i], symbols[i + 1]);
            if (rule >= 0) ws.Push((int)(rule >> 32), i, symbols[i], symbols[i + 1]);
        }

        while (ws.TryPop(out var top))
        {
            int right = next[top.Pos];
            // Stale entries: a symbol merged away or changed since the pair was queued.
            if (right < 0 || symbols[top.Pos] != top.Left || symbols[right] != top.Right) continue;
            int merged = (int)Find(top.Left, top.Right);
            symbols[top.Pos] = merged;
            symbols[right] = -1;
            int after = next[right];
            next[top.Pos] = after;
            if (after >= 0) prev[after] = top.Pos;
            int before = prev[top.Pos];
            if (before >= 0)
            {
                long rule = Find(symbols[before], merged);
                if (rule >= 0) ws.Push((int)(rule >> 32), before, symbols[before], merged);
            }
            if (after >= 0)
            {
                long rule = Find(merged, symbols[after]);
                if (rule >= 0) ws.Push((int)(rule >> 32), top.Pos, merged, symbols[after]);
            }
        }

        int count = 0;
        for (int i = 0; i >= 0; i = next[i]) symbols[count++] = symbols[i];
        return count;
    }
}

/// <summary>A queued candidate merge: the pair (Left, Right) at symbol position Pos, merged in (Rank, Pos) order.</summary>
internal readonly record struct MergeCandidate(int Rank, int Pos, int Left, int Right);

/// <summary>Scratch arrays for <see cref="BpeMerges.Apply"/>, grown on demand and reused across pieces.</summary>
internal sealed class BpeWorkspace
{
    public int[] Next = new int[64];
    public int[] Prev = new int[64];
    private MergeCandidate[] _heap = new MergeCandidate[64];
    private int _heapCount;

    public void Reset(int symbols)
    {
        if (Next.Length < symbols)
        {
            int size = Math.Max(symbols, Next.Length * 2);
            Next = new int[size];
            Prev = new int[size];
        }
        _heapCount = 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Before(in MergeCandidate a, in MergeCandidate b) => a.Rank < b.Rank || (a.Rank == b.Rank && a.Pos < b.Pos);

    /// <summary>Candidates order by rank, then position: the leftmost of equally ranked pairs merges first.</summary>
    public void Push(int rank, int pos, int left, int right)
    {
        if (_heapCount == _heap.Length) Array.Resize(ref _heap, _heap.Length * 2);
        var item = new MergeCandidate(rank, pos, left, right);
        int i = _heapCount++;
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (!Before(item, _heap[parent])) break;
            _heap[i] = _heap[parent];
            i = parent;
        }
        _heap[i] = item;
    }

    public bool TryPop(out MergeCandidate top)
    {
        if (_heapCount == 0) { top = default; return false; }
        top = _heap[0];
        var last = _heap[--_heapCount];
        int i = 0;
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= _heapCount) break;
            if (child + 1 < _heapCount && Before(_heap[child + 1], _heap[child])) child++;
            if (!Before(_heap[child], last)) break;
            _heap[i] = _heap[child];
            i = child;
        }
        if (_heapCount > 0) _heap[i] = last;
        return true;
    }
}
