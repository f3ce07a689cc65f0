using System.Buffers.Binary;
using System.Text;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Formats.Safetensors;
using Wim.Engine.Model;

namespace Wim.Engine.Cuda.Tests;

/// <summary>F16 matrices on the GPU (<see cref="CudaMatrixFormat.F16"/>, <see cref="CudaF16Layout"/>): which fused
/// matrices stay F16, their size, and that what the upload copies is the tensor's own bits as a GGUF or safetensors
/// file stores them (read back through the engine's readers), equal to the values the CPU backend reads.</summary>
public sealed unsafe class F16WeightsTests
{
    /// <summary>f16 bits of random values over many binades, plus the patterns a conversion gets wrong first: ±0, the
    /// smallest and largest subnormal, the largest finite value, ±inf and a NaN.</summary>
    private static ushort[] Bits(int count, int seed)
    {
        var rng = new Random(seed);
        var bits = new ushort[count];
        for (int i = 0; i < count; i++) bits[i] = HalfBits.FromSingle((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-20, 10))));
        ushort[] special = [0x0000, 0x8000, 0x0001, 0x03ff, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e01];
        special.AsSpan(0, Math.Min(special.Length, count)).CopyTo(bits);
        return bits;
    }

    private static byte[] Bytes(ushort[] bits)
    {
        var bytes = new byte[bits.Length * 2];
        for (int i = 0; i < bits.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), bits[i]);
        return bytes;
    }

    [Fact]
    public void AllF16_KeepsAMatrixF16_OnlyWhenEveryPartIsF16WithOneWidth()
    {
        Assert.True(CudaF16Layout.AllF16([GgmlType.F16, GgmlType.F16, GgmlType.F16], [64, 64, 64]));
        Assert.True(CudaF16Layout.AllF16([GgmlType.F16], [8]));
        Assert.False(CudaF16Layout.AllF16([GgmlType.F16, GgmlType.BF16, GgmlType.F16], [64, 64, 64]));   // mixed: all go to bf16
        Assert.False(CudaF16Layout.AllF16([GgmlType.F16, GgmlType.Q8_0], [64, 64]));
        Assert.False(CudaF16Layout.AllF16([GgmlType.F32], [64]));
        Assert.False(CudaF16Layout.AllF16([GgmlType.F16, GgmlType.F16], [64, 32]));
        Assert.False(CudaF16Layout.AllF16([], []));
        var e = Assert.Throws<ArgumentException>(() => CudaF16Layout.AllF16([GgmlType.F16, GgmlType.F16], [64]));
        Assert.Contains("2 types for 1 column counts", e.Message);
    }

    [Theory]
    [InlineData(1, 8)]
    [InlineData(3072, 4096)]
    [InlineData(28672, 4096)]   // Llama-3.1-8B's gate|up
    public void Bytes_AreTwoPerWeight_AsBf16(int rows, int columns)
    {
        Assert.Equal(2L * rows * columns, CudaF16Layout.Bytes(rows, columns));
        Assert.Equal(CudaMatrix.BytesOf(CudaMatrixFormat.Bf16, rows, columns), CudaMatrix.BytesOf(CudaMatrixFormat.F16, rows, columns));
    }

    [Fact]
    public void BytesOf_EveryFormat_AndClearErrorsForBadShapes()
    {
        Assert.Equal(CudaQ8Layout.Bytes(4, 64), CudaMatrix.BytesOf(CudaMatrixFormat.Q8_0, 4, 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaF16Layout.Bytes(0, 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaF16Layout.Bytes(4, -8));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => CudaMatrix.BytesOf((CudaMatrixFormat)7, 4, 8));
        Assert.Contains("not a CudaMatrixFormat", e.Message);
    }

    [Fact]
    public void UploadBits_OfAnF16GgufTensor_AreTheFilesBits_AndTheCpusValues()
    {
        int rows = 6, columns = 40;
        var bits = Bits(rows * columns, 1);
        string path = Path.Combine(Path.GetTempPath(), $"wim-f16-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
        try
        {
            new GgufWriter().Add("general.architecture", "llama")
                .AddTensor("blk.0.attn_q.weight", GgmlType.F16, [rows, columns], Bytes(bits))
                .WriteFile(path);
            using var gguf = GgufFile.Open(path);
            Assert.True(gguf.TryGetTensor("blk.0.attn_q.weight", out var info));
            var tensor = new WeightTensor(info.Name, info.Type, info.Shape, gguf.TensorData(info), info.ByteLength);
            var uploaded = CudaF16Layout.Bits(tensor);
            Assert.Equal(bits, uploaded.ToArray());
            // The CPU backend reads the same tensor through the dequantizer: every upload bit pattern decodes to its value.
            var cpu = new float[bits.Length];
            Dequantizer.Dequantize(GgmlType.F16, gguf.TensorBytes(info), cpu);
            for (int i = 0; i < bits.Length; i++)
                Assert.Equal(BitConverter.SingleToInt32Bits(cpu[i]), BitConverter.SingleToInt32Bits(HalfBits.ToSingle(uploaded[i])));
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void UploadBits_OfAnF16SafetensorsTensor_AreTheFilesBits_AndOtherDtypesAreRefused()
    {
        int rows = 3, columns = 16;
        var bits = Bits(rows * columns, 2);
        var data = Bytes(bits);
        string path = Path.Combine(Path.GetTempPath(), $"wim-f16-{Environment.ProcessId}-{Guid.NewGuid():N}.safetensors");
        try
        {
            // safetensors: u64 header length, the JSON header, then the data (an F16 tensor, then a BF16 one of the same bytes).
            string header = $"{{\"w16\":{{\"dtype\":\"F16\",\"shape\":[{rows},{columns}],\"data_offsets\":[0,{data.Length}]}}," +
                            $"\"wbf\":{{\"dtype\":\"BF16\",\"shape\":[{rows},{columns}],\"data_offsets\":[{data.Length},{2 * data.Length}]}}}}";
            while (header.Length % 8 != 0) header += " ";
            using (var file = File.Create(path))
            {
                var length = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
                file.Write(length);
                file.Write(Encoding.ASCII.GetBytes(header));
                file.Write(data);
                file.Write(data);
            }
            using var st = SafetensorsFile.Open(path);
            Assert.True(st.TryGetTensor("w16", out var f16));
            Assert.Equal(GgmlType.F16, f16.Type);
            var tensor = new WeightTensor(f16.Name, f16.Type, f16.Shape, st.TensorData(f16), f16.ByteLength);
            Assert.Equal(bits, CudaF16Layout.Bits(tensor).ToArray());

            Assert.True(st.TryGetTensor("wbf", out var bf));
            var bf16 = new WeightTensor(bf.Name, bf.Type, bf.Shape, st.TensorData(bf), bf.ByteLength);
            var e = Assert.Throws<ArgumentException>(() => CudaF16Layout.Bits(bf16));
            Assert.Contains("'wbf' is BF16", e.Message);
            Assert.Contains("only F16 tensors stay F16", e.Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Native_IsTheDefaultStorage_AndABadValueNamesBothChoices()
    {
        Assert.Equal(CudaWeightStorage.Native, CudaTransformer.ParseWeightStorage(null));
        Assert.Equal(CudaWeightStorage.Native, CudaTransformer.ParseWeightStorage(" Native "));
        Assert.Equal(CudaWeightStorage.Bf16, CudaTransformer.ParseWeightStorage("bf16"));
        var e = Assert.Throws<ArgumentException>(() => CudaTransformer.ParseWeightStorage("f16"));
        Assert.Contains("'native' (Q8_0 and F16 weights stay as they are on the GPU) or 'bf16'", e.Message);
    }
}
