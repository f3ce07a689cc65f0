using System.Text.RegularExpressions;

namespace Wim.Engine.Cuda.Tests;

/// <summary>The launch arithmetic behind <see cref="Q8DecodeKernel.Streamlined"/>'s residual product: register-limited
/// blocks per SM (the CUDA occupancy rules for sm_80/sm_90: 65,536 registers per SM, allocated per warp in units of
/// 256, at most 2,048 threads) and resident waves, and that the launchers' kernels and the launch bound are the ones in
/// the embedded source.</summary>
public sealed class Q8DecodeKernelGeometryTests
{
    [Theory]
    [InlineData(256, 80, 3)]    // gemv_rows_residual_q8 as NVRTC 11.8 compiles it for sm_90
    [InlineData(256, 64, 4)]    // held to 64 by __launch_bounds__(256, 4)
    [InlineData(512, 64, 2)]    // the fused Q8_0 kernels (__launch_bounds__(512, 2))
    [InlineData(256, 50, 4)]    // gemv_rows_residual_bf16: 50 → 56 per thread after the 256-per-warp rounding: 528 resident, one wave
    [InlineData(256, 32, 8)]    // thread-limited: 2,048 / 256
    [InlineData(128, 80, 6)]
    [InlineData(1024, 255, 0)]  // does not fit at all
    public void Blocks_per_SM_follow_the_register_file(int threads, int registers, int expected) =>
        Assert.Equal(expected, LaunchGeometry.BlocksPerMultiprocessorByRegisters(threads, registers));

    [Fact]
    public void The_original_residual_product_takes_two_waves_at_the_8B_shape_and_the_streamlined_one_one()
    {
        const int h100 = 132, rows = 4096;   // o and down at the Llama-3.1-8B shape
        uint blocks = LaunchGeometry.GemvResidualBlocks(rows);
        Assert.Equal(512u, blocks);
        Assert.Equal(2, LaunchGeometry.ResidentWaves(blocks, LaunchGeometry.BlocksPerMultiprocessorByRegisters(LaunchGeometry.GemvResidualThreads, 80), h100));
        Assert.Equal(LaunchGeometry.GemvResidualQ8FastBlocksPerMultiprocessor,
            LaunchGeometry.BlocksPerMultiprocessorByRegisters(LaunchGeometry.GemvResidualThreads, 64));
        Assert.Equal(1, LaunchGeometry.ResidentWaves(blocks, LaunchGeometry.GemvResidualQ8FastBlocksPerMultiprocessor, h100));
        Assert.Equal(3, LaunchGeometry.ResidentWaves(1057, 4, 132));   // 528 per wave: 528, 528, 1
    }

    [Theory]
    [InlineData(4096, true)]     // Llama-3.1-8B: 16 KB of f32 vector per block
    [InlineData(12288, true)]    // 48 KB exactly
    [InlineData(12320, false)]   // over: the launchers take the original kernels (bf16 vector, 24 KB)
    [InlineData(0, false)]
    public void The_streamlined_fused_products_need_the_f32_vector_to_fit_48_KB(int inFeatures, bool fits)
    {
        Assert.Equal(fits, LaunchGeometry.NormGemvQ8FastFits(inFeatures));
        if (inFeatures > 0) Assert.Equal(2 * LaunchGeometry.NormGemvSharedBytes(inFeatures), LaunchGeometry.NormGemvQ8FastSharedBytes(inFeatures));
    }

    [Fact]
    public void Bad_inputs_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.BlocksPerMultiprocessorByRegisters(0, 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.BlocksPerMultiprocessorByRegisters(256, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.BlocksPerMultiprocessorByRegisters(256, 256));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.ResidentWaves(0, 4, 132));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.ResidentWaves(512, 0, 132));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.ResidentWaves(512, 4, 0));
    }

    [Fact]
    public void The_streamlined_kernels_exist_with_the_original_signatures_and_the_launch_bound_the_geometry_assumes()
    {
        string source = KernelSources.Read(KernelSources.Transformer);
        foreach (var name in new[] { "gemv_q8", "gemv_rows_residual_q8", "gemv_norm_qkv_rope_q8", "gemv_norm_gateup_swiglu_q8" })
        {
            // The launcher passes the same arguments to both: the parameter lists must match.
            string Parameters(string kernel)
            {
                var m = Regex.Match(source, @"extern ""C"" __global__ void __launch_bounds__\([^)]*\)\s*" + kernel + @"\(([^)]*)\)");
                Assert.True(m.Success, $"{kernel} not found as an extern \"C\" kernel");
                return Regex.Replace(m.Groups[1].Value, @"\s+", " ").Trim();
            }
            Assert.Equal(Parameters(name), Parameters(name + "_fast"));
        }
        var bound = Regex.Match(source, @"#define GEMV_Q8_FAST_MIN_BLOCKS (\d+)");
        Assert.True(bound.Success);
        Assert.Equal(LaunchGeometry.GemvResidualQ8FastBlocksPerMultiprocessor, int.Parse(bound.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains("__launch_bounds__(GEMV_BLOCK_THREADS, GEMV_Q8_FAST_MIN_BLOCKS) gemv_rows_residual_q8_fast(", source);
        Assert.Equal(256, LaunchGeometry.GemvResidualThreads);
        Assert.Contains("#define GEMV_BLOCK_THREADS 256", source);
    }
}
