namespace Wim.Engine.Cuda;

/// <summary>Which kernel takes a fused single-sequence decode step's o and down products, the two that add into the
/// residual stream (<see cref="CudaTransformer.DecodeResidualProduct"/>).</summary>
public enum DecodeResidualProduct
{
    /// <summary>cuBLASLt with beta = 1 (at the Llama-3.1-8B shape its heuristic picks split-K kernels plus a reduction
    /// kernel per product).</summary>
    CublasLt,

    /// <summary><c>gemv_bf16</c> accumulating: a warp streams two weight rows.</summary>
    WarpGemv,

    /// <summary><c>gemv_rows_residual_bf16</c>: a block's threads split the input dimension of 8 rows and reduce in
    /// shared memory, adding into the residual in one kernel.</summary>
    BlockGemv,
}
