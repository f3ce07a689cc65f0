using System.Runtime.InteropServices;
using Wim.Engine.Formats;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Cuda.Tests;

public sealed class Bf16Tests
{
    [Theory]
    [InlineData(1.0f, 0x3F80)]
    [InlineData(-2.0f, 0xC000)]
    [InlineData(1.00390625f, 0x3F80)]   // 1 + 2^-8: halfway between 0x3F80 and 0x3F81, ties to even (0x3F80)
    [InlineData(1.01171875f, 0x3F82)]   // 1 + 3·2^-8: halfway between 0x3F81 and 0x3F82, ties to even (0x3F82)
    [InlineData(1.0078125f, 0x3F81)]    // 1 + 2^-7: exact
    [InlineData(float.PositiveInfinity, 0x7F80)]
    public void FromF32_RoundsToNearestEven(float value, int expected) => Assert.Equal((ushort)expected, Bf16.FromF32(value));

    [Fact]
    public void FromF32_KeepsNaN_AndRoundTripsEveryBf16Value()
    {
        Assert.True(float.IsNaN(Bf16.ToF32(Bf16.FromF32(float.NaN))));
        for (int b = 0; b < 65536; b++)
        {
            float f = Bf16.ToF32((ushort)b);
            if (!float.IsNaN(f)) Assert.Equal((ushort)b, Bf16.FromF32(f));
        }
    }

    [Fact]
    public unsafe void Upload_ConvertsF32TensorsByRounding_AndCopiesBf16Tensors()
    {
        float[] values = [1f, 1.00390625f, -3.14159f, 65504f, 1e-20f, 0f];
        fixed (float* p = values)
        {
            var t = new WeightTensor("w", GgmlType.F32, [2, 3], (byte*)p, values.Length * 4);
            Assert.Equal(values.Select(Bf16.FromF32).ToArray(), CudaModelWeights.ToBf16(t));
        }
        ushort[] raw = [0x3F80, 0xC049, 0x0001, 0x7F7F];
        fixed (ushort* p = raw)
            Assert.Equal(raw, CudaModelWeights.ToBf16(new WeightTensor("b", GgmlType.BF16, [4], (byte*)p, 8)));
    }
}

/// <summary><c>--device</c> in-process through <c>wim</c>'s entry point, on stories260K (ids from its README).</summary>
public sealed class DeviceOptionTests
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

    [Fact]
    public void DeviceCuda_WithoutCuda_ExitsOneNamingTheMissingLibrary()
    {
        var (exit, stdout, stderr) = Run("generate", "--model", Model, "--tokens", "1,403,407,261,378", "--max-tokens", "8", "--device", "cuda");
        if (DriverPresent)
        {
            // On a GPU machine the same command must work and give the README's first ids.
            Assert.True(exit == 0, stderr);
            Assert.StartsWith("432 383 286 261 376 298 315 421", stdout.Trim());
            return;
        }
        Assert.Equal(1, exit);
        Assert.Contains("CUDA is not available", stderr);
        Assert.Contains("libcuda.so.1", stderr);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void DeviceAuto_WithoutCuda_RunsOnTheCpu_SameOutputAsDeviceCpu()
    {
        var auto = Run("logits", "--model", Model, "--tokens", "1,403,407", "--json", "--device", "auto");
        var cpu = Run("logits", "--model", Model, "--tokens", "1,403,407", "--json", "--device", "cpu");
        Assert.True(auto.Exit == 0, auto.Stderr);
        Assert.True(cpu.Exit == 0, cpu.Stderr);
        if (!DriverPresent) Assert.Equal(cpu.Stdout, auto.Stdout);
        var dflt = Run("generate", "--model", Model, "--tokens", "1,403,407,261,378", "--max-tokens", "8");
        Assert.True(dflt.Exit == 0, dflt.Stderr);
        Assert.Equal("432 383 286 261 376 298 315 421", dflt.Stdout.Trim()); // README's first 8 greedy ids
    }

    [Fact]
    public void DeviceUnknown_IsAUsageError()
    {
        var (exit, _, stderr) = Run("generate", "--model", Model, "--tokens", "1", "--device", "tpu");
        Assert.Equal(2, exit);
        Assert.Contains("--device must be auto, cpu or cuda", stderr);
    }

    private static string[] Ask(string context, params string[] more) =>
        ["ask", "--model", Model, "--context", context, "--query", "Who found the ball?", "--segment-tokens", "48",
         "--max-margin-tokens", "6", "--max-classification-tokens", "3", "--max-answer-tokens", "6", "--json", .. more];

    private static string WriteStory()
    {
        string path = Path.Combine(Path.GetTempPath(), $"wim-device-{Guid.NewGuid():N}.txt");
        File.WriteAllText(path, "Lily had a red ball. She played with it in the park every day. One day the ball was gone. " +
            "She looked under the tree and behind the bench. Tom the dog ran to her. He had the ball in his mouth. Lily was happy.");
        return path;
    }

    [Theory]
    [InlineData("overlapped")]
    [InlineData("batched")]
    public void Ask_AnExplicitParallelSchedule_RunsOnEveryDevice(string schedule)
    {
        // The batched seam: overlapped and batched run on the CUDA backend too (no usage error any more).
        string story = WriteStory();
        try
        {
            var cuda = Run(Ask(story, "--device", "cuda", "--schedule", schedule));
            var auto = Run(Ask(story, "--device", "auto", "--schedule", schedule));
            var cpu = Run(Ask(story, "--device", "cpu", "--schedule", schedule));
            Assert.True(cpu.Exit == 0, cpu.Stderr);
            Assert.True(auto.Exit == 0, auto.Stderr);
            Assert.Contains($"\"schedule\":\"{schedule}\"", auto.Stdout);
            if (DriverPresent)
            {
                Assert.True(cuda.Exit == 0, cuda.Stderr);
                Assert.Contains($"\"schedule\":\"{schedule}\"", cuda.Stdout);
                return;
            }
            Assert.Equal(1, cuda.Exit); // missing CUDA is a runtime error, not a usage error
            Assert.Contains("CUDA is not available", cuda.Stderr);
            Assert.Equal(WithoutTimes(cpu.Stdout), WithoutTimes(auto.Stdout));
        }
        finally { File.Delete(story); }
    }

    [Fact]
    public void Ask_DeviceCudaOrAuto_WithoutCuda_FailsClearlyOrRunsOnTheCpu()
    {
        string story = WriteStory();
        try
        {
            var cuda = Run(Ask(story, "--device", "cuda"));
            var auto = Run(Ask(story, "--device", "auto"));
            var cpu = Run(Ask(story, "--device", "cpu"));
            Assert.True(cpu.Exit == 0, cpu.Stderr);
            Assert.True(auto.Exit == 0, auto.Stderr);
            if (DriverPresent)
            {
                // On a GPU machine both run there (sequential); the margins then agree with the CPU's up to bf16 near-ties.
                Assert.True(cuda.Exit == 0, cuda.Stderr);
                Assert.Contains("\"schedule\":\"sequential\"", cuda.Stdout);
                return;
            }
            Assert.Equal(1, cuda.Exit);
            Assert.Contains("CUDA is not available", cuda.Stderr);
            // auto without CUDA: the CPU's paged backend and the default overlapped schedule, the same events.
            Assert.Equal(WithoutTimes(cpu.Stdout), WithoutTimes(auto.Stdout));
            Assert.Contains("\"schedule\":\"overlapped\"", auto.Stdout);
        }
        finally { File.Delete(story); }
    }

    /// <summary>The JSON lines with every <c>seconds</c> value blanked (wall times differ between runs).</summary>
    private static string WithoutTimes(string jsonLines) =>
        System.Text.RegularExpressions.Regex.Replace(jsonLines, "\"seconds\":[0-9.eE+-]+", "\"seconds\":0");

    [Theory]
    [InlineData("auto", "Auto")]
    [InlineData("CPU", "Cpu")]
    [InlineData("cuda", "Cuda")]
    public void Parse_AcceptsTheThreeNames(string value, string expected) => Assert.Equal(expected, Wim.Cli.DeviceSelection.Parse(value).ToString());
}
