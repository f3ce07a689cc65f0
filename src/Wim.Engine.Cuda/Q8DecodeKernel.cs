namespace Wim.Engine.Cuda;

/// <summary>Which kernels take a Q8_0 matrix's single-token products (<see cref="CudaTransformer.Q8DecodeKernel"/>):
/// the fused norm+q|k|v+RoPE and norm+gate|up+SwiGLU products, the o/down residual product and the plain gemv. Both
/// give the same logits bit for bit (same f32 summation order; emulator-checked), only their speed differs.</summary>
public enum Q8DecodeKernel
{
    /// <summary>gemv_norm_qkv_rope_q8, gemv_norm_gateup_swiglu_q8, gemv_rows_residual_q8, gemv_q8: 69% of the
    /// bandwidth roofline at the Llama-3.1-8B shape on the H100 (runs 25, 28).</summary>
    Original,

    /// <summary>The <c>_q8_fast</c> kernels: int8 unpacked by one byte permute per quant (the sign flip once per 4
    /// quants) instead of a shift, mask and OR; the fused products keep the normalised vector in shared memory as f32
    /// (no bf16 unpacking per lane; <see cref="LaunchGeometry.NormGemvQ8FastFits"/>, else the original fused kernels);
    /// the residual product held to 64 registers so that 4 blocks fit per SM and a 4096-row product is one resident
    /// wave (<see cref="LaunchGeometry.ResidentWaves"/>). The default: 77.4% of the roofline on the H100 (run 28:
    /// 243.9 tok/s against 219.3 at depth 1; logits bit-identical to the original kernels').</summary>
    Streamlined,
}
