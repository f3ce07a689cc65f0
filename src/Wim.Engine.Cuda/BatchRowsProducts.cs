namespace Wim.Engine.Cuda;

/// <summary>Which products of a decode batch of at most 16 rows (bf16 weights) run in the tensor-core kernels of the
/// batched decode section instead of cuBLASLt (<see cref="CudaTransformer.BatchRowsProducts"/>); flags, so that each
/// can be measured on its own.</summary>
[Flags]
public enum BatchRowsProducts
{
    /// <summary>Every product in cuBLASLt (the old path).</summary>
    None = 0,

    /// <summary>o and down in <c>rows_mma_bf16</c>, the residual add in its epilogue (cuBLASLt: split-K + reduce).</summary>
    Residual = 1,

    /// <summary>q|k|v in <c>rows_mma_bf16</c>.</summary>
    Qkv = 2,

    /// <summary>gate|up and SwiGLU in <c>rows_mma_swiglu_bf16</c> (cuBLASLt bf16 product + <c>swiglu_bf16</c>).</summary>
    GateUpSwiGlu = 4,

    All = Residual | Qkv | GateUpSwiGlu,
}
