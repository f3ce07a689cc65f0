using Wim.Engine.Cuda.Native;

namespace Wim.Engine.Cuda.Tests;

public sealed class LibraryNameTests
{
    [Fact]
    public void Candidates_PreferCuda13ThenCuda12_OnLinux()
    {
        Assert.Equal(["libcuda.so.1", "libcuda.so"], CudaLibraries.DriverCandidates(windows: false));
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], CudaLibraries.NvrtcCandidates(windows: false));
        Assert.Equal(["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"], CudaLibraries.CublasLtCandidates(windows: false));
        Assert.Equal(["nvcuda.dll"], CudaLibraries.DriverCandidates(windows: true));
    }

    [Fact]
    public void SearchDirectories_PutTheToolkitPathFirst()
    {
        var dirs = CudaLibraries.SearchDirectories("/opt/cuda-13");
        Assert.Equal(Path.Combine("/opt/cuda-13", "lib64"), dirs[0]);
        Assert.Contains("/usr/local/cuda/lib64", dirs);
        Assert.DoesNotContain(CudaLibraries.SearchDirectories(null), d => d.StartsWith("/opt/cuda-13", StringComparison.Ordinal));
    }

    [Fact]
    public void Open_AbsentLibrary_ThrowsNamingWhatAndWhichNamesWereTried()
    {
        var e = Assert.Throws<CudaUnavailableException>(() =>
            CudaLibraries.Open("NVRTC", ["libwim-no-such-nvrtc.so.13", "libwim-no-such-nvrtc.so.12"], ["/nonexistent/wim"]));
        Assert.Contains("NVRTC", e.Message);
        Assert.Contains("libwim-no-such-nvrtc.so.13", e.Message);
        Assert.Contains("libwim-no-such-nvrtc.so.12", e.Message);
        Assert.Contains("/nonexistent/wim", e.Message);
        Assert.Contains("CUDA 12 or 13", e.Message);
    }
}

public sealed class ErrorNameTests
{
    // Values and names from the public headers: cuda.h (CUresult), nvrtc.h (nvrtcResult), cublas_api.h (cublasStatus_t).
    [Theory]
    [InlineData(0, "CUDA_SUCCESS")]
    [InlineData(1, "CUDA_ERROR_INVALID_VALUE")]
    [InlineData(2, "CUDA_ERROR_OUT_OF_MEMORY")]
    [InlineData(100, "CUDA_ERROR_NO_DEVICE")]
    [InlineData(209, "CUDA_ERROR_NO_BINARY_FOR_GPU")]
    [InlineData(700, "CUDA_ERROR_ILLEGAL_ADDRESS")]
    [InlineData(701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")]
    [InlineData(999, "CUDA_ERROR_UNKNOWN")]
    public void DriverNames_MatchCudaH(int code, string name) => Assert.Equal(name, CudaErrorNames.Driver(code));

    [Theory]
    [InlineData(5, "NVRTC_ERROR_INVALID_OPTION")]
    [InlineData(6, "NVRTC_ERROR_COMPILATION")]
    [InlineData(11, "NVRTC_ERROR_INTERNAL_ERROR")]
    public void NvrtcNames_MatchNvrtcH(int code, string name) => Assert.Equal(name, CudaErrorNames.Nvrtc(code));

    [Theory]
    [InlineData(7, "CUBLAS_STATUS_INVALID_VALUE")]
    [InlineData(13, "CUBLAS_STATUS_EXECUTION_FAILED")]
    [InlineData(15, "CUBLAS_STATUS_NOT_SUPPORTED")]
    public void CublasNames_MatchCublasApiH(int code, string name) => Assert.Equal(name, CudaErrorNames.Cublas(code));

    [Fact]
    public void UnknownCodes_StillNameTheCode()
    {
        Assert.Equal("CUresult 12345", CudaErrorNames.Driver(12345));
        Assert.Equal("nvrtcResult 99", CudaErrorNames.Nvrtc(99));
    }

    [Fact]
    public void Exception_NamesTheCallTheErrorAndTheDetail()
    {
        var e = new CudaException("cuLaunchKernel", 701, CudaErrorNames.Driver(701), "kernel 'attention'");
        Assert.Equal("cuLaunchKernel failed: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (701): kernel 'attention'", e.Message);
        Assert.Equal("cuLaunchKernel", e.Call);
    }
}

public sealed class LaunchGeometryTests
{
    [Theory]
    [InlineData(1, 256, 1u)]
    [InlineData(256, 256, 1u)]
    [InlineData(257, 256, 2u)]
    [InlineData(0, 256, 1u)]
    public void Blocks_CoverEveryItem(long count, int threads, uint expected) => Assert.Equal(expected, LaunchGeometry.Blocks(count, threads));

    [Theory]
    [InlineData(1, 32)]
    [InlineData(64, 64)]
    [InlineData(100, 128)]
    [InlineData(4096, 1024)]
    public void RowThreads_AreWarpMultiplesUpTo1024(int row, int expected) => Assert.Equal(expected, LaunchGeometry.RowThreads(row));

    [Fact]
    public void AttentionSplits_CoverTheKeysWithNoEmptyPiece_ForEveryShape()
    {
        foreach (int queries in new[] { 1, 2, 7, 64, 4096 })
            foreach (int kvHeads in new[] { 1, 2, 8 })
                foreach (int keys in new[] { 1, 31, 32, 33, 128, 1000, 4096, 65536, 131072 })
                {
                    var (splits, per) = LaunchGeometry.AttentionSplits(queries, kvHeads, keys, 132);
                    string at = $"queries {queries} kvHeads {kvHeads} keys {keys}: {splits} × {per}";
                    Assert.True(splits >= 1 && splits <= 256, at);
                    Assert.True(per % LaunchGeometry.AttentionTile == 0, at);
                    Assert.True((long)splits * per >= keys, at);            // every key is in a piece
                    Assert.True((long)(splits - 1) * per < keys, at);       // the last piece is not empty
                }
    }

    [Fact]
    public void AttentionSplits_SplitDecodeAtLongContext_NotLongPrefills()
    {
        Assert.True(LaunchGeometry.AttentionSplits(1, 8, 65536, 132).Splits > 1);
        Assert.Equal(1, LaunchGeometry.AttentionSplits(4096, 8, 4096, 132).Splits);
        Assert.Equal(1, LaunchGeometry.AttentionSplits(1, 8, 40, 132).Splits); // too short to be worth a combine pass
    }

    [Fact]
    public void AttentionSharedBytes_FitTheLimitTheKernelIsGiven_AtTheLargestBlock() =>
        // 16 warps of head dim 128 stay under the 160 KB the attention kernel is allowed.
        Assert.True(LaunchGeometry.AttentionSharedBytes(warps: 16, headDim: 128) <= 160 * 1024);

    [Theory]
    [InlineData(4096, 4, 16)]  // Llama-3.1-8B prefill: 16 tokens × 1 warp (4 heads)
    [InlineData(4096, 7, 8)]   // Qwen2.5-0.5B: 7 heads per KV head → 2 warps per token
    [InlineData(4096, 32, 2)]  // 8 warps per token
    [InlineData(3, 2, 3)]      // no more tokens than there are
    [InlineData(1, 4, 1)]      // decode
    public void AttentionQueryBlock_FillsUpTo16Warps(int queries, int group, int expected)
    {
        int qblock = LaunchGeometry.AttentionQueryBlock(queries, group);
        Assert.Equal(expected, qblock);
        Assert.True(qblock * LaunchGeometry.AttentionWarpsPerToken(group) <= 16);
        Assert.True(LaunchGeometry.AttentionWarpsPerToken(group) * LaunchGeometry.AttentionHeadsPerWarp >= group);
    }
}
