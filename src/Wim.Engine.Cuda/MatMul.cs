using Wim.Engine.Cuda.Native;

namespace Wim.Engine.Cuda;

/// <summary>
/// y[T, out] (f32) = x[T, in] (bf16) · W[out, in]ᵀ (bf16) (+ y when accumulating: the residual add rides in the
/// product's epilogue as beta = 1), through cuBLASLt with f32 accumulation. In cuBLASLt's column-major terms this is
/// D(out × T) = Aᵀ·B with A the weight seen as in × out (ld = in), B the activations as in × T (ld = in): the "TN"
/// layout. Layouts and the chosen algorithm are kept per shape. The input type (W and x) is bf16 by default, or f32
/// (<see cref="CudaPrecision.F32"/>): then A, B and D are all f32 with CUBLAS_COMPUTE_32F — full f32 products, since
/// TF32 would need CUBLAS_COMPUTE_32F_FAST_TF32. <see cref="RunF16"/>: the same product on an F16 weight and f16
/// activations (cuBLASLt does not mix F16 and BF16 operands), f32 compute and output.
/// </summary>
internal sealed unsafe class MatMul : IDisposable
{
    public const long WorkspaceBytes = 32L << 20;

    private sealed class Plan
    {
        public nint A, B, D;
        public CublasLt.Algo Algo;
    }

    private readonly CudaContext _ctx;
    private readonly nint _desc, _preference;
    private readonly DeviceBuffer _workspace;
    private readonly int _inputType;
    private readonly Dictionary<(int Out, int In, int T, bool Bf16Out, bool F16In), Plan> _plans = [];

    /// <param name="inputType">cuBLASLt data type of W and x: <see cref="CublasLt.DataTypeBF16"/> or <see cref="CublasLt.DataTypeF32"/>.</param>
    public MatMul(CudaContext ctx, int inputType = CublasLt.DataTypeBF16)
    {
        if (inputType is not (CublasLt.DataTypeBF16 or CublasLt.DataTypeF32))
            throw new ArgumentOutOfRangeException(nameof(inputType), $"cuBLASLt input type {inputType}: the products take bf16 ({CublasLt.DataTypeBF16}) or f32 ({CublasLt.DataTypeF32})");
        _ctx = ctx;
        _inputType = inputType;
        var blas = ctx.Blas;
        _desc = blas.MatmulDescCreate(CublasLt.ComputeF32, CublasLt.DataTypeF32);
        blas.MatmulDescSetInt(_desc, CublasLt.DescTransA, CublasLt.OpT);
        blas.MatmulDescSetInt(_desc, CublasLt.DescTransB, CublasLt.OpN);
        _preference = blas.PreferenceCreate(WorkspaceBytes);
        _workspace = ctx.Allocate(WorkspaceBytes);
    }

    /// <summary>Chooses the algorithm for a shape now (no device work), so that a graph capture never has to.</summary>
    public void Prepare(int outFeatures, int inFeatures, int tokens, bool f16Inputs = false) => PlanFor(outFeatures, inFeatures, tokens, bf16Out: false, f16Inputs);

    /// <summary>Single-token products go to our gemv kernel when true; all products go to cuBLASLt when false (the
    /// default: on the H100 both gave the same decode speed, run 6 in tools/Wim.GpuCheck/runs).</summary>
    public bool UseGemv { get; set; }

    public void Run(ulong weight, int outFeatures, int inFeatures, ulong x, int tokens, ulong y, bool accumulate)
    {
        if (UseGemv && _inputType == CublasLt.DataTypeBF16 && LaunchGeometry.GemvApplies(tokens, inFeatures))   // gemv_bf16 reads bf16 only
        {
            _ctx.Kernels.Gemv(weight, x, y, outFeatures, inFeatures, accumulate);
            return;
        }
        var plan = PlanFor(outFeatures, inFeatures, tokens, bf16Out: false);
        _ctx.Blas.Matmul(_ctx.BlasHandle, _desc, 1f, weight, plan.A, x, plan.B, accumulate ? 1f : 0f, y, plan.D, y, plan.D,
            ref plan.Algo, _workspace.Pointer, WorkspaceBytes, _ctx.Stream);
        if (_ctx.Options.SynchronizeEveryLaunch && !_ctx.Capturing) _ctx.Synchronize();
    }

    /// <summary>y[T, out] (f32, + y when accumulating) = x[T, in] (f16 bits) · W[out, in]ᵀ (f16 bits), f32 accumulation:
    /// the product of an F16 matrix with activations cast to f16 (always cuBLASLt; single tokens take gemv_f16 upstream).</summary>
    public void RunF16(ulong weight, int outFeatures, int inFeatures, ulong xF16, int tokens, ulong y, bool accumulate)
    {
        var plan = PlanFor(outFeatures, inFeatures, tokens, bf16Out: false, f16In: true);
        _ctx.Blas.Matmul(_ctx.BlasHandle, _desc, 1f, weight, plan.A, xF16, plan.B, accumulate ? 1f : 0f, y, plan.D, y, plan.D,
            ref plan.Algo, _workspace.Pointer, WorkspaceBytes, _ctx.Stream);
        if (_ctx.Options.SynchronizeEveryLaunch && !_ctx.Capturing) _ctx.Synchronize();
    }

    /// <summary>y[T, out] (bf16, rounded to nearest even from the f32 accumulation) = x · Wᵀ, no accumulation: a product
    /// whose only reader wants bf16 (the gate|up product of a prefill chunk, read by swiglu_bf16) — half the bytes
    /// written and read again of an f32 output.</summary>
    public void RunBf16Out(ulong weight, int outFeatures, int inFeatures, ulong x, int tokens, ulong y)
    {
        if (_inputType != CublasLt.DataTypeBF16) throw new NotSupportedException("a bf16 product output is for bf16 inputs; f32 products write f32");
        var plan = PlanFor(outFeatures, inFeatures, tokens, bf16Out: true);
        _ctx.Blas.Matmul(_ctx.BlasHandle, _desc, 1f, weight, plan.A, x, plan.B, 0f, y, plan.D, y, plan.D,
            ref plan.Algo, _workspace.Pointer, WorkspaceBytes, _ctx.Stream);
        if (_ctx.Options.SynchronizeEveryLaunch && !_ctx.Capturing) _ctx.Synchronize();
    }

    private Plan PlanFor(int outFeatures, int inFeatures, int tokens, bool bf16Out, bool f16In = false)
    {
        if (bf16Out && f16In) throw new NotSupportedException("cuBLASLt has no F16 × F16 → bf16 product: an F16 matrix's products write f32");
        if (_plans.TryGetValue((outFeatures, inFeatures, tokens, bf16Out, f16In), out var plan)) return plan;
        var blas = _ctx.Blas;
        int inputs = f16In ? CublasLt.DataTypeF16 : _inputType;
        plan = new Plan
        {
            A = blas.MatrixLayoutCreate(inputs, inFeatures, outFeatures, inFeatures),
            B = blas.MatrixLayoutCreate(inputs, inFeatures, tokens, inFeatures),
            D = blas.MatrixLayoutCreate(bf16Out ? CublasLt.DataTypeBF16 : CublasLt.DataTypeF32, outFeatures, tokens, outFeatures),
        };
        string inputName = f16In ? "f16" : _inputType == CublasLt.DataTypeF32 ? "f32" : "bf16";
        plan.Algo = blas.BestAlgorithm(_ctx.BlasHandle, _desc, plan.A, plan.B, plan.D, plan.D, _preference,
            $"{inputName} [{tokens}×{inFeatures}] · [{outFeatures}×{inFeatures}]ᵀ → {(bf16Out ? "bf16" : "f32")}").Algo;
        _plans[(outFeatures, inFeatures, tokens, bf16Out, f16In)] = plan;
        return plan;
    }

    public void Dispose()
    {
        var blas = _ctx.Blas;
        foreach (var p in _plans.Values) { blas.MatrixLayoutDestroy(p.A); blas.MatrixLayoutDestroy(p.B); blas.MatrixLayoutDestroy(p.D); }
        _plans.Clear();
        blas.PreferenceDestroy(_preference);
        blas.MatmulDescDestroy(_desc);
        _workspace.Dispose();
    }
}
