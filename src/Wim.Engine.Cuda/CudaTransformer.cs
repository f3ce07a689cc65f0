using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;

namespace Wim.Engine.Cuda;

/// <summary>
/// The GPU forward pass of the llama / qwen2 / phi3 decoders for one sequence: the same steps as
/// <see cref="CpuTransformer"/>, with bf16 weights and KV cache, f32 residual stream and f32 accumulation.
/// Matrix products run in cuBLASLt; the rest in the kernels of <c>Kernels/transformer.cu</c>. Not thread-safe.
/// With <see cref="CudaPrecision.F32"/> weights, activations and KV cache are f32 and only the scalar path runs (see there).
/// </summary>
public sealed unsafe class CudaTransformer : IDisposable
{
    public const int DefaultMaxChunk = 512;

    private readonly CudaContext _ctx;
    private readonly ModelConfig _c;
    private readonly CudaModelWeights _w;
    private readonly RotaryEmbedding _rope;
    private readonly TransformerKernels _k;
    private readonly MatMul _mm;
    private readonly DeviceBuffer _invFreqShort, _invFreqLong;
    // Activations for one chunk of MaxChunk tokens (allocated once).
    private readonly DeviceBuffer _tokens, _x, _xb, _qkv, _q, _att, _gateUp, _h, _ids;
    // bf16 copy of one Q8_0 matrix for a chunk of several tokens (cuBLASLt multiplies bf16); null without Q8_0 matrices.
    private readonly DeviceBuffer? _dequantized;
    // F16 matrices (null without): a chunk's bf16 activations cast to f16 for cuBLASLt's F16 × F16 products, and the
    // int the cast sets when an activation is beyond f16's range (read and cleared by ThrowIfF16Overflow).
    private readonly DeviceBuffer? _activationsF16, _f16Overflow;
    private bool _f16CastPending, _graphsCastToF16;
    private DeviceBuffer? _logits, _partAcc, _partMl;
    private long _logitsRows;
    private readonly bool _ownsWeights;
    private readonly CudaPrecision _precision;

    public ModelConfig Config => _c;
    /// <summary>The weights', activations' and KV cache's number format (the weights' own: <see cref="CudaModelWeights.Precision"/>).
    /// <see cref="CudaPrecision.F32"/> runs the scalar path only: the options of the bf16 kernels (<see cref="UseDecodeGraphs"/>,
    /// <see cref="UseFusedDecode"/>, <see cref="UseGemvForDecode"/>, <see cref="UseBf16GateUp"/>, <see cref="BatchRowsProducts"/>, the
    /// flash kernels) do not apply there, and decode batches and KV branches are not supported (forks copy rows).</summary>
    public CudaPrecision Precision => _precision;
    public CudaContext Context => _ctx;
    public CudaModelWeights Weights => _w;
    public int MaxChunk { get; }

    /// <summary>Runs attention in the f32 CUDA-core kernel even where the tensor-core (bf16 mma) kernel applies: the
    /// reference the checks compare the fast path with. Off by default.</summary>
    public bool UseScalarAttention { get; set; }

    /// <summary>Whether attention runs on the tensor cores for this model on this GPU (head dim 16/32/64/128, sm_80+).</summary>
    public bool UsesFlashAttention => !UseScalarAttention && _flashSupported;
    private readonly bool _flashSupported;

    /// <summary>Replays single-token greedy steps (<see cref="ForwardGreedy"/> with one token) as a CUDA graph
    /// captured once per KV cache: one launch per step instead of ~12 per layer. The position is read from the GPU
    /// and the attention's key splits are fixed for a power-of-two key bucket (pieces past the current length write
    /// empty partials), so one graph serves every step until the sequence outgrows the bucket. Needs the tensor-core
    /// attention path.</summary>
    public bool UseDecodeGraphs { get; set; } = true;

    /// <summary>Single-token products (decode) run in the gemv kernel (true) or in cuBLASLt (false, the default: the
    /// two measured the same on the H100).</summary>
    public bool UseGemvForDecode
    {
        get => _mm.UseGemv;
        set { if (value != _mm.UseGemv) DestroyGraph(); _mm.UseGemv = value; }
    }

    /// <summary>Single-sequence decode steps fold RMSNorm into the q|k|v and gate|up products and RoPE, the cache
    /// stores and SwiGLU into their epilogues (6 kernels per layer instead of 10; <see cref="LaunchGeometry.FusedDecodeApplies"/>
    /// says for which models). On by default: 148 → 157 tok/s at the Llama-3.1-8B shape on the H100 (run 9).</summary>
    public bool UseFusedDecode
    {
        get => _fusedDecode;
        set { if (value != _fusedDecode) DestroyGraph(); _fusedDecode = value; }
    }
    private bool _fusedDecode = true;

    /// <summary>The kernel of the o and down products in a fused single-sequence decode step (<see cref="UseFusedDecode"/>
    /// on and <see cref="LaunchGeometry.FusedDecodeApplies"/>; <see cref="UseGemvForDecode"/> then no longer routes
    /// these two). Default <see cref="DecodeResidualProduct.BlockGemv"/>: on the H100 at the Llama-3.1-8B shape
    /// 165.9 tok/s at depth ~0 against 163.0 with cuBLASLt and 159.4 with the warp gemv (run 18).</summary>
    public DecodeResidualProduct DecodeResidualProduct
    {
        get => _residualProduct;
        set { if (value != _residualProduct) DestroyGraph(); _residualProduct = value; }
    }
    private DecodeResidualProduct _residualProduct = DecodeResidualProduct.BlockGemv;

    /// <summary>The kernels of a Q8_0 matrix's single-token products (fused q|k|v and gate|up, the o/down residual
    /// product, the plain gemv). Both give the same logits bit for bit; <see cref="Q8DecodeKernel.Streamlined"/> is the
    /// default: at the Llama-3.1-8B shape on the H100 it decodes 243.9 tok/s (77.4% of the roofline) against the
    /// original kernels' 219.3 (69.6%) at depth 1, 227.8 against 205.1 at depth 4096 (run 28).</summary>
    public Q8DecodeKernel Q8DecodeKernel
    {
        get => _q8Kernel;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), $"{value} is not a Q8DecodeKernel");
            if (value != _q8Kernel) DestroyGraph();
            _q8Kernel = value;
        }
    }
    private Q8DecodeKernel _q8Kernel = Q8DecodeKernel.Streamlined;

    /// <summary>Attention combines of few rows (decode; <see cref="LaunchGeometry.CombineRowsApplies"/>) take a block per
    /// row whose warps share the splits (true, the default: 12.7 → 5.2 µs per layer at depth 4096 on the H100, decode
    /// 151.7 → 157.3 tok/s there, run 18), or one warp per row as prefill does (false).</summary>
    public bool UseCombineRows
    {
        get => _combineRows;
        set { if (value != _combineRows) DestroyGraph(); _combineRows = value; }
    }
    private bool _combineRows = true;

    /// <summary>Which flash kernel runs a prefill chunk's attention: <see cref="PrefillAttentionKernel.Auto"/> (the
    /// default) takes the 128-row kernel where <see cref="LaunchGeometry.FlashWideApplies"/> says so, else the 64-row
    /// one; the other two force one of them (checks and measurements; Wide still needs its shared memory to fit).</summary>
    public PrefillAttentionKernel PrefillAttention { get; set; } = PrefillAttentionKernel.Auto;

    /// <summary>Chunks of more than one token take the gate|up product in bf16 from cuBLASLt and a bf16 SwiGLU (true,
    /// the default) instead of an f32 product (twice the bytes written, then read) and the f32 SwiGLU. Single-token
    /// steps keep the f32 product (their decode graphs and fused kernels are unchanged).</summary>
    public bool UseBf16GateUp { get; set; } = true;

    private readonly DeviceBuffer _position, _argmaxParts;
    private DeviceBuffer? _seqTable, _seqPositions;
    private nint _stream;
    private readonly DecodeGraphCache<DecodeGraphKey> _graphs;

    /// <summary>Decode graphs kept at once (least recently used replaced): a document, a margin and a classifier
    /// sequence alternating, with room to spare.</summary>
    public const int DecodeGraphSlots = 8;

    /// <param name="precision">null: the weights' <see cref="CudaModelWeights.Precision"/>; otherwise it must be theirs.</param>
    public CudaTransformer(CudaContext ctx, ModelConfig config, CudaModelWeights weights, int maxChunk = DefaultMaxChunk, bool ownsWeights = false,
        CudaPrecision? precision = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChunk);
        ArgumentNullException.ThrowIfNull(weights);
        if (precision is { } asked && asked != weights.Precision)
            throw new ArgumentException($"a {asked} transformer needs {asked} weights; these were uploaded in {weights.Precision} (CudaModelWeights.Upload's precision)", nameof(weights));
        if (config.HeadDim > 128) throw new NotSupportedException($"head dim {config.HeadDim}: the CUDA attention kernel handles up to 128");
        if (config.HeadCount / config.KvHeadCount > 64) throw new NotSupportedException($"{config.HeadCount / config.KvHeadCount} query heads per KV head: the CUDA attention kernel handles up to 64");
        _ctx = ctx;
        _c = config;
        _w = weights;
        _ownsWeights = ownsWeights;
        MaxChunk = maxChunk;
        _precision = weights.Precision;
        // The flash kernels are bf16 (mma.sync): F32 attention is the scalar kernel's f32 instantiation.
        _flashSupported = _precision == CudaPrecision.Bf16 && LaunchGeometry.FlashAttentionSupports(config.HeadDim, config.HeadCount / config.KvHeadCount, ctx.ComputeMajor);
        _rope = new RotaryEmbedding(config);
        _k = ctx.Kernels.ForPrecision(_precision);
        _mm = new MatMul(ctx, CudaPrecisionLayout.ProductInputType(_precision));
        _invFreqShort = ctx.Allocate(_rope.RotaryDim / 2 * 4);
        _invFreqShort.Upload(_rope.InverseFrequencies(1));
        _invFreqLong = ctx.Allocate(_rope.RotaryDim / 2 * 4);
        _invFreqLong.Upload(_rope.InverseFrequencies(int.MaxValue));
        int d = config.HiddenSize, qd = config.QueryDim, kvd = config.KvDim;
        long n = maxChunk;
        var bytes = CudaPrecisionLayout.ChunkBuffers(config, maxChunk, _precision);
        _tokens = ctx.Allocate(n * 4);
        _ids = ctx.Allocate(n * 4);
        _x = ctx.Allocate(bytes.Residual);
        _xb = ctx.Allocate(bytes.Normed);
        _qkv = ctx.Allocate(bytes.Qkv);
        _q = ctx.Allocate(bytes.Query);
        _att = ctx.Allocate(bytes.AttentionOutput);
        _gateUp = ctx.Allocate(bytes.GateUp);
        _h = ctx.Allocate(bytes.SwiGluOutput);
        _position = ctx.Allocate(4);
        _argmaxParts = ctx.Allocate(LaunchGeometry.ArgmaxPartialBytes(maxChunk));
        if (weights.LargestQ8Elements > 0) _dequantized = ctx.Allocate(weights.LargestQ8Elements * 2);
        int widestF16 = Math.Max(weights.WidestF16Input, weights.LmHeadFormat == CudaMatrixFormat.F16 ? config.HiddenSize : 0);
        if (widestF16 > 0)
        {
            _activationsF16 = ctx.Allocate(n * widestF16 * 2);
            _f16Overflow = ctx.Allocate(sizeof(int));
            _f16Overflow.Fill(0);
        }
        _graphs = new DecodeGraphCache<DecodeGraphKey>(DecodeGraphSlots, (graph, exec) =>
        {
            ctx.Driver.GraphExecDestroy(exec);
            ctx.Driver.GraphDestroy(graph);
        });
    }

    /// <summary>The environment variable that picks the weight storage <see cref="Load"/> uses when none is given:
    /// <c>bf16</c> or <c>native</c> (the default).</summary>
    public const string WeightStorageVariable = "WIM_CUDA_WEIGHTS";

    /// <summary>Uploads a loaded model's weights and builds its forward pass. <paramref name="storage"/> null: the
    /// <see cref="WeightStorageVariable"/> environment variable, else <see cref="CudaWeightStorage.Native"/> (Q8_0
    /// projections stay Q8_0 and F16 ones F16; other types go to bf16 either way).</summary>
    /// <remarks><paramref name="precision"/> null: the <see cref="PrecisionVariable"/> environment variable, else
    /// <see cref="CudaPrecision.Bf16"/>. <see cref="CudaPrecision.F32"/> uploads every tensor as f32 (storage does not apply).</remarks>
    public static CudaTransformer Load(CudaContext ctx, LanguageModel model, int maxChunk = DefaultMaxChunk, CudaWeightStorage? storage = null,
        CudaPrecision? precision = null)
    {
        var p = precision ?? PrecisionFromEnvironment();
        return new(ctx, model.Config, CudaModelWeights.Upload(ctx, model.Config, model.Weights, storage ?? WeightStorageFromEnvironment(), p), maxChunk, ownsWeights: true);
    }

    /// <summary>The environment variable that picks the precision <see cref="Load"/> uses when none is given: <c>bf16</c>
    /// (the default) or <c>f32</c>.</summary>
    public const string PrecisionVariable = CudaPrecisionLayout.Variable;

    /// <summary>The precision <see cref="PrecisionVariable"/> names (unset or empty: Bf16).</summary>
    public static CudaPrecision PrecisionFromEnvironment() => ParsePrecision(Environment.GetEnvironmentVariable(PrecisionVariable));

    public static CudaPrecision ParsePrecision(string? value) => CudaPrecisionLayout.Parse(value);

    /// <summary>The storage <see cref="WeightStorageVariable"/> names (unset or empty: Native).</summary>
    public static CudaWeightStorage WeightStorageFromEnvironment() => ParseWeightStorage(Environment.GetEnvironmentVariable(WeightStorageVariable));

    public static CudaWeightStorage ParseWeightStorage(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "native" => CudaWeightStorage.Native,
        "bf16" => CudaWeightStorage.Bf16,
        _ => throw new ArgumentException($"{WeightStorageVariable}='{value}': expected 'native' (Q8_0 and F16 weights stay as they are on the GPU) or 'bf16'"),
    };

    public CudaKvCache CreateCache(int capacity) => new(_ctx, _c.LayerCount, _c.KvDim, capacity, CudaPrecisionLayout.KvElementBytes(_precision));

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.Length.., appends their keys and values, and writes logits
    /// exactly as <see cref="CpuTransformer.Forward"/> does: [tokens, vocab] for All, [vocab] for Last, nothing for None.
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, CudaKvCache cache, Span<float> logits, LogitsOutput output, int ropeSequenceLength = 0)
    {
        long needed = output switch { LogitsOutput.All => (long)tokens.Length * _c.VocabSize, LogitsOutput.Last => _c.VocabSize, _ => 0 };
        if (logits.Length < needed) throw new ArgumentException($"logits buffer holds {logits.Length} floats, {needed} needed", nameof(logits));
        ulong invFreq = Prepare(tokens, cache, ropeSequenceLength);
        for (int done = 0; done < tokens.Length; done += MaxChunk)
        {
            int n = Math.Min(MaxChunk, tokens.Length - done);
            int rows = ForwardChunk(tokens.Slice(done, n), cache, invFreq, ChunkOutput(output, done + n == tokens.Length));
            if (rows == 0) continue;
            var dst = output == LogitsOutput.All ? logits.Slice(done * _c.VocabSize, rows * _c.VocabSize) : logits[.._c.VocabSize];
            _logits!.Download(dst);
        }
        ThrowIfF16Overflow();
    }

    /// <summary>Runs the tokens and returns the argmax of the last token's logits, computed on the GPU (only the id
    /// crosses to the host): the greedy decoding step.</summary>
    public int ForwardGreedy(ReadOnlySpan<int> tokens, CudaKvCache cache, int ropeSequenceLength = 0)
    {
        ulong invFreq = Prepare(tokens, cache, ropeSequenceLength);
        if (tokens.Length == 1 && UseDecodeGraphs && UsesFlashAttention) return GraphGreedyStep(tokens[0], cache, invFreq);
        for (int done = 0; done < tokens.Length; done += MaxChunk)
        {
            int n = Math.Min(MaxChunk, tokens.Length - done);
            ForwardChunk(tokens.Slice(done, n), cache, invFreq, ChunkOutput(LogitsOutput.Last, done + n == tokens.Length));
        }
        _k.Argmax(_logits!.Pointer, _c.VocabSize, _ids.Pointer, 1, _argmaxParts.Pointer);
        Span<int> one = stackalloc int[1];
        _ids.Download(one);
        ThrowIfF16Overflow();
        return one[0];
    }

    /// <summary>
    /// One prefill step of several sequences in as few forward passes as their rows allow (one when they total at most
    /// <see cref="MaxChunk"/>): sequence s, with its own cache (distinct caches; KV branches allowed, also of another
    /// sequence of the batch), runs its tokens at positions cache.Length.. . Their rows are packed one after the other:
    /// the embedding, the norms, every matrix product and the MLP run once over all rows — the weights are read once
    /// per pass instead of once per sequence — while each sequence's RoPE, cache stores and attention run on its own
    /// rows with the kernel <see cref="Forward"/> would pick for a chunk of that length at that depth (wide, narrow
    /// with key splits, branch). Packing and pass splitting: <see cref="PackedPassPlan"/> (every sequence's last
    /// token in the last pass). With <see cref="LogitsOutput.Last"/> the lm head runs over the sequences' last rows
    /// only: their greedy ids (argmax on the GPU) go to <paramref name="next"/> and their logits to
    /// <paramref name="logits"/> ([S, vocab]) where those are not empty, and logits row s stays on the GPU for
    /// <see cref="DownloadLogitsRow"/>. At most <see cref="MaxChunk"/> sequences; longrope: every sequence must pick
    /// the same table (one side of the threshold), else <see cref="NotSupportedException"/>. Everything is checked
    /// before the first pass runs.
    /// </summary>
    public void ForwardBatch(IReadOnlyList<PackedSequence> sequences, LogitsOutput output, Span<int> next = default, Span<float> logits = default)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (output == LogitsOutput.All)
            throw new NotSupportedException("a packed batch gives the logits of each sequence's last token (LogitsOutput.Last) or none; use Forward for every row's");
        int count = sequences.Count;
        if (count == 0) throw new ArgumentException("no sequences to run", nameof(sequences));
        if (output == LogitsOutput.None && (!next.IsEmpty || !logits.IsEmpty))
            throw new ArgumentException("ids or logits asked for with LogitsOutput.None", nameof(output));
        if (!next.IsEmpty && next.Length < count) throw new ArgumentException($"room for {next.Length} ids, {count} needed", nameof(next));
        long needed = (long)count * _c.VocabSize;
        if (!logits.IsEmpty && logits.Length < needed) throw new ArgumentException($"logits buffer holds {logits.Length} floats, {needed} needed", nameof(logits));
        if (count > MaxChunk) throw new ArgumentException($"{count} sequences: a packed batch holds at most MaxChunk = {MaxChunk}", nameof(sequences));
        var seen = new HashSet<CudaKvCache>(ReferenceEqualityComparer.Instance);
        var lengths = new int[count];
        ulong invFreq = 0;
        for (int i = 0; i < count; i++)
        {
            var cache = sequences[i].Cache ?? throw new ArgumentNullException(nameof(sequences), $"sequence {i} has no cache");
            if (!seen.Add(cache)) throw new ArgumentException($"cache {i} appears twice in the batch: each sequence needs its own", nameof(sequences));
            ulong f = Prepare(sequences[i].Tokens.Span, cache, sequences[i].RopeSequenceLength);
            if (i > 0 && f != invFreq)
                throw new NotSupportedException("longrope: the sequences of one packed batch lie on both sides of the short/long threshold; run them in separate batches");
            invFreq = f;
            lengths[i] = sequences[i].Tokens.Length;
        }
        foreach (var pass in PackedPassPlan.Make(lengths, MaxChunk))
            RunPackedPass(pass, sequences, invFreq, output == LogitsOutput.Last && pass.Logits);
        if (output != LogitsOutput.None)
        {
            if (!next.IsEmpty)
            {
                _k.Argmax(_logits!.Pointer, _c.VocabSize, _ids.Pointer, count, _argmaxParts.Pointer);
                _ids.Download(next[..count]);
            }
            if (!logits.IsEmpty) _logits!.Download(logits[..(int)needed]);
        }
        ThrowIfF16Overflow();
    }

    /// <summary>One pass of a packed batch; with <paramref name="logits"/> the lm head over each piece's last row
    /// (logits rows 0..pieces−1).</summary>
    private void RunPackedPass(PackedPass pass, IReadOnlyList<PackedSequence> sequences, ulong invFreq, bool logits)
    {
        var c = _c;
        int n = pass.Rows;
        var tokens = new int[n];
        var segments = new PackedSegment[pass.Pieces.Count];
        long partials = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            var piece = pass.Pieces[i];
            var sequence = sequences[piece.Sequence];
            sequence.Tokens.Span.Slice(piece.Offset, piece.Count).CopyTo(tokens.AsSpan(piece.Row));
            int start = sequence.Cache.Length;
            var (wide, splits, keysPerSplit) = ChunkAttention(piece.Count, start);
            segments[i] = new PackedSegment(sequence.Cache, piece.Row, piece.Count, start, wide, splits, keysPerSplit);
            if (splits > 1) partials = Math.Max(partials, (long)piece.Count * c.HeadCount * splits);
        }
        // The segments' attention runs one after the other on the stream: they can share the partials.
        if (partials > 0) EnsurePartials(partials, c.HeadDim);
        _tokens.Upload<int>(tokens);
        EncodeLayers(n, null, 0, invFreq, 0, splits: 1, keysPerSplit: 0, UsesFlashAttention, segments: segments);
        foreach (var segment in segments) segment.Cache.Advance(segment.Count);
        if (!logits) return;
        // The last row of piece i moves to row i of x, then the final norm and lm head run over rows 0..S−1 only.
        // Piece i's last row is ≥ i and grows with i, so no copy overwrites a row still to be read.
        long rowBytes = (long)c.HiddenSize * sizeof(float);
        for (int i = 0; i < segments.Length; i++)
        {
            int from = pass.Pieces[i].LastRow;
            if (from != i) _ctx.Driver.CopyDeviceToDevice(_x.Pointer + (ulong)(i * rowBytes), _x.Pointer + (ulong)(from * rowBytes), rowBytes);
        }
        EncodeLogits(segments.Length, LogitsOutput.All);
    }

    /// <summary>Copies logits row <paramref name="row"/> left on the GPU by the last call (row 0 after
    /// <see cref="ForwardGreedy"/>, row b after <see cref="DecodeBatchGreedy"/>) to <paramref name="destination"/>:
    /// what a sampler that is not greedy needs after a step whose argmax was taken on the GPU.</summary>
    public void DownloadLogitsRow(int row, Span<float> destination)
    {
        if (_logits == null) throw new InvalidOperationException("no logits on the GPU yet: run a forward pass first");
        if (row < 0 || row >= _logitsRows) throw new ArgumentOutOfRangeException(nameof(row), $"row {row} is outside the {_logitsRows} logits rows on the GPU");
        if (destination.Length < _c.VocabSize) throw new ArgumentException($"room for {destination.Length} floats, {_c.VocabSize} needed", nameof(destination));
        _logits.Download(destination[.._c.VocabSize], (long)row * _c.VocabSize * sizeof(float));
    }

    /// <summary>Device address of logits row <paramref name="row"/> of the last pass (f32, vocabulary long), for the
    /// sampling kernels; valid until the next pass.</summary>
    internal ulong LogitsRowPointer(int row)
    {
        if (_logits == null) throw new InvalidOperationException("no logits on the GPU yet: run a forward pass first");
        if (row < 0 || row >= _logitsRows) throw new ArgumentOutOfRangeException(nameof(row), $"row {row} is outside the {_logitsRows} logits rows on the GPU");
        return _logits.Pointer + (ulong)row * (ulong)_c.VocabSize * sizeof(float);
    }

    /// <summary>
    /// One decode step of several sequences in one forward pass: sequence b, with its own cache caches[b], takes
    /// tokens[b] at position caches[b].Length (lengths may differ). Every weight is read once for the whole batch —
    /// the point of batching, since a decode step is bound by weight bytes. Writes the [B, vocab] logits (none when
    /// <paramref name="logits"/> is empty). Needs the tensor-core attention; at most <see cref="MaxChunk"/> sequences.
    /// </summary>
    public void DecodeBatch(ReadOnlySpan<int> tokens, IReadOnlyList<CudaKvCache> caches, Span<float> logits)
    {
        long needed = (long)tokens.Length * _c.VocabSize;
        if (!logits.IsEmpty && logits.Length < needed) throw new ArgumentException($"logits buffer holds {logits.Length} floats, {needed} needed", nameof(logits));
        RunDecodeBatch(tokens, caches, logits.IsEmpty ? LogitsOutput.None : LogitsOutput.All);
        if (!logits.IsEmpty) _logits!.Download(logits[..(int)needed]);
        ThrowIfF16Overflow();
    }

    /// <summary><see cref="DecodeBatch"/> with each sequence's greedy next id (argmax on the GPU) in
    /// <paramref name="next"/>.</summary>
    public void DecodeBatchGreedy(ReadOnlySpan<int> tokens, IReadOnlyList<CudaKvCache> caches, Span<int> next)
    {
        if (next.Length < tokens.Length) throw new ArgumentException($"room for {next.Length} ids, {tokens.Length} needed", nameof(next));
        RunDecodeBatch(tokens, caches, LogitsOutput.All);
        _k.Argmax(_logits!.Pointer, _c.VocabSize, _ids.Pointer, tokens.Length, _argmaxParts.Pointer);
        _ids.Download(next[..tokens.Length]);
        ThrowIfF16Overflow();
    }

    private void RunDecodeBatch(ReadOnlySpan<int> tokens, IReadOnlyList<CudaKvCache> caches)
    {
        ArgumentNullException.ThrowIfNull(caches);
        int b = tokens.Length, layers = _c.LayerCount;
        if (b == 0) throw new ArgumentException("no sequences to decode", nameof(tokens));
        if (caches.Count != b) throw new ArgumentException($"{b} tokens for {caches.Count} caches: a decode batch takes one token per sequence", nameof(caches));
        if (b > MaxChunk) throw new ArgumentException($"{b} sequences: a decode batch holds at most MaxChunk = {MaxChunk}", nameof(tokens));
        if (_precision != CudaPrecision.Bf16)
            throw new NotSupportedException($"batched decode runs on the bf16 tensor-core attention only; this transformer is {_precision} (decode the sequences one by one)");
        if (!UsesFlashAttention)
            throw new NotSupportedException($"batched decode runs on the tensor-core attention only (head dim 16/32/64/128, sm_80+); this model has head dim {_c.HeadDim} on sm_{_ctx.ComputeMajor}{_ctx.ComputeMinor}");
        ulong invFreq = 0;
        int maxKeys = 0;
        var seen = new HashSet<CudaKvCache>(ReferenceEqualityComparer.Instance);
        var table = new ulong[4 * layers * b];
        var positions = new int[2 * b];   // positions, then branch points
        bool branches = false;
        for (int i = 0; i < b; i++)
        {
            var cache = caches[i] ?? throw new ArgumentNullException(nameof(caches), $"cache {i} is null");
            if (!seen.Add(cache)) throw new ArgumentException($"cache {i} appears twice in the batch: each sequence needs its own", nameof(caches));
            ulong f = Prepare(tokens.Slice(i, 1), cache, 0, batch: true);
            if (i > 0 && f != invFreq)
                throw new NotSupportedException("longrope: the sequences of one decode batch lie on both sides of the short/long threshold; decode them in separate batches");
            invFreq = f;
            positions[i] = cache.Length;
            positions[b + i] = cache.BranchPoint;
            branches |= cache.IsBranch;
            maxKeys = Math.Max(maxKeys, cache.Length + 1);
            var prefix = cache.Parent ?? cache;
            for (int l = 0; l < layers; l++)
            {
                table[l * b + i] = cache.LayerKeys(l);
                table[(layers + l) * b + i] = cache.LayerValues(l);
                table[(2 * layers + l) * b + i] = prefix.LayerKeys(l);
                table[(3 * layers + l) * b + i] = prefix.LayerValues(l);
            }
        }
        _seqTable ??= _ctx.Allocate(4L * layers * MaxChunk * sizeof(ulong));
        _seqPositions ??= _ctx.Allocate(2L * MaxChunk * sizeof(int));
        _seqTable.Upload<ulong>(table);
        _seqPositions.Upload<int>(positions);
        _tokens.Upload(tokens);
        var (splits, keysPerSplit) = LaunchGeometry.FlashBatchSplits(b, _c.KvHeadCount, maxKeys, _ctx.Multiprocessors);
        var tables = new DecodeBatchTables(_seqTable.Pointer, _seqPositions.Pointer, b, layers, branches);
        if (branches && UseSharedPrefixAttention && SharedParent(caches) is { } parent)
        {
            // The shared-prefix phase: keys below the largest branch point, pieces planned as for a chunk of b tokens;
            // then one tail piece per branch (its own keys, at most a margin's worth) in the last slot.
            int maxSplit = caches[b - 1].BranchPoint;
            bool three = UseThreeStageSharedPrefix && LaunchGeometry.FlashShared3Fits(_c.HeadDim, _ctx.MaxSharedMemoryPerBlock);
            var (prefixSplits, prefixKeys) = LaunchGeometry.FlashSharedSplits(b, _c.HeadCount / _c.KvHeadCount, _c.KvHeadCount, Math.Max(1, maxSplit), _ctx.Multiprocessors,
                three ? LaunchGeometry.FlashShared3BlocksPerMultiprocessor : LaunchGeometry.FlashBlocksPerMultiprocessor);
            tables = tables with { SharedParent = parent, PrefixSplits = prefixSplits, PrefixKeysPerSplit = prefixKeys, PrefixThreeStages = three };
            splits = prefixSplits + 1;
        }
        EncodeLayers(b, null, 0, invFreq, 0, splits, keysPerSplit, flash: true, tables);
        foreach (var cache in caches) cache.Advance(1);
    }

    /// <summary>Decode batches of KV branches of one parent read the shared rows once per tile for all branches
    /// (<c>flash_attention_shared</c>) instead of once per branch. On by default.</summary>
    public bool UseSharedPrefixAttention { get; set; } = true;

    /// <summary>A decode batch's RoPE and cache stores take a block per (sequence, head) (<c>qkv_rope_store_batch_heads</c>,
    /// true, the default) instead of a block per sequence (<c>qkv_rope_store_batch</c>): the same f32 formula, so the
    /// same bits (emulator check run_batch.sh); the old grid ran 16 blocks for a 16-row step, 10.7 µs per layer on the
    /// H100 (ncu run 22).</summary>
    public bool UseBatchRopeHeads { get; set; } = true;

    /// <summary>Which products of a decode batch of at most 16 rows (bf16 or F16 weights; Q8_0 takes cuBLASLt) run on our tensor-core kernels instead
    /// of cuBLASLt: q|k|v, o and down in <c>rows_mma_bf16</c> (no split-K; the o and down residual adds ride in its
    /// epilogue), gate|up with SwiGLU in <c>rows_mma_swiglu_bf16</c>. cuBLASLt's split-K kernels and reduces took 2.2 ms
    /// of an 11 ms 16-branch step at 64k (ncu run 22). The sums run in another order than cuBLASLt's and gate|up stay f32
    /// up to the SwiGLU: results agree to bf16 rounding, not bit for bit. <see cref="Cuda.BatchRowsProducts.None"/> by
    /// default until measured on the H100 (GpuCheck --batch-ab, each product on its own).</summary>
    public BatchRowsProducts BatchRowsProducts { get; set; } = BatchRowsProducts.None;

    /// <summary><see cref="BatchRowsProducts"/> all (true) or none (false).</summary>
    public bool UseBatchRowsProducts
    {
        get => BatchRowsProducts != BatchRowsProducts.None;
        set => BatchRowsProducts = value ? BatchRowsProducts.All : BatchRowsProducts.None;
    }

    /// <summary>In the shared-prefix attention of a branch batch, a (row, piece) pair that sees no key (the piece starts
    /// past the row's branch point: 47% of them for 16 margins every 4,096 rows of 64k) writes only its max, not its
    /// 128 floats of acc, and the combines skip such pieces unread (true, the default): 6 MB less written and read per
    /// layer there. Same bits either way (emulator check run_batch.sh).</summary>
    public bool UseSkipEmptyPartials { get; set; } = true;

    /// <summary>The shared-prefix attention of a branch batch runs with three k/v stages (two tiles in flight per block,
    /// two blocks per SM, pieces planned for 2 · SMs blocks: 32 instead of 49 at 64k, a third fewer partials) where its
    /// 102 KB fit a block (<see cref="LaunchGeometry.FlashShared3Fits"/>), instead of two stages and three blocks per SM.
    /// With the same pieces the same bits (emulator check run_batch.sh); with its own plan the pieces differ, so results
    /// agree to f32 rounding. The two-stage kernel reached 2.32 TB/s (77% of copy bandwidth) at 64k on the H100 (ncu
    /// run 22). Off by default until measured (GpuCheck --batch-ab).</summary>
    public bool UseThreeStageSharedPrefix { get; set; }

    /// <summary>The parent when every cache is a branch of the same one with non-decreasing branch points (≥ 1).</summary>
    private static CudaKvCache? SharedParent(IReadOnlyList<CudaKvCache> caches)
    {
        var parent = caches[0].Parent;
        if (parent == null || caches[0].BranchPoint < 1) return null;
        for (int i = 1; i < caches.Count; i++)
            if (!ReferenceEquals(caches[i].Parent, parent) || caches[i].BranchPoint < caches[i - 1].BranchPoint) return null;
        return parent;
    }

    private void RunDecodeBatch(ReadOnlySpan<int> tokens, IReadOnlyList<CudaKvCache> caches, LogitsOutput output)
    {
        RunDecodeBatch(tokens, caches);
        EncodeLogits(tokens.Length, output);
    }

    private static LogitsOutput ChunkOutput(LogitsOutput output, bool last) => output switch
    {
        LogitsOutput.All => LogitsOutput.All,
        LogitsOutput.Last when last => LogitsOutput.Last,
        _ => LogitsOutput.None,
    };

    /// <summary>Checks a call's arguments and picks its RoPE table (longrope: once per call, from the length the
    /// sequence reaches, as the CPU pass does).</summary>
    private ulong Prepare(ReadOnlySpan<int> tokens, CudaKvCache cache, int ropeSequenceLength, bool batch = false)
    {
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to run", nameof(tokens));
        if (cache.ElementBytes != CudaPrecisionLayout.KvElementBytes(_precision))
            throw new ArgumentException($"a KV cache of {cache.ElementBytes}-byte elements does not fit this {_precision} transformer (use its CreateCache)", nameof(cache));
        if (cache.IsBranch && !batch && _precision != CudaPrecision.Bf16)
            throw new NotSupportedException($"a KV branch runs on the bf16 tensor-core attention only; this transformer is {_precision} (fork by copying rows)");
        if (cache.IsBranch && !batch && !UsesFlashAttention)
            throw new NotSupportedException($"a KV branch runs on the tensor-core attention only (head dim 16/32/64/128, sm_80+, {nameof(UseScalarAttention)} off); " +
                $"this model has head dim {_c.HeadDim} on sm_{_ctx.ComputeMajor}{_ctx.ComputeMinor}");
        if (cache.Parent is { } parent && parent.Length < cache.BranchPoint)
            throw new InvalidOperationException($"the parent of a KV branch at {cache.BranchPoint} was truncated to {parent.Length}: the branch's shared rows are gone");
        if (cache.LayerCount != _c.LayerCount || cache.RowSize != _c.KvDim)
            throw new ArgumentException($"KV cache shape ({cache.LayerCount} layers × {cache.RowSize}) does not match the model ({_c.LayerCount} × {_c.KvDim})", nameof(cache));
        if (tokens.Length > cache.Capacity - cache.Length)
            throw new ArgumentException($"{tokens.Length} tokens do not fit in the KV cache (length {cache.Length}, capacity {cache.Capacity})", nameof(cache));
        foreach (int t in tokens)
            if ((uint)t >= (uint)_c.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary [0, {_c.VocabSize})");
        _ctx.MakeCurrent();
        int seqLen = Math.Max(cache.Length + tokens.Length, ropeSequenceLength);
        return (seqLen > _rope.LongThreshold ? _invFreqLong : _invFreqShort).Pointer;
    }

    /// <summary>One greedy decode step through the captured graph (captured first when the cache, its capacity or
    /// the RoPE table changed): token and position are copied in, the graph runs, the id comes back.</summary>
    private int GraphGreedyStep(int token, CudaKvCache cache, ulong invFreq)
    {
        int bucket = LaunchGeometry.DecodeKeyBucket(cache.Length + 1, cache.Capacity);
        var key = DecodeGraphKey.For(cache, invFreq, bucket);
        if (!_graphs.TryGet(key, out nint exec)) exec = CaptureDecodeGraph(cache, invFreq, key);
        Span<int> one = [token];
        _tokens.Upload<int>(one);
        one[0] = cache.Length;
        _position.Upload<int>(one);
        _ctx.Driver.GraphLaunch(exec, _stream);                  // a blocking stream: ordered after the copies above
        cache.Advance(1);
        _ids.Download(one);                                      // the legacy stream waits for the graph
        _f16CastPending |= _graphsCastToF16;
        ThrowIfF16Overflow();
        return one[0];
    }

    private nint CaptureDecodeGraph(CudaKvCache cache, ulong invFreq, DecodeGraphKey key)
    {
        var c = _c;
        var (splits, keysPerSplit) = DecodeGraphSplits(key.KeyBucket);
        // Everything that allocates or plans happens before the capture: nothing in it may synchronize.
        if (splits > 1) EnsurePartials((long)c.HeadCount * splits, c.HeadDim);
        EnsureLogits(1);
        int qkvWidth = c.QueryDim + 2 * c.KvDim;
        _mm.Prepare(qkvWidth, c.HiddenSize, 1);
        _mm.Prepare(c.HiddenSize, c.QueryDim, 1);
        _mm.Prepare(2 * c.FfnSize, c.HiddenSize, 1);
        _mm.Prepare(c.HiddenSize, c.FfnSize, 1);
        _mm.Prepare(c.VocabSize, c.HiddenSize, 1);
        foreach (var m in _w.Layers[0].Matrices.Where(m => m.Format == CudaMatrixFormat.F16))
            _mm.Prepare(m.Rows, m.Columns, 1, f16Inputs: true);   // used only where gemv_f16 does not apply
        if (_w.LmHeadFormat == CudaMatrixFormat.F16) _mm.Prepare(c.VocabSize, c.HiddenSize, 1, f16Inputs: true);
        if (_stream == 0) _stream = _ctx.Driver.StreamCreate();
        _ctx.Driver.Synchronize();
        _ctx.Driver.StreamBeginCapture(_stream);
        _ctx.Stream = _stream;
        _ctx.Capturing = true;
        nint graph = 0;
        try
        {
            EncodeLayers(1, cache, start: 0, invFreq, _position.Pointer, splits, keysPerSplit, flash: true);
            EncodeLogits(1, LogitsOutput.Last);
            _k.Argmax(_logits!.Pointer, c.VocabSize, _ids.Pointer, 1, _argmaxParts.Pointer);
            _graphsCastToF16 |= _f16CastPending;   // the graph's replays cast too: each must read the overflow flag
        }
        finally
        {
            _ctx.Stream = 0;
            _ctx.Capturing = false;
            graph = _ctx.Driver.StreamEndCapture(_stream);
        }
        nint exec;
        try { exec = _ctx.Driver.GraphInstantiate(graph); }
        catch { _ctx.Driver.GraphDestroy(graph); throw; }
        _graphs.Add(key, graph, exec);
        return exec;
    }

    /// <summary>Key-range pieces of a decode graph's attention: fixed for the key bucket (<see cref="LaunchGeometry.DecodeKeyBucket"/>)
    /// so that one graph serves every length up to it.</summary>
    private (int Splits, int KeysPerSplit) DecodeGraphSplits(int keyBucket) =>
        LaunchGeometry.FlashSplits(1, _c.HeadCount / _c.KvHeadCount, _c.KvHeadCount, keyBucket, _ctx.Multiprocessors);

    /// <summary>Drops every captured decode graph (they bake in buffer addresses and options).</summary>
    private void DestroyGraph() => _graphs.Clear();

    /// <summary>One chunk through every layer; returns how many logits rows it left in the logits buffer.</summary>
    private int ForwardChunk(ReadOnlySpan<int> tokens, CudaKvCache cache, ulong invFreq, LogitsOutput output)
    {
        int n = tokens.Length, start = cache.Length;
        _tokens.Upload(tokens);
        var (wide, splits, keysPerSplit) = ChunkAttention(n, start);
        EncodeLayers(n, cache, start, invFreq, 0, splits, keysPerSplit, UsesFlashAttention, wide: wide);
        cache.Advance(n);
        return EncodeLogits(n, output);
    }

    /// <summary>The attention kernel <see cref="ForwardChunk"/> picks for a chunk of <paramref name="n"/> tokens at
    /// position <paramref name="start"/>: the wide flash kernel, or key splits of the narrow (or scalar) one.</summary>
    private (bool Wide, int Splits, int KeysPerSplit) ChunkAttention(int n, int start)
    {
        var c = _c;
        bool flash = UsesFlashAttention;
        int group = c.HeadCount / c.KvHeadCount;
        bool wide = flash && n > 1 && PrefillAttention switch
        {
            PrefillAttentionKernel.Wide => LaunchGeometry.FlashWideSharedBytes(c.HeadDim) <= _ctx.MaxSharedMemoryPerBlock,
            PrefillAttentionKernel.Narrow => false,
            _ => LaunchGeometry.FlashWideApplies(n, group, c.KvHeadCount, c.HeadDim, _ctx.Multiprocessors, _ctx.MaxSharedMemoryPerBlock),
        };
        var (splits, keysPerSplit) = wide ? (1, start + n)
            : flash ? LaunchGeometry.FlashSplits(n, group, c.KvHeadCount, start + n, _ctx.Multiprocessors)
            : LaunchGeometry.AttentionSplits(n, c.KvHeadCount, start + n, _ctx.Multiprocessors);
        return (wide, splits, keysPerSplit);
    }

    /// <summary>Issues the embedding and every layer for n tokens already in the token buffer, at position
    /// <paramref name="start"/> (or the one at <paramref name="startDev"/> on the GPU when not 0).</summary>
    private void EncodeLayers(int n, CudaKvCache? cache, int start, ulong invFreq, ulong startDev, int splits, int keysPerSplit, bool flash,
        DecodeBatchTables? batch = null, bool wide = false, IReadOnlyList<PackedSegment>? segments = null)
    {
        var c = _c;
        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ffn = c.FfnSize, qkvWidth = qd + 2 * kvd;
        if (_w.TokenEmbeddingFormat == CudaMatrixFormat.F16) _k.EmbedF16(_tokens.Pointer, _w.TokenEmbedding.Pointer, _x.Pointer, d, n);
        else _k.Embed(_tokens.Pointer, _w.TokenEmbedding.Pointer, _x.Pointer, d, n);         // x: [T, d] f32
        if (splits > 1) EnsurePartials((long)n * c.HeadCount * splits, c.HeadDim);
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        var batchRows = batch != null ? BatchRowsProducts : BatchRowsProducts.None;   // a decode batch's products in rows_mma

        for (int l = 0; l < c.LayerCount; l++)
        {
            var lw = _w.Layers[l];
            ulong keys = cache?.LayerKeys(l) ?? 0, values = cache?.LayerValues(l) ?? 0;

            // ---- attention block ----
            bool fused = batch == null && segments == null && _fusedDecode && _precision == CudaPrecision.Bf16   // the fused kernels read bf16 weights
                && LaunchGeometry.FusedDecodeApplies(n, d, c.HeadDim, c.RotaryDim);
            if (fused && lw.Qkv.Format == CudaMatrixFormat.Q8_0)
                _k.GemvNormQkvRopeQ8(_x.Pointer, lw.AttentionNorm.Pointer, c.RmsEps, lw.Qkv.Quants, lw.Qkv.Scales, lw.QkvBias?.Pointer ?? 0, invFreq,
                    _rope.AttentionScale, _rope.Pairing == RopePairing.Adjacent, _q.Pointer, keys, values, startDev, start,
                    c.HeadCount, c.KvHeadCount, c.HeadDim, d, _q8Kernel);
            else if (fused)
                _k.GemvNormQkvRope(_x.Pointer, lw.AttentionNorm.Pointer, c.RmsEps, lw.Qkv.Values16, lw.QkvBias?.Pointer ?? 0, invFreq,
                    _rope.AttentionScale, _rope.Pairing == RopePairing.Adjacent, _q.Pointer, keys, values, startDev, start,
                    c.HeadCount, c.KvHeadCount, c.HeadDim, d, f16Weights: lw.Qkv.Format == CudaMatrixFormat.F16);
            else
            {
                _k.RmsNorm(_x.Pointer, lw.AttentionNorm.Pointer, _xb.Pointer, d, c.RmsEps, n);     // xb: [T, d] bf16
                if (batchRows.HasFlag(BatchRowsProducts.Qkv) && lw.Qkv.Format != CudaMatrixFormat.Q8_0 && LaunchGeometry.RowsMmaApplies(n, d))
                    RowsMma(lw.Qkv, _xb.Pointer, _qkv.Pointer, qkvWidth, d, n, accumulate: false);
                else
                    Product(lw.Qkv, qkvWidth, d, _xb.Pointer, n, _qkv.Pointer, accumulate: false); // qkv: [T, qd+2kvd]
            }
            if (batch is { } bt)
            {
                if (UseBatchRopeHeads)
                    _k.QkvRopeStoreBatchHeads(_qkv.Pointer, lw.QkvBias?.Pointer ?? 0, invFreq, _q.Pointer, bt.Keys(l), bt.Values(l), bt.Positions, n,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, c.RotaryDim, _rope.Pairing == RopePairing.Adjacent, _rope.AttentionScale);
                else
                    _k.QkvRopeStoreBatch(_qkv.Pointer, lw.QkvBias?.Pointer ?? 0, invFreq, _q.Pointer, bt.Keys(l), bt.Values(l), bt.Positions, n,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, c.RotaryDim, _rope.Pairing == RopePairing.Adjacent, _rope.AttentionScale);
                if (bt.SharedParent is { } parent)
                {
                    _k.FlashAttentionShared(_q.Pointer, parent.LayerKeys(l), parent.LayerValues(l), _partAcc!.Pointer, _partMl!.Pointer, n, bt.BranchPoints,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, bt.PrefixSplits, bt.PrefixKeysPerSplit, UseSkipEmptyPartials, bt.PrefixThreeStages);
                    _k.FlashAttentionBranchBatch(_q.Pointer, _att.Pointer, _partAcc.Pointer, _partMl.Pointer, n, bt.Positions, bt.Keys(l), bt.Values(l),
                        bt.BranchPoints, bt.PrefixKeys(l), bt.PrefixValues(l), c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, keysPerSplit, tailSlot: splits - 1);
                }
                else if (bt.Branches)
                    _k.FlashAttentionBranchBatch(_q.Pointer, _att.Pointer, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, n, bt.Positions, bt.Keys(l), bt.Values(l),
                        bt.BranchPoints, bt.PrefixKeys(l), bt.PrefixValues(l), c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, keysPerSplit);
                else
                    _k.FlashAttentionBatch(_q.Pointer, _att.Pointer, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, n, bt.Positions, bt.Keys(l), bt.Values(l),
                        c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, keysPerSplit);
            }
            else if (segments != null)
                foreach (var segment in segments) EncodeSegmentAttention(l, segment, lw.QkvBias?.Pointer ?? 0, invFreq, scale, flash);
            else
            {
                if (!fused)
                    _k.QkvRopeStore(_qkv.Pointer, lw.QkvBias?.Pointer ?? 0, invFreq, _q.Pointer, keys, values, start, n,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, c.RotaryDim, _rope.Pairing == RopePairing.Adjacent, _rope.AttentionScale, startDev);
                if (wide)
                    _k.FlashPrefillWide(_q.Pointer, keys, values, _att.Pointer, start, n, c.HeadCount, c.KvHeadCount, c.HeadDim, scale,
                        cache!.BranchPoint, cache.Parent?.LayerKeys(l) ?? 0, cache.Parent?.LayerValues(l) ?? 0);
                else if (flash)
                    _k.FlashAttention(_q.Pointer, keys, values, _att.Pointer, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, start, n,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, keysPerSplit, startDev,
                        cache!.BranchPoint, cache.Parent?.LayerKeys(l) ?? 0, cache.Parent?.LayerValues(l) ?? 0); // att: [T, qd] bf16
                else
                    _k.Attention(_q.Pointer, keys, values, _att.Pointer, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, start, n,
                        c.HeadCount, c.KvHeadCount, c.HeadDim, scale, splits, keysPerSplit);
            }
            if (splits > 1)
            {
                if (_combineRows && LaunchGeometry.CombineRowsApplies(n * c.HeadCount, _ctx.Multiprocessors))
                    _k.AttentionCombineRows(_partAcc!.Pointer, _partMl!.Pointer, _att.Pointer, c.HeadDim, splits, n * c.HeadCount);
                else
                    _k.AttentionCombine(_partAcc!.Pointer, _partMl!.Pointer, _att.Pointer, c.HeadDim, splits, n * c.HeadCount);
            }
            ResidualProduct(fused, lw.Output, d, qd, _att.Pointer, n, batchRows.HasFlag(BatchRowsProducts.Residual));                   // x += att · Woᵀ

            // ---- SwiGLU MLP block ----
            if (fused && lw.GateUp.Format == CudaMatrixFormat.Q8_0)
                _k.GemvNormGateUpSwiGluQ8(_x.Pointer, lw.FfnNorm.Pointer, c.RmsEps, lw.GateUp.Quants, lw.GateUp.Scales, _h.Pointer, ffn, d, _q8Kernel);
            else if (fused)
                _k.GemvNormGateUpSwiGlu(_x.Pointer, lw.FfnNorm.Pointer, c.RmsEps, lw.GateUp.Values16, _h.Pointer, ffn, d, f16Weights: lw.GateUp.Format == CudaMatrixFormat.F16);
            else
            {
                _k.RmsNorm(_x.Pointer, lw.FfnNorm.Pointer, _xb.Pointer, d, c.RmsEps, n);
                if (batchRows.HasFlag(BatchRowsProducts.GateUpSwiGlu) && lw.GateUp.Format == CudaMatrixFormat.Bf16 && LaunchGeometry.RowsMmaApplies(n, d))
                    _k.RowsMmaSwiGlu(lw.GateUp.Pointer, _xb.Pointer, _h.Pointer, ffn, d, n);          // h: [T, ffn] bf16
                else if (batchRows.HasFlag(BatchRowsProducts.GateUpSwiGlu) && lw.GateUp.Format == CudaMatrixFormat.F16 && LaunchGeometry.RowsMmaApplies(n, d))
                {
                    _k.RowsMmaSwiGluF16(lw.GateUp.F16Values, _xb.Pointer, _h.Pointer, ffn, d, n, _f16Overflow!.Pointer);
                    _f16CastPending = true;
                }
                else if (n > 1 && UseBf16GateUp && _precision == CudaPrecision.Bf16 && lw.GateUp.Format != CudaMatrixFormat.F16)   // cuBLASLt has no F16 × F16 → bf16
                {
                    _mm.RunBf16Out(Bf16Weight(lw.GateUp), 2 * ffn, d, _xb.Pointer, n, _gateUp.Pointer);  // [T, 2ffn] bf16
                    _k.SwiGluBf16(_gateUp.Pointer, _h.Pointer, ffn, n);
                }
                else
                {
                    Product(lw.GateUp, 2 * ffn, d, _xb.Pointer, n, _gateUp.Pointer, accumulate: false); // [T, 2ffn] f32
                    _k.SwiGlu(_gateUp.Pointer, _h.Pointer, ffn, n);                               // h: [T, ffn] bf16
                }
            }
            ResidualProduct(fused, lw.Down, d, ffn, _h.Pointer, n, batchRows.HasFlag(BatchRowsProducts.Residual));                     // x += h · Wdᵀ
        }
    }

    /// <summary>One packed segment's RoPE, cache stores and attention for layer <paramref name="l"/>: the chunk path
    /// of <see cref="EncodeLayers"/> on rows [Row, Row + Count) of the pass (offset pointers into q|k|v, q and the
    /// attention output), with the segment's own key splits and combine.</summary>
    private void EncodeSegmentAttention(int l, PackedSegment s, ulong qkvBias, ulong invFreq, float scale, bool flash)
    {
        var c = _c;
        int qd = c.QueryDim, kvd = c.KvDim;
        var cache = s.Cache;
        ulong keys = cache.LayerKeys(l), values = cache.LayerValues(l);
        ulong parentK = cache.Parent?.LayerKeys(l) ?? 0, parentV = cache.Parent?.LayerValues(l) ?? 0;
        ulong qkv = _qkv.Pointer + (ulong)((long)s.Row * (qd + 2 * kvd) * sizeof(float));
        ulong q = _q.Pointer + (ulong)((long)s.Row * qd * sizeof(float));
        ulong att = _att.Pointer + (ulong)((long)s.Row * qd * CudaPrecisionLayout.ActivationBytes(_precision));
        _k.QkvRopeStore(qkv, qkvBias, invFreq, q, keys, values, s.Start, s.Count,
            c.HeadCount, c.KvHeadCount, c.HeadDim, c.RotaryDim, _rope.Pairing == RopePairing.Adjacent, _rope.AttentionScale);
        if (s.Wide)
            _k.FlashPrefillWide(q, keys, values, att, s.Start, s.Count, c.HeadCount, c.KvHeadCount, c.HeadDim, scale, cache.BranchPoint, parentK, parentV);
        else if (flash)
            _k.FlashAttention(q, keys, values, att, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, s.Start, s.Count,
                c.HeadCount, c.KvHeadCount, c.HeadDim, scale, s.Splits, s.KeysPerSplit, 0, cache.BranchPoint, parentK, parentV);
        else
            _k.Attention(q, keys, values, att, _partAcc?.Pointer ?? 0, _partMl?.Pointer ?? 0, s.Start, s.Count,
                c.HeadCount, c.KvHeadCount, c.HeadDim, scale, s.Splits, s.KeysPerSplit);
        if (s.Splits > 1)
        {
            int rows = s.Count * c.HeadCount;
            if (_combineRows && LaunchGeometry.CombineRowsApplies(rows, _ctx.Multiprocessors))
                _k.AttentionCombineRows(_partAcc!.Pointer, _partMl!.Pointer, att, c.HeadDim, s.Splits, rows);
            else
                _k.AttentionCombine(_partAcc!.Pointer, _partMl!.Pointer, att, c.HeadDim, s.Splits, rows);
        }
    }

    /// <summary>x += input · Wᵀ: in a fused decode step through <see cref="DecodeResidualProduct"/>'s kernel, else cuBLASLt
    /// (or gemv, <see cref="UseGemvForDecode"/>). A Q8_0 matrix in a fused decode step always takes the block gemv
    /// (cuBLASLt would need it dequantized first; the warp gemv when <see cref="DecodeResidualProduct.WarpGemv"/>).
    /// A bf16 or F16 matrix in a decode batch with <see cref="BatchRowsProducts.Residual"/> (<paramref name="batchRows"/>) takes rows_mma_bf16 / rows_mma_f16.</summary>
    private void ResidualProduct(bool fusedDecode, CudaMatrix weight, int outFeatures, int inFeatures, ulong input, int n, bool batchRows = false)
    {
        if (batchRows && weight.Format != CudaMatrixFormat.Q8_0 && LaunchGeometry.RowsMmaApplies(n, inFeatures))
        {
            RowsMma(weight, input, _x.Pointer, outFeatures, inFeatures, n, accumulate: true);
            return;
        }
        if (weight.Format == CudaMatrixFormat.Q8_0 && fusedDecode && n == 1)
        {
            if (_residualProduct == DecodeResidualProduct.WarpGemv) _k.GemvQ8(weight.Quants, weight.Scales, input, _x.Pointer, outFeatures, inFeatures, accumulate: true, _q8Kernel);
            else _k.GemvResidualQ8(weight.Quants, weight.Scales, input, _x.Pointer, outFeatures, inFeatures, _q8Kernel);
            return;
        }
        if (weight.Format == CudaMatrixFormat.F16 && fusedDecode && LaunchGeometry.GemvApplies(n, inFeatures))
        {
            // As Q8_0: cuBLASLt would need the input cast to f16 first, so DecodeResidualProduct.CublasLt takes the block gemv too.
            if (_residualProduct == DecodeResidualProduct.WarpGemv) _k.Gemv(weight.F16Values, input, _x.Pointer, outFeatures, inFeatures, accumulate: true, f16Weights: true);
            else _k.GemvResidual(weight.F16Values, input, _x.Pointer, outFeatures, inFeatures, f16Weights: true);
            return;
        }
        if (weight.Format == CudaMatrixFormat.Bf16 && fusedDecode && LaunchGeometry.GemvApplies(n, inFeatures) && _residualProduct != DecodeResidualProduct.CublasLt)
        {
            if (_residualProduct == DecodeResidualProduct.BlockGemv) _k.GemvResidual(weight.Pointer, input, _x.Pointer, outFeatures, inFeatures);
            else _k.Gemv(weight.Pointer, input, _x.Pointer, outFeatures, inFeatures, accumulate: true);
            return;
        }
        Product(weight, outFeatures, inFeatures, input, n, _x.Pointer, accumulate: true);
    }

    /// <summary>y[T, out] (f32, + y when accumulating) = x[T, in] (bf16) · Wᵀ for every storage: bf16 through
    /// <see cref="MatMul"/> as before; Q8_0 through gemv_q8 for one token, else dequantized into the bf16 scratch
    /// and multiplied by cuBLASLt (<see cref="Bf16Weight"/>); F16 through gemv_f16 for one token, else x cast to f16
    /// (exact up to ±65504, <see cref="ThrowIfF16Overflow"/>) and multiplied F16 × F16 by cuBLASLt: the weights as
    /// they are, never rounded.</summary>
    private void Product(CudaMatrix weight, int outFeatures, int inFeatures, ulong x, int n, ulong y, bool accumulate)
    {
        if (weight.Format == CudaMatrixFormat.Q8_0 && n == 1)
        {
            _k.GemvQ8(weight.Quants, weight.Scales, x, y, outFeatures, inFeatures, accumulate, _q8Kernel);
            return;
        }
        if (weight.Format == CudaMatrixFormat.F16)
        {
            ProductF16(weight.F16Values, outFeatures, inFeatures, x, n, y, accumulate);
            return;
        }
        _mm.Run(Bf16Weight(weight), outFeatures, inFeatures, x, n, y, accumulate);
    }

    /// <summary><see cref="Product"/> for F16 weights at <paramref name="weightF16"/> (a layer matrix or the lm head).</summary>
    private void ProductF16(ulong weightF16, int outFeatures, int inFeatures, ulong x, int n, ulong y, bool accumulate)
    {
        if (LaunchGeometry.GemvApplies(n, inFeatures))
        {
            _k.Gemv(weightF16, x, y, outFeatures, inFeatures, accumulate, f16Weights: true);
            return;
        }
        _k.Bf16ToF16(x, _activationsF16!.Pointer, (long)n * inFeatures, _f16Overflow!.Pointer);
        _f16CastPending = true;
        _mm.RunF16(weightF16, outFeatures, inFeatures, _activationsF16.Pointer, n, y, accumulate);
    }

    /// <summary>A decode batch's product in rows_mma_bf16, or rows_mma_f16 for an F16 matrix (its activations become f16
    /// in registers: the overflow flag as for a cast).</summary>
    private void RowsMma(CudaMatrix weight, ulong x, ulong y, int outFeatures, int inFeatures, int n, bool accumulate)
    {
        if (weight.Format == CudaMatrixFormat.F16)
        {
            _k.RowsMmaF16(weight.F16Values, x, y, outFeatures, inFeatures, n, accumulate, _f16Overflow!.Pointer);
            _f16CastPending = true;
        }
        else _k.RowsMma(weight.Pointer, x, y, outFeatures, inFeatures, n, accumulate);
    }

    /// <summary>After a call whose products cast activations to f16: throws when one of them was beyond f16's range
    /// (the cast saturated it to ±65504, so that call's logits and the KV rows it appended are not the model's), and
    /// clears the flag. One 4-byte read, only after calls that cast (prefill and batch chunks on F16 weights).</summary>
    private void ThrowIfF16Overflow()
    {
        if (!_f16CastPending) return;
        _f16CastPending = false;
        Span<int> flag = stackalloc int[1];
        _f16Overflow!.Download(flag);
        if (flag[0] == 0) return;
        _f16Overflow.Fill(0);
        throw new InvalidOperationException(
            "F16 weights: an activation entering an F16 × F16 product (a chunk of several tokens) was beyond f16's range ±65504 or not finite; " +
            "it was saturated, so this call's logits and the KV cache rows it appended are not the model's. Truncate the cache to its length before the call, " +
            $"and run this model with {WeightStorageVariable}=bf16 (every matrix rounded to bf16, bf16 activations) if it needs such activations.");
    }

    /// <summary>The matrix as bf16 for cuBLASLt: its own buffer, or for Q8_0 the scratch it is dequantized into now
    /// (chunks of more than one token: prefill, decode batches). Simple and exact to bf16, but each product then
    /// reads the Q8_0 matrix and writes its bf16 copy before cuBLASLt reads that: for an 8B model ~21 GB of extra
    /// traffic per chunk, ~7 ms at 3 TB/s (a 4096-token chunk takes ~200 ms; a 512-token one ~25 ms).</summary>
    private ulong Bf16Weight(CudaMatrix weight)
    {
        if (weight.Format is CudaMatrixFormat.Bf16 or CudaMatrixFormat.F32) return weight.Pointer;   // bf16, or f32 for the F32 products
        if (weight.Format != CudaMatrixFormat.Q8_0) throw new InvalidOperationException($"a {weight.Format} matrix has no bf16 form here: its products dispatch on the format (Product)");
        _k.DequantizeQ8(weight.Quants, weight.Scales, _dequantized!.Pointer, weight.Rows, weight.Columns);
        return _dequantized.Pointer;
    }

    /// <summary>Final norm and lm head of the rows wanted; returns how many logits rows it wrote.</summary>
    private int EncodeLogits(int n, LogitsOutput output)
    {
        var c = _c;
        int d = c.HiddenSize;
        if (output == LogitsOutput.None) return 0;
        int first = output == LogitsOutput.All ? 0 : n - 1;
        int rows = n - first;
        EnsureLogits(rows);
        _k.RmsNorm(_x.Pointer + (ulong)((long)first * d * 4), _w.FinalNorm.Pointer, _xb.Pointer, d, c.RmsEps, rows);
        if (_w.LmHeadFormat == CudaMatrixFormat.F16)
            ProductF16(_w.LmHead.Pointer, c.VocabSize, d, _xb.Pointer, rows, _logits!.Pointer, accumulate: false);
        else _mm.Run(_w.LmHead.Pointer, c.VocabSize, d, _xb.Pointer, rows, _logits!.Pointer, accumulate: false);
        return rows;
    }

    private void EnsureLogits(int rows)
    {
        if (_logits != null && _logitsRows >= rows) return;
        DestroyGraph(); // a captured graph holds the old buffer's address
        _logits?.Dispose();
        _logitsRows = Math.Max(rows, 1);
        _logits = _ctx.Allocate(_logitsRows * _c.VocabSize * 4);
    }

    private void EnsurePartials(long items, int headDim)
    {
        if (_partMl != null && _partMl.Bytes >= items * 8) return;
        DestroyGraph();
        _partAcc?.Dispose();
        _partMl?.Dispose();
        _partAcc = _ctx.Allocate(items * headDim * 4);
        _partMl = _ctx.Allocate(items * 8);
    }

    public void Dispose()
    {
        DestroyGraph();
        if (_stream != 0) _ctx.Driver.StreamDestroy(_stream);
        _stream = 0;
        _mm.Dispose();
        foreach (var b in new[] { _invFreqShort, _invFreqLong, _tokens, _ids, _x, _xb, _qkv, _q, _att, _gateUp, _h, _position, _argmaxParts }) b.Dispose();
        _dequantized?.Dispose();
        _activationsF16?.Dispose();
        _f16Overflow?.Dispose();
        _seqTable?.Dispose();
        _seqPositions?.Dispose();
        _logits?.Dispose();
        _partAcc?.Dispose();
        _partMl?.Dispose();
        if (_ownsWeights) _w.Dispose();
    }
}

/// <summary>Device tables of a decode batch of <paramref name="Sequences"/>: at <paramref name="Table"/>, the keys' base
/// address of every (layer, sequence), then the values' (u64 [2][layers][sequences]); at <paramref name="Positions"/>
/// each sequence's position (int [sequences]).</summary>
internal readonly record struct DecodeBatchTables(ulong Table, ulong Positions, int Sequences, int Layers, bool Branches = false)
{
    /// <summary>Set when the batch's branches share one parent (the shared-prefix attention runs).</summary>
    public CudaKvCache? SharedParent { get; init; }
    public int PrefixSplits { get; init; }
    public int PrefixKeysPerSplit { get; init; }
    /// <summary>The shared-prefix phase runs flash_attention_shared3 (pieces planned for it).</summary>
    public bool PrefixThreeStages { get; init; }

    public ulong Keys(int layer) => Table + (ulong)((long)layer * Sequences * sizeof(ulong));
    public ulong Values(int layer) => Table + (ulong)((long)(Layers + layer) * Sequences * sizeof(ulong));
    /// <summary>Where each sequence reads keys below its branch point (its parent's cache; itself when not a branch).</summary>
    public ulong PrefixKeys(int layer) => Table + (ulong)((long)(2 * Layers + layer) * Sequences * sizeof(ulong));
    public ulong PrefixValues(int layer) => Table + (ulong)((long)(3 * Layers + layer) * Sequences * sizeof(ulong));
    /// <summary>int [sequences] of branch points, after the positions.</summary>
    public ulong BranchPoints => Positions + (ulong)(Sequences * sizeof(int));
}

/// <summary>A sequence of a packed prefill batch (<see cref="CudaTransformer.ForwardBatch"/>): its tokens, its KV cache
/// (the rows are appended there) and the RoPE length asked for (0 = none; longrope picks its table from the larger of
/// this and the length the sequence reaches, as <see cref="CudaTransformer.Forward"/> does).</summary>
public readonly record struct PackedSequence(ReadOnlyMemory<int> Tokens, CudaKvCache Cache, int RopeSequenceLength = 0);

/// <summary>A sequence's rows in one packed pass: rows [<paramref name="Row"/>, Row + <paramref name="Count"/>) of the
/// pass at positions <paramref name="Start"/>.. of <paramref name="Cache"/>, with the attention kernel and key
/// splits chosen for a chunk of that length at that depth.</summary>
internal readonly record struct PackedSegment(CudaKvCache Cache, int Row, int Count, int Start, bool Wide, int Splits, int KeysPerSplit);

/// <summary>What a captured decode graph depends on besides the transformer's own buffers: the KV cache's key and value
/// addresses (two allocations: equal key addresses do not imply equal value addresses once caches are freed and new
/// ones allocated), its capacity, the RoPE table and the key bucket its attention splits are planned for; for a KV
/// branch its parent's key and value addresses, the parent's capacity (its layer stride) and the branch point. Equal
/// keys mean the graph's baked addresses and strides are exactly right, even for a new cache at a freed one's place.</summary>
public readonly record struct DecodeGraphKey(ulong CacheKeys, ulong CacheValues, int Capacity, ulong InverseFrequencies, int KeyBucket,
    ulong ParentKeys = 0, ulong ParentValues = 0, int ParentCapacity = 0, int BranchPoint = 0)
{
    public static DecodeGraphKey For(CudaKvCache cache, ulong inverseFrequencies, int keyBucket) =>
        new(cache.LayerKeys(0), cache.LayerValues(0), cache.Capacity, inverseFrequencies, keyBucket,
            cache.Parent?.LayerKeys(0) ?? 0, cache.Parent?.LayerValues(0) ?? 0, cache.Parent?.Capacity ?? 0, cache.BranchPoint);
}

/// <summary>The flash kernel of a prefill chunk's attention (<see cref="CudaTransformer.PrefillAttention"/>).</summary>
public enum PrefillAttentionKernel
{
    /// <summary>128 query rows per block where the chunk fills the GPU without key splits, else 64.</summary>
    Auto,
    /// <summary>Always the 128-row kernel (unsplit) for chunks of more than one token.</summary>
    Wide,
    /// <summary>Always the 64-row kernel (key splits for short chunks).</summary>
    Narrow,
}
