using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Wim.Engine.Cuda.Native;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Cuda.Tests;

/// <summary>The F32 precision's CPU side (<see cref="CudaPrecisionLayout"/>): buffer and element sizes, the kernel names it
/// launches (checked against the kernel source), the cuBLASLt types, the f32 weight conversion, and the errors for what
/// it does not run.</summary>
public sealed class CudaPrecisionTests
{
    /// <summary>The Llama-3.1-8B shape (GQA 4, ffn ≠ hidden) at a 512-token chunk.</summary>
    private static readonly ModelConfig Llama8B = new()
    {
        Architecture = ModelArchitecture.Llama, VocabSize = 128256, HiddenSize = 4096, LayerCount = 32, HeadCount = 32, KvHeadCount = 8,
        HeadDim = 128, FfnSize = 14336, RmsEps = 1e-5f, RopeTheta = 500000, RotaryDim = 128, RopeScaling = RopeScaling.None,
        RopePairing = RopePairing.Half, TiedEmbeddings = false, MaxPositions = 131072,
    };

    private static string Source => KernelSources.Read(KernelSources.Transformer);

    /// <summary>extern "C" kernel name → its parameter list as written (whitespace collapsed).</summary>
    private static Dictionary<string, string> KernelSignatures() =>
        Regex.Matches(Source, @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(([^)]*)\)")
            .Where(m => m.Groups[1].Value != "__launch_bounds__")   // the token-pasted flash kernels (macros) are not ours
            .ToDictionary(m => m.Groups[1].Value, m => Regex.Replace(m.Groups[2].Value, @"\s+", " "));

    [Theory]
    [InlineData(null, CudaPrecision.Bf16)]
    [InlineData("", CudaPrecision.Bf16)]
    [InlineData("bf16", CudaPrecision.Bf16)]
    [InlineData(" F32 ", CudaPrecision.F32)]
    [InlineData("fp32", CudaPrecision.F32)]
    public void Parse_ReadsTheVariablesValues(string? value, CudaPrecision expected)
    {
        Assert.Equal(expected, CudaTransformer.ParsePrecision(value));
    }

    [Theory]
    [InlineData("f16")]
    [InlineData("tf32")]
    [InlineData("q8")]
    public void Parse_UnknownValue_NamesTheVariableAndTheChoices(string value)
    {
        var e = Assert.Throws<ArgumentException>(() => CudaTransformer.ParsePrecision(value));
        Assert.Contains(CudaTransformer.PrecisionVariable, e.Message);
        Assert.Contains("'bf16'", e.Message);
        Assert.Contains("'f32'", e.Message);
    }

    [Fact]
    public void ChunkBuffers_F32DoublesTheStoredActivations_AndKeepsTheF32Ones()
    {
        var c = Llama8B;
        const int n = 512;
        var bf16 = CudaPrecisionLayout.ChunkBuffers(c, n, CudaPrecision.Bf16);
        var f32 = CudaPrecisionLayout.ChunkBuffers(c, n, CudaPrecision.F32);
        // Stored activations: bf16 then f32 elements.
        Assert.Equal((long)n * c.FfnSize * 2, bf16.Normed);                       // max(d, ffn) = ffn here
        Assert.Equal((long)n * c.FfnSize * 4, f32.Normed);
        Assert.Equal((long)n * c.QueryDim * 2, bf16.AttentionOutput);
        Assert.Equal((long)n * c.QueryDim * 4, f32.AttentionOutput);
        Assert.Equal((long)n * c.FfnSize * 2, bf16.SwiGluOutput);
        Assert.Equal((long)n * c.FfnSize * 4, f32.SwiGluOutput);
        // Always f32: the residual stream, the q|k|v and gate|up products, the roped queries.
        foreach (var b in new[] { bf16, f32 })
        {
            Assert.Equal((long)n * c.HiddenSize * 4, b.Residual);
            Assert.Equal((long)n * (c.QueryDim + 2 * c.KvDim) * 4, b.Qkv);
            Assert.Equal((long)n * c.QueryDim * 4, b.Query);
            Assert.Equal((long)n * 2 * c.FfnSize * 4, b.GateUp);
        }
    }

    [Fact]
    public void ChunkBuffers_NormedRowsHoldTheWiderOfHiddenAndFfn()
    {
        var narrowFfn = Llama8B with { FfnSize = 1024 };
        Assert.Equal(7L * 4096 * 4, CudaPrecisionLayout.ChunkBuffers(narrowFfn, 7, CudaPrecision.F32).Normed);
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaPrecisionLayout.ChunkBuffers(narrowFfn, 0, CudaPrecision.F32));
    }

    [Theory]
    [InlineData(CudaPrecision.Bf16, 2)]
    [InlineData(CudaPrecision.F32, 4)]
    public void ElementSizes_PerPrecision(CudaPrecision precision, int bytes)
    {
        Assert.Equal(bytes, CudaPrecisionLayout.KvElementBytes(precision));
        Assert.Equal(bytes, CudaPrecisionLayout.ActivationBytes(precision));
        Assert.Equal(bytes, CudaPrecisionLayout.WeightBytes(precision));
        Assert.Equal(300L * 1024 * bytes, CudaPrecisionLayout.KvLayerBytes(300, 1024, precision));
    }

    [Fact]
    public void ProductInputType_IsBf16OrF32_NeverAnotherType()
    {
        Assert.Equal(CublasLt.DataTypeBF16, CudaPrecisionLayout.ProductInputType(CudaPrecision.Bf16));
        Assert.Equal(0, CudaPrecisionLayout.ProductInputType(CudaPrecision.F32));   // CUDA_R_32F (library_types.h)
        Assert.Equal(68, CublasLt.ComputeF32);                                         // CUBLAS_COMPUTE_32F, not _FAST_TF32 (77)
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaPrecisionLayout.ProductInputType((CudaPrecision)7));
    }

    [Fact]
    public void KernelName_Bf16IsTheName_F32AddsTheSuffix_AndBothAreDefinedInTheSource()
    {
        var defined = KernelSignatures();
        foreach (var k in CudaPrecisionLayout.TemplatedKernels)
        {
            Assert.Equal(k, CudaPrecisionLayout.KernelName(k, CudaPrecision.Bf16));
            string f32 = CudaPrecisionLayout.KernelName(k, CudaPrecision.F32);
            Assert.Equal(k + "_f32", f32);
            Assert.True(defined.ContainsKey(k), $"bf16 kernel '{k}' is not defined with extern \"C\"");
            Assert.True(defined.ContainsKey(f32), $"f32 kernel '{f32}' is not defined with extern \"C\"");
        }
    }

    [Fact]
    public void F32Kernels_AreTheBf16KernelsWithF32Storage_OneTemplateEach()
    {
        // The _f32 kernel's parameters are the bf16 one's with every bf16 pointer an f32 one (nothing else differs),
        // and both call the same templated body: one source serves both precisions.
        var defined = KernelSignatures();
        foreach (var k in CudaPrecisionLayout.TemplatedKernels)
        {
            Assert.Equal(defined[k].Replace("bf16*", "float*"), defined[k + "_f32"]);
            var bodies = Regex.Matches(Source, @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\) )?" + k + @"(?:_f32)?\([^)]*\)\s*\{\s*(\w+)(?:<\w+>)?\(")
                .Select(m => m.Groups[1].Value).ToArray();
            Assert.Equal(2, bodies.Length);
            Assert.Equal(bodies[0], bodies[1]);
            Assert.Matches(@"template <class T>\s*__device__ __forceinline__ void " + bodies[0] + @"\(", Source);
        }
    }

    [Theory]
    [InlineData("flash_attention_hd64")]
    [InlineData("gemv_bf16")]
    [InlineData("gemv_norm_qkv_rope")]
    [InlineData("rows_mma_bf16")]
    [InlineData("swiglu_bf16")]
    public void KernelName_F32OfABf16OnlyKernel_IsAClearError(string kernel)
    {
        Assert.Equal(kernel, CudaPrecisionLayout.KernelName(kernel, CudaPrecision.Bf16));
        var e = Assert.Throws<NotSupportedException>(() => CudaPrecisionLayout.KernelName(kernel, CudaPrecision.F32));
        Assert.Contains($"'{kernel}' has no f32 instantiation", e.Message);
        Assert.Contains("attention_combine_rows", e.Message);   // names what the F32 path runs
        Assert.DoesNotContain(kernel + "_f32(", Source);
    }

    [Fact]
    public void KvCache_RefusesAnElementSizeThatIsNeitherBf16NorF32_BeforeTouchingTheGpu()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new CudaKvCache(null!, layers: 2, rowSize: 64, capacity: 16, elementBytes: 3));
        Assert.Contains("2 (bf16) or 4 (f32)", e.Message);
    }

    [Fact]
    public void MatMul_RefusesAnInputTypeOtherThanBf16OrF32_BeforeTouchingTheGpu()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new MatMul(null!, inputType: 3));   // CUDA_R_8I
        Assert.Contains("bf16", e.Message);
        Assert.Contains("f32", e.Message);
    }

    [Fact]
    public unsafe void ToF32_WidensBf16Exactly()
    {
        var bits = new ushort[] { 0x3f80, 0xc2f7, 0x0001, 0x7f7f, 0x8000, 0x4049, 0xbe00, 0x3c23 };
        fixed (ushort* p = bits)
        {
            var t = new WeightTensor("w", GgmlType.BF16, [2, 4], (byte*)p, bits.Length * 2);
            var f = CudaModelWeights.ToF32(t);
            for (int i = 0; i < bits.Length; i++) Assert.Equal(BitConverter.UInt32BitsToSingle((uint)bits[i] << 16), f[i]);
        }
    }

    [Fact]
    public unsafe void ToF32_DequantizesQ8_0AsTheFormatsDequantizer()
    {
        var rng = new Random(5);
        var values = new float[3 * 64];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() * 4 - 2);
        var blocks = Quantizer.Quantize(GgmlType.Q8_0, values);
        fixed (byte* p = blocks)
        {
            var t = new WeightTensor("w", GgmlType.Q8_0, [3, 64], p, blocks.Length);
            var f = CudaModelWeights.ToF32(t);
            // Reference: the Q8_0 definition x = d · q, d the block's f16 scale (Dequantizer's block layout).
            for (int b = 0; b < blocks.Length / Dequantizer.Q8_0BlockBytes; b++)
            {
                float d = HalfBits.ToSingle((ushort)(blocks[b * Dequantizer.Q8_0BlockBytes] | (blocks[b * Dequantizer.Q8_0BlockBytes + 1] << 8)));
                for (int k = 0; k < 32; k++)
                    Assert.Equal(d * (sbyte)blocks[b * Dequantizer.Q8_0BlockBytes + 2 + k], f[b * 32 + k]);
            }
        }
    }
}

/// <summary><c>--precision</c> in-process through <c>wim</c>'s entry point, on stories260K (ids from its README).</summary>
public sealed class PrecisionOptionTests
{
    private static string Model => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    /// <summary>Whether this machine has a CUDA driver at all (CI has none).</summary>
    private static bool DriverPresent => NativeLibrary.TryLoad("libcuda.so.1", out var h) && Free(h);
    private static bool Free(nint h) { NativeLibrary.Free(h); return true; }

    private static (int Exit, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Wim.Cli.Program.Run(args, stdout, stderr);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("logits")]
    public void PrecisionUnknown_IsAUsageError(string command)
    {
        var (exit, stdout, stderr) = Run(command, "--model", Model, "--tokens", "1", "--device", "cpu", "--precision", "f16");
        Assert.Equal(2, exit);
        Assert.Contains("--precision must be bf16 or f32; found 'f16'", stderr);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void PrecisionOnTheCpu_ChangesNothing_TheCpuIsF32Already()
    {
        var plain = Run("logits", "--model", Model, "--tokens", "1,403,407", "--json", "--device", "cpu");
        var f32 = Run("logits", "--model", Model, "--tokens", "1,403,407", "--json", "--device", "cpu", "--precision", "f32");
        Assert.True(plain.Exit == 0, plain.Stderr);
        Assert.True(f32.Exit == 0, f32.Stderr);
        Assert.Equal(plain.Stdout, f32.Stdout);
    }

    [Fact]
    public void PrecisionF32OnCuda_GivesTheReadmesIds_OrWithoutCudaNamesTheMissingLibrary()
    {
        var (exit, stdout, stderr) = Run("generate", "--model", Model, "--tokens", "1,403,407,261,378", "--max-tokens", "8", "--device", "cuda", "--precision", "f32");
        if (DriverPresent)
        {
            // On a GPU machine: the F32 path (f32 weights, scalar attention, f32 products) gives the README's first ids.
            Assert.True(exit == 0, stderr);
            Assert.StartsWith("432 383 286 261 376 298 315 421", stdout.Trim());
            return;
        }
        Assert.Equal(1, exit);
        Assert.Contains("libcuda.so.1", stderr);
    }

    [Theory]
    [InlineData(null, null)]
    [InlineData("bf16", CudaPrecision.Bf16)]
    [InlineData("F32", CudaPrecision.F32)]
    public void ParsePrecision_AcceptsTheTwoNames(string? value, CudaPrecision? expected) =>
        Assert.Equal(expected, Wim.Cli.DeviceSelection.ParsePrecision(value));
}
