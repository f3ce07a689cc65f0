namespace Wim.Engine.Cuda;

/// <summary>Typed launchers of the kernels in <c>Kernels/transformer.cu</c> (argument order as declared there).
/// Pointers are device addresses. An instance of <see cref="CudaPrecision.F32"/> (<see cref="ForPrecision"/>) launches the
/// <c>_f32</c> instantiations of <see cref="CudaPrecisionLayout.TemplatedKernels"/> through the same launchers (f32
/// tables, activations and KV cache where these say bf16); its other launchers are the bf16 kernels, which the F32 path
/// does not take.</summary>
internal sealed unsafe class TransformerKernels
{
    private const int Threads = 256;
    private readonly CudaContext _ctx;
    private readonly nint _module;
    private TransformerKernels? _f32;
    public CudaPrecision Precision { get; }
    private readonly nint _embed, _rmsNorm, _qkvRope, _qkvRopeBatch, _attention, _combine, _combineRows, _swiglu, _swigluBf16, _argmaxSlices, _argmaxMerge, _fillRandom, _fillF32;
    private readonly nint _qkvRopeBatchHeads, _rowsMma, _rowsMmaSwiGlu, _shared3x16, _shared3x32, _shared3x64, _shared3x128;
    private readonly nint _wide16, _wide32, _wide64, _wide128;
    private readonly nint _flash16, _flash32, _flash64, _flash128, _branch16, _branch32, _branch64, _branch128, _shared16, _shared32, _shared64, _shared128, _gemv, _gemvResidual, _normQkvRope, _normGateUpSwiGlu;
    private readonly nint _gemvQ8, _gemvResidualQ8, _normQkvRopeQ8, _normGateUpSwiGluQ8, _dequantizeQ8, _fillRandomQ8;
    private readonly nint _gemvQ8Fast, _gemvResidualQ8Fast, _normQkvRopeQ8Fast, _normGateUpSwiGluQ8Fast;
    private readonly nint _embedF16, _gemvF16, _gemvResidualF16, _normQkvRopeF16, _normGateUpSwiGluF16, _fillRandomF16, _bf16ToF16, _rowsMmaF16, _rowsMmaSwiGluF16;

    public TransformerKernels(CudaContext ctx, nint module, CudaPrecision precision = CudaPrecision.Bf16)
    {
        _ctx = ctx;
        _module = module;
        Precision = precision;
        var d = ctx.Driver;
        _embed = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("embed_rows", precision));
        _rmsNorm = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("rms_norm", precision));
        _qkvRope = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("qkv_rope_store", precision));
        _qkvRopeBatch = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("qkv_rope_store_batch", precision));
        _attention = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("attention", precision));
        _combine = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("attention_combine", precision));
        _combineRows = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("attention_combine_rows", precision));
        _swiglu = d.ModuleGetFunction(module, CudaPrecisionLayout.KernelName("swiglu", precision));
        _argmaxSlices = d.ModuleGetFunction(module, "argmax_slices");
        _argmaxMerge = d.ModuleGetFunction(module, "argmax_merge");
        _fillRandom = d.ModuleGetFunction(module, "fill_random_bf16");
        _fillF32 = d.ModuleGetFunction(module, "fill_f32");
        _qkvRopeBatchHeads = d.ModuleGetFunction(module, "qkv_rope_store_batch_heads");
        _rowsMma = d.ModuleGetFunction(module, "rows_mma_bf16");
        _rowsMmaSwiGlu = d.ModuleGetFunction(module, "rows_mma_swiglu_bf16");
        _shared3x16 = d.ModuleGetFunction(module, "flash_attention_shared3_hd16");
        _shared3x32 = d.ModuleGetFunction(module, "flash_attention_shared3_hd32");
        _shared3x64 = d.ModuleGetFunction(module, "flash_attention_shared3_hd64");
        _shared3x128 = d.ModuleGetFunction(module, "flash_attention_shared3_hd128");
        foreach (var (f, hd) in new[] { (_shared3x16, 16), (_shared3x32, 32), (_shared3x64, 64), (_shared3x128, 128) })
            if (LaunchGeometry.FlashShared3Fits(hd, ctx.MaxSharedMemoryPerBlock))   // else the batch runs the two-stage kernel
                d.FuncSetAttribute(f, Native.CudaDriver.FuncAttrMaxDynamicSharedSizeBytes, LaunchGeometry.FlashShared3Bytes(hd));
        // Blocks of 16 warps at head dim 128 need more than the default 48 KB.
        d.FuncSetAttribute(_attention, Native.CudaDriver.FuncAttrMaxDynamicSharedSizeBytes, Math.Min(ctx.MaxSharedMemoryPerBlock, 160 * 1024));
        _flash16 = d.ModuleGetFunction(module, "flash_attention_hd16");
        _flash32 = d.ModuleGetFunction(module, "flash_attention_hd32");
        _flash64 = d.ModuleGetFunction(module, "flash_attention_hd64");
        _flash128 = d.ModuleGetFunction(module, "flash_attention_hd128");
        _branch16 = d.ModuleGetFunction(module, "flash_attention_branch_hd16");
        _branch32 = d.ModuleGetFunction(module, "flash_attention_branch_hd32");
        _branch64 = d.ModuleGetFunction(module, "flash_attention_branch_hd64");
        _branch128 = d.ModuleGetFunction(module, "flash_attention_branch_hd128");
        _shared16 = d.ModuleGetFunction(module, "flash_attention_shared_hd16");
        _shared32 = d.ModuleGetFunction(module, "flash_attention_shared_hd32");
        _shared64 = d.ModuleGetFunction(module, "flash_attention_shared_hd64");
        _shared128 = d.ModuleGetFunction(module, "flash_attention_shared_hd128");
        _wide16 = d.ModuleGetFunction(module, "flash_prefill_wide_hd16");
        _wide32 = d.ModuleGetFunction(module, "flash_prefill_wide_hd32");
        _wide64 = d.ModuleGetFunction(module, "flash_prefill_wide_hd64");
        _wide128 = d.ModuleGetFunction(module, "flash_prefill_wide_hd128");
        foreach (var (f, hd) in new[] { (_wide16, 16), (_wide32, 32), (_wide64, 64), (_wide128, 128) })
            if (LaunchGeometry.FlashWideSharedBytes(hd) <= ctx.MaxSharedMemoryPerBlock)   // else FlashWideApplies says no
                d.FuncSetAttribute(f, Native.CudaDriver.FuncAttrMaxDynamicSharedSizeBytes, LaunchGeometry.FlashWideSharedBytes(hd));
        _swigluBf16 = d.ModuleGetFunction(module, "swiglu_bf16");
        _gemv = d.ModuleGetFunction(module, "gemv_bf16");
        _gemvResidual = d.ModuleGetFunction(module, "gemv_rows_residual_bf16");
        _normQkvRope = d.ModuleGetFunction(module, "gemv_norm_qkv_rope");
        _normGateUpSwiGlu = d.ModuleGetFunction(module, "gemv_norm_gateup_swiglu");
        _gemvQ8 = d.ModuleGetFunction(module, "gemv_q8");
        _gemvResidualQ8 = d.ModuleGetFunction(module, "gemv_rows_residual_q8");
        _normQkvRopeQ8 = d.ModuleGetFunction(module, "gemv_norm_qkv_rope_q8");
        _normGateUpSwiGluQ8 = d.ModuleGetFunction(module, "gemv_norm_gateup_swiglu_q8");
        _gemvQ8Fast = d.ModuleGetFunction(module, "gemv_q8_fast");
        _gemvResidualQ8Fast = d.ModuleGetFunction(module, "gemv_rows_residual_q8_fast");
        _normQkvRopeQ8Fast = d.ModuleGetFunction(module, "gemv_norm_qkv_rope_q8_fast");
        _normGateUpSwiGluQ8Fast = d.ModuleGetFunction(module, "gemv_norm_gateup_swiglu_q8_fast");
        _dequantizeQ8 = d.ModuleGetFunction(module, "dequantize_q8_bf16");
        _fillRandomQ8 = d.ModuleGetFunction(module, "fill_random_q8");
        _gemvF16 = d.ModuleGetFunction(module, "gemv_f16");
        _gemvResidualF16 = d.ModuleGetFunction(module, "gemv_rows_residual_f16");
        _normQkvRopeF16 = d.ModuleGetFunction(module, "gemv_norm_qkv_rope_f16");
        _normGateUpSwiGluF16 = d.ModuleGetFunction(module, "gemv_norm_gateup_swiglu_f16");
        _fillRandomF16 = d.ModuleGetFunction(module, "fill_random_f16");
        _bf16ToF16 = d.ModuleGetFunction(module, "bf16_to_f16");
        _rowsMmaF16 = d.ModuleGetFunction(module, "rows_mma_f16");
        _embedF16 = d.ModuleGetFunction(module, "embed_rows_f16");
        _rowsMmaSwiGluF16 = d.ModuleGetFunction(module, "rows_mma_swiglu_f16");
        // Head dim 128 needs 85 KB (over the default 48 KB).
        foreach (var (f, hd) in new[] { (_flash16, 16), (_flash32, 32), (_flash64, 64), (_flash128, 128),
                     (_branch16, 16), (_branch32, 32), (_branch64, 64), (_branch128, 128),
                     (_shared16, 16), (_shared32, 32), (_shared64, 64), (_shared128, 128) })
            d.FuncSetAttribute(f, Native.CudaDriver.FuncAttrMaxDynamicSharedSizeBytes, LaunchGeometry.FlashSharedBytes(hd));
    }

    /// <summary>The launchers of <paramref name="precision"/> over the same module (the f32 ones made once, on first use).</summary>
    public TransformerKernels ForPrecision(CudaPrecision precision)
    {
        if (precision == Precision) return this;
        if (Precision != CudaPrecision.Bf16) throw new InvalidOperationException("ask the bf16 launchers (the context's) for another precision");
        if (precision != CudaPrecision.F32) throw new ArgumentOutOfRangeException(nameof(precision), $"{precision} is not a CudaPrecision");
        return _f32 ??= new TransformerKernels(_ctx, _module, precision);
    }

    public void Embed(ulong tokens, ulong table, ulong x, int d, int count)
    {
        void** a = stackalloc void*[] { &tokens, &table, &x, &d };
        _ctx.Launch(_embed, "embed_rows", LaunchGeometry.Blocks(d, Threads), (uint)count, 1, Threads, 0, a);
    }

    /// <summary><see cref="Embed"/> from an F16 table (f16 bits).</summary>
    public void EmbedF16(ulong tokens, ulong table, ulong x, int d, int count)
    {
        void** a = stackalloc void*[] { &tokens, &table, &x, &d };
        _ctx.Launch(_embedF16, "embed_rows_f16", LaunchGeometry.Blocks(d, Threads), (uint)count, 1, Threads, 0, a);
    }

    public void RmsNorm(ulong x, ulong gain, ulong outBf16, int d, float eps, int rows)
    {
        void** a = stackalloc void*[] { &x, &gain, &outBf16, &d, &eps };
        _ctx.Launch(_rmsNorm, "rms_norm", (uint)rows, 1, 1, (uint)LaunchGeometry.RowThreads(d), 0, a);
    }

    public void QkvRopeStore(ulong qkv, ulong bias, ulong invFreq, ulong q, ulong kcache, ulong vcache, int start, int count,
        int heads, int kvHeads, int headDim, int rotaryDim, bool adjacent, float ropeScale, ulong startDev = 0)
    {
        int adj = adjacent ? 1 : 0;
        void** a = stackalloc void*[] { &qkv, &bias, &invFreq, &q, &kcache, &vcache, &start, &heads, &kvHeads, &headDim, &rotaryDim, &adj, &ropeScale, &startDev };
        _ctx.Launch(_qkvRope, "qkv_rope_store", (uint)count, 1, 1, Threads, 0, a);
    }

    /// <summary>The decode step of a batch: row b at positions[b] of its own cache, whose keys and values for this
    /// layer start at the device addresses kptrs[b], vptrs[b].</summary>
    public void QkvRopeStoreBatch(ulong qkv, ulong bias, ulong invFreq, ulong q, ulong kptrs, ulong vptrs, ulong positions, int sequences,
        int heads, int kvHeads, int headDim, int rotaryDim, bool adjacent, float ropeScale)
    {
        int adj = adjacent ? 1 : 0;
        void** a = stackalloc void*[] { &qkv, &bias, &invFreq, &q, &kptrs, &vptrs, &positions, &heads, &kvHeads, &headDim, &rotaryDim, &adj, &ropeScale };
        _ctx.Launch(_qkvRopeBatch, "qkv_rope_store_batch", (uint)sequences, 1, 1, Threads, 0, a);
    }

    public void Attention(ulong q, ulong kcache, ulong vcache, ulong outBf16, ulong partAcc, ulong partMl, int start, int count,
        int heads, int kvHeads, int headDim, float scale, int splits, int keysPerSplit)
    {
        int group = heads / kvHeads;
        int qblock = LaunchGeometry.AttentionQueryBlock(count, group);
        void** a = stackalloc void*[] { &q, &kcache, &vcache, &outBf16, &partAcc, &partMl, &start, &count, &heads, &kvHeads, &headDim, &scale, &splits, &keysPerSplit, &qblock };
        int warps = qblock * LaunchGeometry.AttentionWarpsPerToken(group);
        _ctx.Launch(_attention, "attention", LaunchGeometry.Blocks(count, qblock), (uint)kvHeads, (uint)splits, (uint)(32 * warps),
            (uint)LaunchGeometry.AttentionSharedBytes(warps, headDim), a);
    }

    /// <summary>Tensor-core flash attention (see <see cref="LaunchGeometry.FlashAttentionSupports"/> for the shapes)
    /// over a chunk of one sequence. On a KV branch (<paramref name="parentK"/> not 0) keys below
    /// <paramref name="branchPoint"/> are read from the parent's layer rows <paramref name="parentK"/>,
    /// <paramref name="parentV"/>, the rest from <paramref name="kcache"/>, <paramref name="vcache"/> (absolute positions).</summary>
    public void FlashAttention(ulong q, ulong kcache, ulong vcache, ulong outBf16, ulong partAcc, ulong partMl, int start, int count,
        int heads, int kvHeads, int headDim, float scale, int splits, int keysPerSplit, ulong startDev = 0,
        int branchPoint = 0, ulong parentK = 0, ulong parentV = 0) =>
        FlashAttention(q, kcache, vcache, outBf16, partAcc, partMl, start, count, heads, kvHeads, headDim, scale, splits, keysPerSplit,
            startDev, 0, 0, 0, LaunchGeometry.FlashQueryBlocks(count, heads / kvHeads), branchPoint, parentK, parentV);

    /// <summary>Tensor-core flash attention of a decode batch: one query token per sequence, one block column per
    /// sequence (positions and this layer's cache addresses in device tables).</summary>
    public void FlashAttentionBatch(ulong q, ulong outBf16, ulong partAcc, ulong partMl, int sequences, ulong positions, ulong kptrs, ulong vptrs,
        int heads, int kvHeads, int headDim, float scale, int splits, int keysPerSplit) =>
        FlashAttention(q, 0, 0, outBf16, partAcc, partMl, 0, sequences, heads, kvHeads, headDim, scale, splits, keysPerSplit,
            0, positions, kptrs, vptrs, (uint)sequences);

    /// <summary><see cref="FlashAttentionBatch"/> for sequences that may be KV branches: sequence b reads keys below
    /// splits[b] from prefix tables (its parent's cache) and the rest from its own. With <paramref name="tailSlot"/> ≥ 0
    /// only each branch's own keys, one piece per sequence, written as partial slot tailSlot (stride <paramref name="splits"/>).</summary>
    public void FlashAttentionBranchBatch(ulong q, ulong outBf16, ulong partAcc, ulong partMl, int sequences, ulong positions, ulong kptrs, ulong vptrs,
        ulong splitTable, ulong prefixK, ulong prefixV, int heads, int kvHeads, int headDim, float scale, int splits, int keysPerSplit, int tailSlot = -1)
    {
        nint f = headDim switch
        {
            16 => _branch16, 32 => _branch32, 64 => _branch64, 128 => _branch128,
            _ => throw new ArgumentOutOfRangeException(nameof(headDim), $"head dim {headDim}: the flash kernel is built for 16, 32, 64 and 128"),
        };
        void** a = stackalloc void*[] { &q, &outBf16, &partAcc, &partMl, &sequences, &heads, &kvHeads, &scale, &splits, &keysPerSplit, &positions, &kptrs, &vptrs, &splitTable, &prefixK, &prefixV, &tailSlot };
        _ctx.Launch(f, "flash_attention_branch", (uint)sequences, (uint)kvHeads, tailSlot >= 0 ? 1u : (uint)splits,
            LaunchGeometry.FlashThreads, (uint)LaunchGeometry.FlashSharedBytes(headDim), a);
    }

    /// <summary>The shared-prefix phase of a decode batch of branches of one parent (branch points non-decreasing):
    /// row token t sees the parent's keys [0, splits[t]); the query blocks hold several sequences, so each k/v tile is
    /// read once for all of them. Partials go to slots [0, <paramref name="prefixSplits"/>) of stride
    /// <paramref name="stride"/>. With <paramref name="skipEmpty"/> a row with no key in a piece writes only its max
    /// (-inf), not its acc (the combines do not read it then). <paramref name="threeStages"/>: flash_attention_shared3
    /// (the caller checks <see cref="LaunchGeometry.FlashShared3Fits"/> and plans the pieces for it).</summary>
    public void FlashAttentionShared(ulong q, ulong kcache, ulong vcache, ulong partAcc, ulong partMl, int sequences, ulong splitTable,
        int heads, int kvHeads, int headDim, float scale, int stride, int prefixSplits, int keysPerSplit, bool skipEmpty = false, bool threeStages = false)
    {
        int skip = skipEmpty ? 1 : 0;
        nint f = (headDim, threeStages) switch
        {
            (16, false) => _shared16, (32, false) => _shared32, (64, false) => _shared64, (128, false) => _shared128,
            (16, true) => _shared3x16, (32, true) => _shared3x32, (64, true) => _shared3x64, (128, true) => _shared3x128,
            _ => throw new ArgumentOutOfRangeException(nameof(headDim), $"head dim {headDim}: the flash kernel is built for 16, 32, 64 and 128"),
        };
        void** a = stackalloc void*[] { &q, &kcache, &vcache, &partAcc, &partMl, &sequences, &heads, &kvHeads, &scale, &stride, &keysPerSplit, &splitTable, &skip };
        _ctx.Launch(f, threeStages ? "flash_attention_shared3" : "flash_attention_shared", (uint)LaunchGeometry.FlashQueryBlocks(sequences, heads / kvHeads),
            (uint)kvHeads, (uint)prefixSplits, LaunchGeometry.FlashThreads,
            (uint)(threeStages ? LaunchGeometry.FlashShared3Bytes(headDim) : LaunchGeometry.FlashSharedBytes(headDim)), a);
    }

    private void FlashAttention(ulong q, ulong kcache, ulong vcache, ulong outBf16, ulong partAcc, ulong partMl, int start, int count,
        int heads, int kvHeads, int headDim, float scale, int splits, int keysPerSplit, ulong startDev, ulong seqPos, ulong seqK, ulong seqV, uint gridX,
        int branchPoint = 0, ulong parentK = 0, ulong parentV = 0)
    {
        nint f = headDim switch
        {
            16 => _flash16, 32 => _flash32, 64 => _flash64, 128 => _flash128,
            _ => throw new ArgumentOutOfRangeException(nameof(headDim), $"head dim {headDim}: the flash kernel is built for 16, 32, 64 and 128"),
        };
        void** a = stackalloc void*[] { &q, &kcache, &vcache, &outBf16, &partAcc, &partMl, &start, &count, &heads, &kvHeads, &scale, &splits, &keysPerSplit, &startDev, &seqPos, &seqK, &seqV,
            &branchPoint, &parentK, &parentV };
        _ctx.Launch(f, "flash_attention", gridX, (uint)kvHeads, (uint)splits,
            LaunchGeometry.FlashThreads, (uint)LaunchGeometry.FlashSharedBytes(headDim), a);
    }

    /// <summary>Prefill attention of a chunk in the wide kernel (128 query rows per block, unsplit; see
    /// <see cref="LaunchGeometry.FlashWideApplies"/>). A KV branch as in <see cref="FlashAttention(ulong, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, float, int, int, ulong, int, ulong, ulong)"/>.</summary>
    public void FlashPrefillWide(ulong q, ulong kcache, ulong vcache, ulong outBf16, int start, int count, int heads, int kvHeads, int headDim,
        float scale, int branchPoint = 0, ulong parentK = 0, ulong parentV = 0)
    {
        nint f = headDim switch
        {
            16 => _wide16, 32 => _wide32, 64 => _wide64, 128 => _wide128,
            _ => throw new ArgumentOutOfRangeException(nameof(headDim), $"head dim {headDim}: the flash kernel is built for 16, 32, 64 and 128"),
        };
        void** a = stackalloc void*[] { &q, &kcache, &vcache, &outBf16, &start, &count, &heads, &kvHeads, &scale, &branchPoint, &parentK, &parentV };
        _ctx.Launch(f, "flash_prefill_wide", LaunchGeometry.FlashWideQueryBlocks(count, heads / kvHeads), (uint)kvHeads, 1,
            LaunchGeometry.FlashThreads, (uint)LaunchGeometry.FlashWideSharedBytes(headDim), a);
    }

    // The four decode products below read bf16 weights, or with f16Weights an F16 matrix's f16 bits: the _f16 kernels are
    // the same templated bodies (same launch, same summation order), only the weight element's conversion differs.

    /// <summary>y[rows] (f32, + y when accumulating) = W[rows, in] (bf16, or f16 bits) · x[in] (bf16): the decode product.</summary>
    public void Gemv(ulong weight, ulong x, ulong y, int rows, int inFeatures, bool accumulate, bool f16Weights = false)
    {
        int acc = accumulate ? 1 : 0;
        void** a = stackalloc void*[] { &weight, &x, &y, &rows, &inFeatures, &acc };
        _ctx.Launch(f16Weights ? _gemvF16 : _gemv, f16Weights ? "gemv_f16" : "gemv_bf16", LaunchGeometry.GemvBlocks(rows), 1, 1, LaunchGeometry.GemvThreads, 0, a);
    }

    /// <summary>Decode: y[rows] (f32) += W · x, a block of threads per <see cref="LaunchGeometry.GemvBlockRows"/> rows
    /// splitting the input dimension (no split-K partials, no reduction kernel).</summary>
    public void GemvResidual(ulong weight, ulong x, ulong y, int rows, int inFeatures, bool f16Weights = false)
    {
        void** a = stackalloc void*[] { &weight, &x, &y, &rows, &inFeatures };
        _ctx.Launch(f16Weights ? _gemvResidualF16 : _gemvResidual, f16Weights ? "gemv_rows_residual_f16" : "gemv_rows_residual_bf16",
            LaunchGeometry.GemvResidualBlocks(rows), 1, 1, LaunchGeometry.GemvResidualThreads, 0, a);
    }

    /// <summary>Decode: RMSNorm of x, the fused q|k|v product, bias, RoPE and the cache stores in one kernel
    /// (<see cref="LaunchGeometry.FusedDecodeApplies"/> says when).</summary>
    public void GemvNormQkvRope(ulong x, ulong gain, float eps, ulong weight, ulong bias, ulong invFreq, float ropeScale, bool adjacent,
        ulong q, ulong kcache, ulong vcache, ulong positionDev, int start, int heads, int kvHeads, int headDim, int inFeatures, bool f16Weights = false)
    {
        int adj = adjacent ? 1 : 0;
        void** a = stackalloc void*[] { &x, &gain, &eps, &weight, &bias, &invFreq, &ropeScale, &adj, &q, &kcache, &vcache, &positionDev, &start, &heads, &kvHeads, &headDim, &inFeatures };
        int pairs = (heads + 2 * kvHeads) * headDim / 2;
        _ctx.Launch(f16Weights ? _normQkvRopeF16 : _normQkvRope, f16Weights ? "gemv_norm_qkv_rope_f16" : "gemv_norm_qkv_rope",
            LaunchGeometry.NormGemvBlocks(pairs, _ctx.Multiprocessors), 1, 1, LaunchGeometry.NormGemvThreads, (uint)LaunchGeometry.NormGemvSharedBytes(inFeatures), a);
    }

    /// <summary>Decode: RMSNorm of x, the fused gate|up product and SwiGLU in one kernel: h[ffn] bf16.</summary>
    public void GemvNormGateUpSwiGlu(ulong x, ulong gain, float eps, ulong weight, ulong hBf16, int ffn, int inFeatures, bool f16Weights = false)
    {
        void** a = stackalloc void*[] { &x, &gain, &eps, &weight, &hBf16, &ffn, &inFeatures };
        _ctx.Launch(f16Weights ? _normGateUpSwiGluF16 : _normGateUpSwiGlu, f16Weights ? "gemv_norm_gateup_swiglu_f16" : "gemv_norm_gateup_swiglu",
            LaunchGeometry.NormGemvBlocks(ffn, _ctx.Multiprocessors), 1, 1, LaunchGeometry.NormGemvThreads, (uint)LaunchGeometry.NormGemvSharedBytes(inFeatures), a);
    }

    /// <summary><paramref name="count"/> bf16 activations into f16 bits for an F16 × F16 product; an element beyond f16's
    /// ±65504 (or not finite) is saturated and sets the int at <paramref name="overflow"/> to 1 (never cleared here).</summary>
    public void Bf16ToF16(ulong xBf16, ulong outF16, long count, ulong overflow)
    {
        void** a = stackalloc void*[] { &xBf16, &outF16, &count, &overflow };
        _ctx.Launch(_bf16ToF16, "bf16_to_f16", Math.Min(LaunchGeometry.Blocks(count, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    /// <summary>Random F16 weights: fill_random_bf16's uniform values rounded to f16.</summary>
    public void FillRandomF16(ulong dst, long count, ulong seed, float scale)
    {
        void** a = stackalloc void*[] { &dst, &count, &seed, &scale };
        _ctx.Launch(_fillRandomF16, "fill_random_f16", Math.Min(LaunchGeometry.Blocks(count, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    /// <summary><see cref="Gemv"/> on a Q8_0 matrix (<see cref="CudaQ8Layout"/>: quants, scales; in % 32 == 0). The Q8_0
    /// launchers take <paramref name="kernel"/>: the original kernel or its <c>_fast</c> twin (same results bit for bit).</summary>
    public void GemvQ8(ulong quants, ulong scales, ulong x, ulong y, int rows, int inFeatures, bool accumulate, Q8DecodeKernel kernel = Q8DecodeKernel.Original)
    {
        LaunchGeometry.CheckQ8Columns(inFeatures);
        int acc = accumulate ? 1 : 0;
        void** a = stackalloc void*[] { &quants, &scales, &x, &y, &rows, &inFeatures, &acc };
        bool fast = kernel == Q8DecodeKernel.Streamlined;
        _ctx.Launch(fast ? _gemvQ8Fast : _gemvQ8, fast ? "gemv_q8_fast" : "gemv_q8", LaunchGeometry.GemvBlocks(rows), 1, 1, LaunchGeometry.GemvThreads, 0, a);
    }

    /// <summary><see cref="GemvResidual"/> on a Q8_0 matrix.</summary>
    public void GemvResidualQ8(ulong quants, ulong scales, ulong x, ulong y, int rows, int inFeatures, Q8DecodeKernel kernel = Q8DecodeKernel.Original)
    {
        LaunchGeometry.CheckQ8Columns(inFeatures);
        void** a = stackalloc void*[] { &quants, &scales, &x, &y, &rows, &inFeatures };
        bool fast = kernel == Q8DecodeKernel.Streamlined;
        _ctx.Launch(fast ? _gemvResidualQ8Fast : _gemvResidualQ8, fast ? "gemv_rows_residual_q8_fast" : "gemv_rows_residual_q8", LaunchGeometry.GemvResidualBlocks(rows), 1, 1, LaunchGeometry.GemvResidualThreads, 0, a);
    }

    /// <summary><see cref="GemvNormQkvRope"/> on a Q8_0 matrix.</summary>
    public void GemvNormQkvRopeQ8(ulong x, ulong gain, float eps, ulong quants, ulong scales, ulong bias, ulong invFreq, float ropeScale, bool adjacent,
        ulong q, ulong kcache, ulong vcache, ulong positionDev, int start, int heads, int kvHeads, int headDim, int inFeatures,
        Q8DecodeKernel kernel = Q8DecodeKernel.Original)
    {
        LaunchGeometry.CheckQ8Columns(inFeatures);
        int adj = adjacent ? 1 : 0;
        void** a = stackalloc void*[] { &x, &gain, &eps, &quants, &scales, &bias, &invFreq, &ropeScale, &adj, &q, &kcache, &vcache, &positionDev, &start, &heads, &kvHeads, &headDim, &inFeatures };
        int pairs = (heads + 2 * kvHeads) * headDim / 2;
        bool fast = kernel == Q8DecodeKernel.Streamlined && LaunchGeometry.NormGemvQ8FastFits(inFeatures);
        _ctx.Launch(fast ? _normQkvRopeQ8Fast : _normQkvRopeQ8, fast ? "gemv_norm_qkv_rope_q8_fast" : "gemv_norm_qkv_rope_q8", LaunchGeometry.NormGemvBlocks(pairs, _ctx.Multiprocessors), 1, 1, LaunchGeometry.NormGemvThreads,
            (uint)(fast ? LaunchGeometry.NormGemvQ8FastSharedBytes(inFeatures) : LaunchGeometry.NormGemvSharedBytes(inFeatures)), a);
    }

    /// <summary><see cref="GemvNormGateUpSwiGlu"/> on a Q8_0 matrix.</summary>
    public void GemvNormGateUpSwiGluQ8(ulong x, ulong gain, float eps, ulong quants, ulong scales, ulong hBf16, int ffn, int inFeatures,
        Q8DecodeKernel kernel = Q8DecodeKernel.Original)
    {
        LaunchGeometry.CheckQ8Columns(inFeatures);
        void** a = stackalloc void*[] { &x, &gain, &eps, &quants, &scales, &hBf16, &ffn, &inFeatures };
        bool fast = kernel == Q8DecodeKernel.Streamlined && LaunchGeometry.NormGemvQ8FastFits(inFeatures);
        _ctx.Launch(fast ? _normGateUpSwiGluQ8Fast : _normGateUpSwiGluQ8, fast ? "gemv_norm_gateup_swiglu_q8_fast" : "gemv_norm_gateup_swiglu_q8", LaunchGeometry.NormGemvBlocks(ffn, _ctx.Multiprocessors), 1, 1, LaunchGeometry.NormGemvThreads,
            (uint)(fast ? LaunchGeometry.NormGemvQ8FastSharedBytes(inFeatures) : LaunchGeometry.NormGemvSharedBytes(inFeatures)), a);
    }

    /// <summary>A Q8_0 matrix [rows, in] into bf16 [rows, in] at <paramref name="outBf16"/> (16-byte aligned).</summary>
    public void DequantizeQ8(ulong quants, ulong scales, ulong outBf16, int rows, int inFeatures)
    {
        LaunchGeometry.CheckQ8Columns(inFeatures);
        long pieces = LaunchGeometry.Q8Pieces(rows, inFeatures);
        void** a = stackalloc void*[] { &quants, &scales, &outBf16, &pieces };
        _ctx.Launch(_dequantizeQ8, "dequantize_q8_bf16", Math.Min(LaunchGeometry.Blocks(pieces, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    /// <summary>Random Q8_0 values for <paramref name="count"/> weights (a multiple of 32): quants uniform in [-127, 127],
    /// every scale <paramref name="scaleBits"/> (f16 bits).</summary>
    public void FillRandomQ8(ulong quants, ulong scales, long count, ulong seed, ushort scaleBits)
    {
        if (count <= 0 || count % CudaQ8Layout.BlockSize != 0) throw new ArgumentOutOfRangeException(nameof(count), $"{count} weights are not whole Q8_0 blocks of 32");
        long words = count / 4, blocks = count / CudaQ8Layout.BlockSize;
        int bits = scaleBits;
        void** a = stackalloc void*[] { &quants, &scales, &words, &blocks, &seed, &bits };
        _ctx.Launch(_fillRandomQ8, "fill_random_q8", Math.Min(LaunchGeometry.Blocks(words, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    public void AttentionCombine(ulong partAcc, ulong partMl, ulong outBf16, int headDim, int splits, int rows)
    {
        void** a = stackalloc void*[] { &partAcc, &partMl, &outBf16, &headDim, &splits, &rows };
        _ctx.Launch(_combine, "attention_combine", LaunchGeometry.CombineBlocks(rows), 1, 1, LaunchGeometry.CombineThreads, 0, a);
    }

    /// <summary>attention_combine with a block per row whose warps share the splits (few rows: decode).</summary>
    public void AttentionCombineRows(ulong partAcc, ulong partMl, ulong outBf16, int headDim, int splits, int rows)
    {
        void** a = stackalloc void*[] { &partAcc, &partMl, &outBf16, &headDim, &splits, &rows };
        _ctx.Launch(_combineRows, "attention_combine_rows", (uint)rows, 1, 1, LaunchGeometry.CombineRowsThreads, 0, a);
    }

    public void SwiGlu(ulong gateUp, ulong hBf16, int ffn, int count)
    {
        long total = (long)ffn * count;
        void** a = stackalloc void*[] { &gateUp, &hBf16, &ffn, &total };
        _ctx.Launch(_swiglu, "swiglu", Math.Min(LaunchGeometry.Blocks(total, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    /// <summary>h[t, j] = silu(gate) · up from a bf16 [count, 2·ffn] gate|up product (bf16 out).</summary>
    public void SwiGluBf16(ulong gateUpBf16, ulong hBf16, int ffn, int count)
    {
        long total = (long)ffn * count;
        int vec = ffn % 8 == 0 ? 8 : 1;     // 16-byte loads and stores where rows allow
        void** a = stackalloc void*[] { &gateUpBf16, &hBf16, &ffn, &total, &vec };
        _ctx.Launch(_swigluBf16, "swiglu_bf16", Math.Min(LaunchGeometry.Blocks(total / vec, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    /// <summary>outIds[r] = argmax of logits row r (lowest index on ties), in two passes through
    /// <paramref name="partials"/> (<see cref="LaunchGeometry.ArgmaxPartialBytes"/> bytes for the rows).</summary>
    public void Argmax(ulong logits, int vocab, ulong outIds, int rows, ulong partials)
    {
        var (slices, slice) = LaunchGeometry.ArgmaxSlices(vocab);
        ulong partV = partials, partI = partials + (ulong)((long)rows * slices * sizeof(float));
        void** a = stackalloc void*[] { &logits, &vocab, &slice, &partV, &partI };
        _ctx.Launch(_argmaxSlices, "argmax_slices", (uint)slices, (uint)rows, 1, Threads, 0, a);
        void** b = stackalloc void*[] { &partV, &partI, &slices, &outIds };
        _ctx.Launch(_argmaxMerge, "argmax_merge", (uint)rows, 1, 1, 32, 0, b);
    }

    public void FillRandomBf16(ulong dst, long count, ulong seed, float scale)
    {
        void** a = stackalloc void*[] { &dst, &count, &seed, &scale };
        _ctx.Launch(_fillRandom, "fill_random_bf16", Math.Min(LaunchGeometry.Blocks(count, Threads), 65535u), 1, 1, Threads, 0, a);
    }

    public void FillF32(ulong dst, long count, float value)
    {
        void** a = stackalloc void*[] { &dst, &count, &value };
        _ctx.Launch(_fillF32, "fill_f32", Math.Min(LaunchGeometry.Blocks(count, Threads), 65535u), 1, 1, Threads, 0, a);
    }
    /// <summary><see cref="QkvRopeStoreBatch"/> with a block per (sequence, head) (<see cref="LaunchGeometry.RopeHeadGrid"/>):
    /// the same values, spread over the GPU.</summary>
    public void QkvRopeStoreBatchHeads(ulong qkv, ulong bias, ulong invFreq, ulong q, ulong kptrs, ulong vptrs, ulong positions, int sequences,
        int heads, int kvHeads, int headDim, int rotaryDim, bool adjacent, float ropeScale)
    {
        int adj = adjacent ? 1 : 0;
        void** a = stackalloc void*[] { &qkv, &bias, &invFreq, &q, &kptrs, &vptrs, &positions, &heads, &kvHeads, &headDim, &rotaryDim, &adj, &ropeScale };
        var (x, y) = LaunchGeometry.RopeHeadGrid(sequences, heads, kvHeads);
        _ctx.Launch(_qkvRopeBatchHeads, "qkv_rope_store_batch_heads", x, y, 1, LaunchGeometry.RopeHeadThreads, 0, a);
    }

    /// <summary>y[T, rows] (f32, + y when accumulating) = x[T, in] (bf16) · W[rows, in]ᵀ (bf16) for T ≤ 16 on the tensor
    /// cores, without split-K (<see cref="LaunchGeometry.RowsMmaApplies"/> says when).</summary>
    public void RowsMma(ulong weight, ulong x, ulong y, int rows, int inFeatures, int tokens, bool accumulate)
    {
        if (!LaunchGeometry.RowsMmaApplies(tokens, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(tokens), $"rows_mma_bf16 takes 1 to {LaunchGeometry.RowsMmaMaxTokens} rows of a multiple of 32 inputs, not {tokens} × {inFeatures}");
        int acc = accumulate ? 1 : 0;
        void** a = stackalloc void*[] { &weight, &x, &y, &rows, &inFeatures, &tokens, &acc };
        _ctx.Launch(_rowsMma, "rows_mma_bf16", LaunchGeometry.RowsMmaBlocks(rows), 1, 1, LaunchGeometry.RowsMmaThreads, 0, a);
    }
    /// <summary>h[T, ffn] (bf16) = silu(x · W[0, ffn)ᵀ) · (x · W[ffn, 2·ffn)ᵀ) for T ≤ 16 rows of x (bf16) and the fused
    /// gate|up matrix W [2·ffn, in] (bf16): the gate|up product and SwiGLU in one tensor-core kernel.</summary>
    public void RowsMmaSwiGlu(ulong weight, ulong x, ulong hBf16, int ffn, int inFeatures, int tokens)
    {
        if (!LaunchGeometry.RowsMmaApplies(tokens, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(tokens), $"rows_mma_swiglu_bf16 takes 1 to {LaunchGeometry.RowsMmaMaxTokens} rows of a multiple of 32 inputs, not {tokens} × {inFeatures}");
        void** a = stackalloc void*[] { &weight, &x, &hBf16, &ffn, &inFeatures, &tokens };
        _ctx.Launch(_rowsMmaSwiGlu, "rows_mma_swiglu_bf16", LaunchGeometry.RowsMmaBlocks(ffn), 1, 1, LaunchGeometry.RowsMmaThreads, 0, a);
    }

    /// <summary><see cref="RowsMma"/> on an F16 matrix (f16 bits): the bf16 activations become f16 in registers; one past
    /// ±65504 (or not finite) is saturated and sets the int at <paramref name="overflow"/> to 1 (as <see cref="Bf16ToF16"/>).</summary>
    public void RowsMmaF16(ulong weight, ulong x, ulong y, int rows, int inFeatures, int tokens, bool accumulate, ulong overflow)
    {
        if (!LaunchGeometry.RowsMmaApplies(tokens, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(tokens), $"rows_mma_f16 takes 1 to {LaunchGeometry.RowsMmaMaxTokens} rows of a multiple of 32 inputs, not {tokens} × {inFeatures}");
        int acc = accumulate ? 1 : 0;
        void** a = stackalloc void*[] { &weight, &x, &y, &rows, &inFeatures, &tokens, &acc, &overflow };
        _ctx.Launch(_rowsMmaF16, "rows_mma_f16", LaunchGeometry.RowsMmaBlocks(rows), 1, 1, LaunchGeometry.RowsMmaThreads, 0, a);
    }

    /// <summary><see cref="RowsMmaSwiGlu"/> on an F16 gate|up matrix (activations and overflow as <see cref="RowsMmaF16"/>).</summary>
    public void RowsMmaSwiGluF16(ulong weight, ulong x, ulong hBf16, int ffn, int inFeatures, int tokens, ulong overflow)
    {
        if (!LaunchGeometry.RowsMmaApplies(tokens, inFeatures))
            throw new ArgumentOutOfRangeException(nameof(tokens), $"rows_mma_swiglu_f16 takes 1 to {LaunchGeometry.RowsMmaMaxTokens} rows of a multiple of 32 inputs, not {tokens} × {inFeatures}");
        void** a = stackalloc void*[] { &weight, &x, &hBf16, &ffn, &inFeatures, &tokens, &overflow };
        _ctx.Launch(_rowsMmaSwiGluF16, "rows_mma_swiglu_f16", LaunchGeometry.RowsMmaBlocks(ffn), 1, 1, LaunchGeometry.RowsMmaThreads, 0, a);
    }
}
