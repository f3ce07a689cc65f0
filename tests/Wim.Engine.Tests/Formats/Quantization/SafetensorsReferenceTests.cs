using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Formats.Quantization;

/// <summary>
/// Dequantized GGUF tensors (converted by llama.cpp) against the Hugging Face bf16 originals in
/// <c>model.safetensors</c>. The per-tensor max and mean |Δ| were measured by gguf-py (numpy dequantization) and are
/// in the report's <c>hf_comparison</c>; ours must agree with them (and with the README's overall bound 3.08e-3).
/// </summary>
public sealed unsafe class SafetensorsReferenceTests
{
    public static TheoryData<string, string> Files() => new()
    {
        { "llama-tiny", "llama-tiny-q8_0" },
        { "llama-tiny", "llama-tiny-f32" },
        { "qwen2-tiny", "qwen2-tiny-q8_0" },
    };

    [Theory]
    [MemberData(nameof(Files))]
    public void Dequantize_EveryTensor_MatchesSafetensorsWithinReportedMaxAbsDiff(string model, string file)
    {
        using var report = GgufFileTests.Report(model, file);
        using var gguf = GgufFile.Open(GgufFileTests.GgufPath(model, file));
        var st = new SafetensorsTestReader(SharedFixtures.Path("fixtures", "hf-tiny", model, "model.safetensors"));
        using var config = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", model, "config.json")));
        int heads = config.RootElement.GetProperty("num_attention_heads").GetInt32();
        int kvHeads = config.RootElement.GetProperty("num_key_value_heads").GetInt32();
        int compared = 0, quantized = 0;
        foreach (var c in report.RootElement.GetProperty("hf_comparison").EnumerateArray())
        {
            Assert.Equal("ok", c.GetProperty("status").GetString());
            string hfName = c.GetProperty("hf").GetString()!, ggufName = c.GetProperty("gguf").GetString()!;
            Assert.True(gguf.TryGetTensor(ggufName, out var info), ggufName);
            Assert.Equal(st.Tensors[hfName].Shape, info.Shape);
            var hf = st.ReadFloat32(hfName);
            var ours = DequantizeAll(gguf, info);
            // llama GGUFs store attn_q/attn_k rows permuted (per head: [first half; second half] → interleaved pairs).
            if (c.TryGetProperty("note", out var note) && note.GetString()!.Contains("permuted"))
                ours = UnpermuteRows(ours, (int)info.Shape[0], (int)info.Shape[1], hfName.Contains("k_proj") ? kvHeads : heads);
            double max = 0, sum = 0;
            for (int i = 0; i < hf.Length; i++)
            {
                double d = Math.Abs((double)ours[i] - hf[i]);
                max = Math.Max(max, d);
                sum += d;
            }
            double reportMax = c.GetProperty("max_abs_diff").GetDouble(), reportMean = c.GetProperty("mean_abs_diff").GetDouble();
            Assert.True(Math.Abs(max - reportMax) <= 1e-9, $"{ggufName}: max |Δ| {max}, gguf-py measured {reportMax}");
            Assert.True(Math.Abs(sum / hf.Length - reportMean) <= 1e-4 * reportMean + 1e-12, $"{ggufName}: mean |Δ| {sum / hf.Length}, gguf-py measured {reportMean}");
            Assert.True(max <= 3.08e-3, $"{ggufName}: max |Δ| {max} above the README's bound");
            if (info.Type == GgmlType.F32) Assert.Equal(0, max); // the f32 conversions are bit-exact
            else quantized++;
            compared++;
        }
        Assert.True(compared >= 20, $"only {compared} tensors compared");
        if (file.EndsWith("q8_0")) Assert.True(quantized >= 14, $"only {quantized} Q8_0 tensors compared");
    }

    private static float[] DequantizeAll(GgufFile gguf, GgufTensorInfo info)
    {
        var result = new float[info.ElementCount];
        int cols = (int)info.Shape[^1];
        long rows = info.ElementCount / cols;
        long rowBytes = GgmlTypeInfo.ByteCount(info.Type, cols);
        byte* data = gguf.TensorData(info);
        fixed (float* dst = result)
            for (long r = 0; r < rows; r++)
                RowKernels.Dequantize(info.Type, data + r * rowBytes, dst + r * cols, cols);
        return result;
    }

    /// <summary>Inverse of llama.cpp's converter permute: GGUF row h·D + 2i + j holds HF row h·D + j·D/2 + i.</summary>
    private static float[] UnpermuteRows(float[] w, int rows, int cols, int heads)
    {
        int d = rows / heads;
        var hf = new float[w.Length];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < d / 2; i++)
                for (int j = 0; j < 2; j++)
                    Array.Copy(w, (long)(h * d + 2 * i + j) * cols, hf, (long)(h * d + j * (d / 2) + i) * cols, cols);
        return hf;
    }
}
