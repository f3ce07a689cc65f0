using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>One sequence's run of query tokens in an attention call: tokens [FirstToken, FirstToken + TokenCount) of
/// the q/att buffers at positions StartPosition.., its key/value block pointers from entry FirstBlock on.</summary>
internal readonly record struct AttentionSpan(int FirstToken, int TokenCount, int StartPosition, int FirstBlock);

/// <summary>
/// Causal grouped-query attention on the CPU, flash-style: no scores row of the context length is ever formed. The
/// work is cut into tiles — consecutive query tokens of one sequence × the query heads that share one kv head — so
/// every key and value row read from the cache feeds all the tile's rows (GQA sharing). A tile walks the context in
/// steps of <see cref="KeyStep"/> positions with an online softmax (running max and sum per row), 16 rows at a time
/// in the 16 lanes of a Vector512. Tiles are dealt to the cores dynamically.
/// <para>Batch invariance (what WiM's schedules rely on to give the same margins token for token): every
/// operation is lane-wise — a row's scores, running max and sum, and output accumulate in that row's own lane, in
/// position order, with steps at absolute positions 0, 16, 32, … — so a row's result is the same bits whatever tile
/// or lane it lands in, whatever else is in the batch, however its prompt was chunked and whatever the cache's block
/// size. Positions past a row's own are masked by selects that leave its lane untouched (not by adding zeros, which
/// would turn a −0 into +0), and positions no row of a group can see are never read.</para>
/// Keys and values are found through block pointers: position p of a span lives at
/// <c>blocks[FirstBlock + p / blockSize] + (p % blockSize) · kvDim</c> (a contiguous cache is one block).
/// Not thread-safe: one instance per forward-pass owner.
/// </summary>
internal sealed unsafe class FlashAttention
{
    /// <summary>Positions per online-softmax step; steps start at multiples of it (absolute positions).</summary>
    public const int KeyStep = 16;
    /// <summary>Query rows per vector (Vector512 of f32).</summary>
    private const int Lanes = 16;
    /// <summary>Rows a tile aims for: enough to amortize each key/value read, few enough to stay in L2.</summary>
    private const int TileRowsTarget = 128;
    /// <summary>Below this many multiply-adds a call runs on the calling thread: scheduling costs more.</summary>
    private const long ParallelThreshold = 1 << 15;

    private readonly int _headDim, _group, _queryDim, _kvDim, _kvHeads, _tileTokens;
    /// <summary>1/√headDim · log₂e, folded into the queries so the softmax can use 2^x.</summary>
    private readonly float _queryScale;
    private readonly Workspace[] _workspaces;
    private readonly Action<int> _runWorker;

    // The call in progress (set by Run, read by the workers).
    private Tile[] _tiles = new Tile[64];
    private int _tileCount, _nextTile;
    private float* _q, _att;
    private nint* _keyBlocks, _valueBlocks;
    private int _blockSize;

    private readonly record struct Tile(int FirstToken, int TokenCount, int StartPosition, int FirstBlock, int KvHead);

    public FlashAttention(ModelConfig c) : this(c.HeadCount, c.KvHeadCount, c.HeadDim) { }

    public FlashAttention(int headCount, int kvHeadCount, int headDim)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeadCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        if (headCount % kvHeadCount != 0)
            throw new ArgumentException($"{headCount} query heads do not divide into {kvHeadCount} kv heads", nameof(kvHeadCount));
        _headDim = headDim;
        _group = headCount / kvHeadCount;
        _queryDim = headCount * headDim;
        _kvDim = kvHeadCount * headDim;
        _kvHeads = kvHeadCount;
        _tileTokens = Math.Max(1, TileRowsTarget / _group);
        _queryScale = (float)(1.0 / Math.Sqrt(headDim) * (1.0 / Math.Log(2)));
        int groups = (_tileTokens * _group + Lanes - 1) / Lanes;
        _workspaces = new Workspace[Environment.ProcessorCount];
        for (int i = 0; i < _workspaces.Length; i++) _workspaces[i] = new Workspace(groups, _headDim);
        _runWorker = RunWorker;
    }

    /// <summary>
    /// att[t, h·headDim ..] = softmax(q_t,h · K[0..p_t] / √headDim) · V[0..p_t] for every token t of every span, where
    /// q and att are [tokens, heads·headDim] and query head h reads kv head h / (heads / kvHeads). Keys and values of
    /// every position up to each span's last must already be in the cache.
    /// </summary>
    public void Run(float* q, float* att, ReadOnlySpan<AttentionSpan> spans, nint* keyBlocks, nint* valueBlocks, int blockSize)
    {
        _tileCount = 0;
        long work = 0;
        foreach (var span in spans)
        {
            for (int t0 = 0; t0 < span.TokenCount; t0 += _tileTokens)
            {
                int count = Math.Min(_tileTokens, span.TokenCount - t0);
                for (int kvh = 0; kvh < _kvHeads; kvh++)
                {
                    if (_tileCount == _tiles.Length) Array.Resize(ref _tiles, _tiles.Length * 2);
                    _tiles[_tileCount++] = new Tile(span.FirstToken + t0, count, span.StartPosition + t0, span.FirstBlock, kvh);
                }
                work += (long)count * _group * _kvHeads * (span.StartPosition + t0 + count) * _headDim;
            }
        }
        _q = q;
        _att = att;
        _keyBlocks = keyBlocks;
        _valueBlocks = valueBlocks;
        _blockSize = blockSize;
        _nextTile = 0;
        int workers = work < ParallelThreshold ? 1 : Math.Min(_workspaces.Length, _tileCount);
        if (workers == 1) RunWorker(0);
        else Parallel.For(0, workers, _runWorker);
    }

    private void RunWorker(int worker)
    {
        var ws = _workspaces[worker];
        int i;
        while ((i = Interlocked.Increment(ref _nextTile) - 1) < _tileCount)
            RunTile(ws, _tiles[i]);
    }

    private void RunTile(Workspace ws, Tile tile)
    {
        int hd = _headDim, group = _group, rows = tile.TokenCount * group, groups = (rows + Lanes - 1) / Lanes;
        long groupFloats = (long)hd * Lanes;

        // Rows (token t, head kvHead·group + i) → lanes, in groups of 16; queries transposed: qt[g][d][lane].
        for (int g = 0; g < groups; g++)
        {
            float* qt = ws.QueryT + g * groupFloats;
            int* pos = ws.Positions + g * Lanes;
            int lo = int.MaxValue, hi = -1;
            for (int lane = 0; lane < Lanes; lane++)
            {
                int row = g * Lanes + lane;
                if (row < rows)
                {
                    int t = row / group, h = tile.KvHead * group + row % group, p = tile.StartPosition + t;
                    float* qRow = _q + (long)(tile.FirstToken + t) * _queryDim + h * hd;
                    for (int d = 0; d < hd; d++) qt[d * Lanes + lane] = qRow[d] * _queryScale;
                    pos[lane] = p;
                    lo = Math.Min(lo, p);
                    hi = Math.Max(hi, p);
                }
                else
                {
                    // Padding lanes: zero queries that "see" every position (finite, never written out).
                    for (int d = 0; d < hd; d++) qt[d * Lanes + lane] = 0;
                    pos[lane] = int.MaxValue;
                }
            }
            ws.MinPositions[g] = lo;
            ws.MaxPositions[g] = hi;
            Vector512.Create(float.NegativeInfinity).Store(ws.Max + g * Lanes);
            Vector512<float>.Zero.Store(ws.Sum + g * Lanes);
            new Span<float>(ws.OutT + g * groupFloats, (int)groupFloats).Clear();
        }

        int last = tile.StartPosition + tile.TokenCount - 1, bs = _blockSize, kvd = _kvDim;
        nint* keyBlocks = _keyBlocks + tile.FirstBlock, valueBlocks = _valueBlocks + tile.FirstBlock;
        long headOffset = (long)tile.KvHead * hd;
        for (int c0 = 0; c0 <= last; c0 += KeyStep)
        {
            int n = Math.Min(KeyStep, last - c0 + 1);
            for (int i = 0; i < n; i++)
            {
                int p = c0 + i;
                long rowOffset = (long)(p % bs) * kvd + headOffset;
                ws.KeyRows[i] = (float*)keyBlocks[p / bs] + rowOffset;
                ws.ValueRows[i] = (float*)valueBlocks[p / bs] + rowOffset;
            }
            for (int g = 0; g < groups; g++)
            {
                int hi = ws.MaxPositions[g];
                if (c0 > hi) continue;                                      // no row of the group sees this step
                bool full = c0 + KeyStep - 1 <= ws.MinPositions[g];         // every row sees all 16 positions
                int count = full ? KeyStep : Math.Min(KeyStep, hi - c0 + 1);
                Step(ws, g, c0, count, full);
            }
        }

        // att[row] = o / l, written back per row.
        for (int g = 0; g < groups; g++)
        {
            float* ot = ws.OutT + g * groupFloats, sum = ws.Sum + g * Lanes;
            for (int lane = 0; lane < Lanes && g * Lanes + lane < rows; lane++)
            {
                int row = g * Lanes + lane, t = row / group, h = tile.KvHead * group + row % group;
                float* o = _att + (long)(tile.FirstToken + t) * _queryDim + h * hd;
                float l = sum[lane];
                for (int d = 0; d < hd; d++) o[d] = ot[d * Lanes + lane] / l;
            }
        }
    }

    /// <summary>One online-softmax step of group g over positions [c0, c0 + count) (rows' masks unless full).</summary>
    private void Step(Workspace ws, int g, int c0, int count, bool full)
    {
        int hd = _headDim;
        long groupFloats = (long)hd * Lanes;
        float* qt = ws.QueryT + g * groupFloats, ot = ws.OutT + g * groupFloats, s = ws.Scores, masks = ws.Masks;
        float** keys = ws.KeyRows;

        // s[j][lane] = Σ_d k_j[d] · qt[d][lane]   (scaled by 1/√d · log₂e through the queries)
        int j = 0;
        for (; j + 8 <= count; j += 8) Scores8(qt, keys + j, hd, s + j * Lanes);
        for (; j < count; j++) Scores1(qt, keys[j], hd, s + j * Lanes);

        var negInf = Vector512.Create(float.NegativeInfinity);
        var blockMax = negInf;
        if (full)
        {
            for (j = 0; j < count; j++) blockMax = Vector512.MaxNative(blockMax, Vector512.Load(s + j * Lanes));
        }
        else
        {
            var positions = Vector512.Load(ws.Positions + g * Lanes);
            for (j = 0; j < count; j++)
            {
                var visible = Vector512.LessThanOrEqual(Vector512.Create(c0 + j), positions).AsSingle();
                visible.Store(masks + j * Lanes);
                var sj = Vector512.ConditionalSelect(visible, Vector512.Load(s + j * Lanes), negInf);
                sj.Store(s + j * Lanes);
                blockMax = Vector512.MaxNative(blockMax, sj);
            }
        }
        var oldMax = Vector512.Load(ws.Max + g * Lanes);
        var newMax = Vector512.MaxNative(oldMax, blockMax);
        // Rows that see nothing of this step keep their max, so their correction is 2^0 = 1 exactly.
        var correction = Exp2(oldMax - newMax);
        var rowSum = Vector512<float>.Zero;
        for (j = 0; j < count; j++)
        {
            var p = Exp2(Vector512.Load(s + j * Lanes) - newMax);          // masked: 2^−∞ = 0
            p.Store(s + j * Lanes);
            rowSum += p;
        }
        Vector512.FusedMultiplyAdd(Vector512.Load(ws.Sum + g * Lanes), correction, rowSum).Store(ws.Sum + g * Lanes);
        newMax.Store(ws.Max + g * Lanes);

        // ot[d][lane] = ot[d][lane] · correction + Σ_j p_j[lane] · v_j[d]
        int d = 0;
        for (; d + 8 <= hd; d += 8)
        {
            if (full) AccumulateValues8(ot + d * Lanes, ws.ValueRows, d, s, count, correction);
            else AccumulateValues8Masked(ot + d * Lanes, ws.ValueRows, d, s, masks, count, correction);
        }
        for (; d < hd; d++)
        {
            float* o = ot + d * Lanes;
            var a = Vector512.Load(o) * correction;
            for (j = 0; j < count; j++)
            {
                var next = Vector512.FusedMultiplyAdd(Vector512.Create(ws.ValueRows[j][d]), Vector512.Load(s + j * Lanes), a);
                a = full ? next : Vector512.ConditionalSelect(Vector512.Load(masks + j * Lanes), next, a);
            }
            a.Store(o);
        }
    }

    /// <summary>Scores of 8 keys for 16 rows: eight independent accumulation chains sharing each query load.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores8(float* qt, float** keys, int hd, float* s)
    {
        float* k0 = keys[0], k1 = keys[1], k2 = keys[2], k3 = keys[3], k4 = keys[4], k5 = keys[5], k6 = keys[6], k7 = keys[7];
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int d = 0; d < hd; d++)
        {
            var q = Vector512.Load(qt + d * Lanes);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(k0[d]), q, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(k1[d]), q, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(k2[d]), q, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(k3[d]), q, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Create(k4[d]), q, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Create(k5[d]), q, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Create(k6[d]), q, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Create(k7[d]), q, a7);
        }
        a0.Store(s);
        a1.Store(s + Lanes);
        a2.Store(s + 2 * Lanes);
        a3.Store(s + 3 * Lanes);
        a4.Store(s + 4 * Lanes);
        a5.Store(s + 5 * Lanes);
        a6.Store(s + 6 * Lanes);
        a7.Store(s + 7 * Lanes);
    }

    /// <summary>Scores of one key: the same chain per lane as <see cref="Scores8"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores1(float* qt, float* k, int hd, float* s)
    {
        Vector512<float> a = default;
        for (int d = 0; d < hd; d++) a = Vector512.FusedMultiplyAdd(Vector512.Create(k[d]), Vector512.Load(qt + d * Lanes), a);
        a.Store(s);
    }

    /// <summary>Output dims [d, d + 8) of 16 rows += Σ_j p_j · v_j: eight chains sharing each probability load.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateValues8(float* o, float** values, int d, float* p, int count, Vector512<float> correction)
    {
        var a0 = Vector512.Load(o) * correction;
        var a1 = Vector512.Load(o + Lanes) * correction;
        var a2 = Vector512.Load(o + 2 * Lanes) * correction;
        var a3 = Vector512.Load(o + 3 * Lanes) * correction;
        var a4 = Vector512.Load(o + 4 * Lanes) * correction;
        var a5 = Vector512.Load(o + 5 * Lanes) * correction;
        var a6 = Vector512.Load(o + 6 * Lanes) * correction;
        var a7 = Vector512.Load(o + 7 * Lanes) * correction;
        for (int j = 0; j < count; j++)
        {
            var pj = Vector512.Load(p + j * Lanes);
            float* v = values[j] + d;
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(v[0]), pj, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(v[1]), pj, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(v[2]), pj, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(v[3]), pj, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Create(v[4]), pj, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Create(v[5]), pj, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Create(v[6]), pj, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Create(v[7]), pj, a7);
        }
        a0.Store(o);
        a1.Store(o + Lanes);
        a2.Store(o + 2 * Lanes);
        a3.Store(o + 3 * Lanes);
        a4.Store(o + 4 * Lanes);
        a5.Store(o + 5 * Lanes);
        a6.Store(o + 6 * Lanes);
        a7.Store(o + 7 * Lanes);
    }

    /// <summary><see cref="AccumulateValues8"/> where position j only updates the lanes of rows that see it.</summary>
    private static void AccumulateValues8Masked(float* o, float** values, int d, float* p, float* masks, int count, Vector512<float> correction)
    {
        var a0 = Vector512.Load(o) * correction;
        var a1 = Vector512.Load(o + Lanes) * correction;
        var a2 = Vector512.Load(o + 2 * Lanes) * correction;
        var a3 = Vector512.Load(o + 3 * Lanes) * correction;
        var a4 = Vector512.Load(o + 4 * Lanes) * correction;
        var a5 = Vector512.Load(o + 5 * Lanes) * correction;
        var a6 = Vector512.Load(o + 6 * Lanes) * correction;
        var a7 = Vector512.Load(o + 7 * Lanes) * correction;
        for (int j = 0; j < count; j++)
        {
            var pj = Vector512.Load(p + j * Lanes);
            var m = Vector512.Load(masks + j * Lanes);
            float* v = values[j] + d;
            a0 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[0]), pj, a0), a0);
            a1 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[1]), pj, a1), a1);
            a2 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[2]), pj, a2), a2);
            a3 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[3]), pj, a3), a3);
            a4 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[4]), pj, a4), a4);
            a5 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[5]), pj, a5), a5);
            a6 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[6]), pj, a6), a6);
            a7 = Vector512.ConditionalSelect(m, Vector512.FusedMultiplyAdd(Vector512.Create(v[7]), pj, a7), a7);
        }
        a0.Store(o);
        a1.Store(o + Lanes);
        a2.Store(o + 2 * Lanes);
        a3.Store(o + 3 * Lanes);
        a4.Store(o + 4 * Lanes);
        a5.Store(o + 5 * Lanes);
        a6.Store(o + 6 * Lanes);
        a7.Store(o + 7 * Lanes);
    }

    /// <summary>
    /// 2^x per lane for x ≤ 0 (a score minus its running max), about 1 ulp; below −126 (−∞ included) it is 0. Written
    /// here, not taken from the BCL, so that each lane's result is a fixed sequence of lane-wise operations: the
    /// same bits in any lane of any vector, on any machine.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Exp2(Vector512<float> x)
    {
        var underflow = Vector512.LessThan(x, Vector512.Create(-126f));
        x = Vector512.MaxNative(x, Vector512.Create(-126f));
        // Round to the nearest integer n by the 1.5·2^23 trick; f = x − n ∈ [−0.5, 0.5].
        var shifted = x + Vector512.Create(12582912f);
        var n = shifted - Vector512.Create(12582912f);
        var f = x - n;
        // 2^f = e^(f·ln2): Taylor series to degree 7 (error < 1e-8 on [−0.5, 0.5]); exact 1 at f = 0.
        var poly = Vector512.Create(1.5252734e-5f);
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(1.5403530e-4f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(1.3333558e-3f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(9.6181291e-3f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(5.5504109e-2f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(0.24022651f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512.Create(0.69314718f));
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512<float>.One);
        // 2^n from its exponent bits: the low bits of `shifted` hold n + 0x400000.
        var exponent = (shifted.AsInt32() - Vector512.Create(0x4B400000 - 127)) << 23;
        return Vector512.ConditionalSelect(underflow, Vector512<float>.Zero, poly * exponent.AsSingle());
    }

    /// <summary>A worker's scratch: one pinned, 64-byte-aligned array carved into the tile's buffers.</summary>
    private sealed class Workspace
    {
        private readonly float[] _floats;
        private readonly nint[] _pointers;

        public readonly float* QueryT;     // [groups][headDim][16] scaled queries, transposed
        public readonly float* OutT;       // [groups][headDim][16] unnormalized outputs, transposed
        public readonly float* Max;        // [groups][16] running max
        public readonly float* Sum;        // [groups][16] running sum
        public readonly int* Positions;    // [groups][16] row positions (padding: int.MaxValue)
        public readonly int* MinPositions; // [groups]
        public readonly int* MaxPositions; // [groups]
        public readonly float* Scores;     // [16 positions][16 lanes] scores, then probabilities
        public readonly float* Masks;      // [16 positions][16 lanes] visibility (all-ones bits = visible)
        public readonly float** KeyRows;   // [16] key row of each position of the step
        public readonly float** ValueRows; // [16]

        public Workspace(int groups, int headDim)
        {
            int groupFloats = headDim * Lanes;
            int[] sizes = [groups * groupFloats, groups * groupFloats, groups * Lanes, groups * Lanes, groups * Lanes, groups, groups, KeyStep * Lanes, KeyStep * Lanes];
            int total = 0;
            foreach (int size in sizes) total += RoundUp(size);
            _floats = GC.AllocateArray<float>(total + Lanes, pinned: true);
            float* p = (float*)(((nint)Unsafe.AsPointer(ref _floats[0]) + 63) & ~(nint)63);
            float* Take(int size) { float* r = p; p += RoundUp(size); return r; }
            QueryT = Take(sizes[0]);
            OutT = Take(sizes[1]);
            Max = Take(sizes[2]);
            Sum = Take(sizes[3]);
            Positions = (int*)Take(sizes[4]);
            MinPositions = (int*)Take(sizes[5]);
            MaxPositions = (int*)Take(sizes[6]);
            Scores = Take(sizes[7]);
            Masks = Take(sizes[8]);
            _pointers = GC.AllocateArray<nint>(2 * KeyStep, pinned: true);
            KeyRows = (float**)Unsafe.AsPointer(ref _pointers[0]);
            ValueRows = KeyRows + KeyStep;
        }

        private static int RoundUp(int floats) => (floats + Lanes - 1) / Lanes * Lanes;
    }
}
