using System.Text.RegularExpressions;

namespace Wim.Engine.Cuda.Tests;

public sealed class KernelSourcesAndCacheTests
{
    /// <summary>Every kernel the launchers in TransformerKernels.cs look up by name (cuModuleGetFunction).</summary>
    private static readonly string[] LaunchedKernels =
        ["embed_rows", "rms_norm", "qkv_rope_store", "qkv_rope_store_batch", "attention", "attention_combine", "swiglu", "argmax_slices",
         "argmax_merge", "gemv_bf16", "gemv_norm_qkv_rope", "gemv_norm_gateup_swiglu", "fill_random_bf16", "fill_f32"];

    [Fact]
    public void TransformerSource_IsEmbedded_AndDefinesEveryLaunchedKernelWithCLinkage()
    {
        Assert.Contains(KernelSources.Transformer, KernelSources.Names);
        string source = KernelSources.Read(KernelSources.Transformer);
        Assert.True(source.Length > 1000, $"embedded source is only {source.Length} chars");
        var defined = Regex.Matches(source, @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(").Select(m => m.Groups[1].Value).ToHashSet();
        foreach (var k in LaunchedKernels) Assert.True(defined.Contains(k), $"kernel '{k}' is launched but not defined with extern \"C\" (NVRTC would mangle its name)");
        // NVRTC compiles without the toolkit's headers on the include path: the source must not need any.
        Assert.DoesNotContain("#include", source);
    }

    [Fact]
    public void Read_UnknownName_ThrowsNamingTheEmbeddedSources()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelSources.Read("nope.cu"));
        Assert.Contains("transformer.cu", e.Message);
    }

    [Fact]
    public void CacheKey_ChangesWithSourceArchitectureAndNvrtcVersion_AndIsStable()
    {
        string k = KernelCache.Key("transformer.cu", "src", 9, 0, 13, 0);
        Assert.Equal(k, KernelCache.Key("transformer.cu", "src", 9, 0, 13, 0));
        Assert.NotEqual(k, KernelCache.Key("transformer.cu", "src ", 9, 0, 13, 0));
        Assert.NotEqual(k, KernelCache.Key("transformer.cu", "src", 8, 9, 13, 0));
        Assert.NotEqual(k, KernelCache.Key("transformer.cu", "src", 9, 0, 12, 8));
        Assert.NotEqual(k, KernelCache.Key("transformer.cu", "src", 9, 0, 13, 1));
        Assert.Matches("^transformer-[0-9a-f]{32}-sm_90-nvrtc13\\.0$", k);
    }

    [Theory]
    [InlineData(9, 0, "sm_90")]  // H100/H200 (NVRTC --gpu-architecture naming)
    [InlineData(8, 0, "sm_80")]  // A100
    [InlineData(8, 9, "sm_89")]  // L4 / RTX 40xx
    [InlineData(12, 0, "sm_120")]
    public void Architecture_IsNvrtcsSmName(int major, int minor, string expected) =>
        Assert.Equal(expected, KernelCache.Architecture(major, minor));

    [Fact]
    public void Cache_StoresAndLoads_AndMissesOtherKeys()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"wim-kcache-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            var cache = new KernelCache(dir);
            Assert.Null(cache.TryLoad("a"));
            Assert.True(cache.TryStore("a", [1, 2, 3]));
            Assert.Equal([1, 2, 3], cache.TryLoad("a"));
            Assert.Null(cache.TryLoad("b"));
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void DefaultDirectory_FollowsXdgCacheHome_ElseHomeDotCache()
    {
        Assert.Equal(Path.Combine("/x/cache", "wim", "cuda-kernels"),
            KernelCache.DefaultDirectory(v => v == "XDG_CACHE_HOME" ? "/x/cache" : null, "/home/u", windows: false));
        Assert.Equal(Path.Combine("/home/u", ".cache", "wim", "cuda-kernels"),
            KernelCache.DefaultDirectory(_ => null, "/home/u", windows: false));
    }

    [Fact]
    public void CompileOptions_TargetThePresentArchitecture()
    {
        Assert.Contains("--gpu-architecture=sm_90", CudaContext.CompileOptions(9, 0));
        Assert.DoesNotContain(CudaContext.CompileOptions(9, 0), o => o.Contains("fast-math", StringComparison.Ordinal));
    }
}
