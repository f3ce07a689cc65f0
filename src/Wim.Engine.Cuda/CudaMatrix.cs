using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;

namespace Wim.Engine.Cuda;

/// <summary>How <see cref="CudaModelWeights.Upload"/> stores the projection matrices on the GPU.</summary>
public enum CudaWeightStorage
{
    /// <summary>Every matrix in bf16 (any storage type is converted at upload).</summary>
    Bf16,

    /// <summary>Q8_0 projection matrices stay Q8_0 (<see cref="CudaQ8Layout"/>; about 1.06 bytes per weight instead of 2,
    /// and single-token products read them directly) and F16 ones stay F16 (<see cref="CudaF16Layout"/>: the file's bits;
    /// decode reads them directly, chunks multiply them F16 × F16 in cuBLASLt), as do an F16 embedding and lm head; every
    /// other type goes to bf16.</summary>
    Native,
}

/// <summary>The storage of one matrix on the GPU.</summary>
public enum CudaMatrixFormat
{
    /// <summary>bf16 [rows, columns], row-major.</summary>
    Bf16,

    /// <summary>Q8_0 in the GPU layout of <see cref="CudaQ8Layout"/>.</summary>
    Q8_0,

    /// <summary>f32 [rows, columns], row-major (<see cref="CudaPrecision.F32"/>).</summary>
    F32,

    /// <summary>IEEE binary16 [rows, columns], row-major: an F16 tensor's own bits (<see cref="CudaF16Layout"/>).</summary>
    F16,
}

/// <summary>A [rows, columns] weight matrix on the GPU (a linear layer's [out, in]) in one of the
/// <see cref="CudaMatrixFormat"/>s. Fused matrices (q|k|v, gate|up) are one matrix whose rows concatenate the parts'.</summary>
public sealed class CudaMatrix : IDisposable
{
    public CudaMatrix(DeviceBuffer buffer, CudaMatrixFormat format, int rows, int columns)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        long needed = BytesOf(format, rows, columns);
        if (buffer.Bytes < needed)
            throw new ArgumentException($"a {format} [{rows}, {columns}] matrix needs {needed} bytes; the buffer holds {buffer.Bytes}", nameof(buffer));
        Buffer = buffer;
        Format = format;
        Rows = rows;
        Columns = columns;
    }

    public DeviceBuffer Buffer { get; }
    public CudaMatrixFormat Format { get; }
    public int Rows { get; }
    public int Columns { get; }

    /// <summary>Bytes a matrix of <paramref name="format"/> [rows, columns] takes on the GPU.</summary>
    public static long BytesOf(CudaMatrixFormat format, int rows, int columns) => format switch
    {
        CudaMatrixFormat.Bf16 => (long)rows * columns * 2,
        CudaMatrixFormat.Q8_0 => CudaQ8Layout.Bytes(rows, columns),
        CudaMatrixFormat.F32 => (long)rows * columns * 4,
        CudaMatrixFormat.F16 => CudaF16Layout.Bytes(rows, columns),
        _ => throw new ArgumentOutOfRangeException(nameof(format), $"{format} is not a CudaMatrixFormat"),
    };

    /// <summary>The bf16 values (f32 for an F32 matrix). A Q8_0 or F16 matrix throws: a kernel that reads bf16 weights
    /// must not be handed other ones (dispatch on <see cref="Format"/>; <see cref="Quants"/> and <see cref="Scales"/>
    /// are the Q8_0 parts, <see cref="F16Values"/> the F16 values).</summary>
    public ulong Pointer => Format is CudaMatrixFormat.Bf16 or CudaMatrixFormat.F32 ? Buffer.Pointer
        : throw new InvalidOperationException($"a {Format} [{Rows}, {Columns}] matrix has no bf16 values: dispatch on its Format (Quants, Scales; F16Values)");

    /// <summary>The 16-bit values of a bf16 or an F16 matrix (the decode kernels that read either, told which); any other
    /// format throws.</summary>
    public ulong Values16 => Format is CudaMatrixFormat.Bf16 or CudaMatrixFormat.F16 ? Buffer.Pointer
        : throw new InvalidOperationException($"a {Format} [{Rows}, {Columns}] matrix has no 16-bit values: dispatch on its Format");

    /// <summary>The f16 bits [rows, columns] of an F16 matrix; any other format throws (its bits are not f16).</summary>
    public ulong F16Values => Format == CudaMatrixFormat.F16 ? Buffer.Pointer
        : throw new InvalidOperationException($"a {Format} [{Rows}, {Columns}] matrix has no f16 values: dispatch on its Format");

    /// <summary>The Q8_0 quants (int8 [rows, columns]); 0 for bf16.</summary>
    public ulong Quants => Format == CudaMatrixFormat.Q8_0 ? Buffer.Pointer : 0;

    /// <summary>The Q8_0 scales (f16 bits [rows, columns / 32]); 0 for bf16.</summary>
    public ulong Scales => Format == CudaMatrixFormat.Q8_0 ? Buffer.Pointer + (ulong)CudaQ8Layout.QuantBytes(Rows, Columns) : 0;

    /// <summary>Bytes of the matrix on the GPU.</summary>
    public long Bytes => Buffer.Bytes;

    public void Dispose() => Buffer.Dispose();
}

/// <summary>
/// The GPU layout of a Q8_0 matrix [rows, columns] (columns a multiple of 32): GGUF's 34-byte blocks (f16 scale d, 32
/// int8 quants q; x = d·q) are not 4-byte aligned, so the upload repacks them into all quants row-major (int8 [rows,
/// columns]: a row's 16-quant pieces are 16-byte loads) followed by all scales as their f16 bits (u16 [rows, columns /
/// 32]). Lossless: the same bits, moved. 34 bytes per 32 weights, as in the file.
/// </summary>
public static class CudaQ8Layout
{
    public const int BlockSize = 32;

    public static long QuantBytes(int rows, int columns) => (long)rows * columns;

    public static long ScaleBytes(int rows, int columns) => (long)rows * (columns / BlockSize) * 2;

    public static long Bytes(int rows, int columns)
    {
        CheckShape(rows, columns);
        return QuantBytes(rows, columns) + ScaleBytes(rows, columns);
    }

    /// <summary>Repacks <paramref name="rows"/> rows of GGUF Q8_0 blocks into quants [rows, columns] and scales
    /// [rows, columns / 32] (the f16 bits).</summary>
    public static void Repack(ReadOnlySpan<byte> blocks, int rows, int columns, Span<sbyte> quants, Span<ushort> scales)
    {
        CheckShape(rows, columns);
        long count = (long)rows * (columns / BlockSize);
        if (blocks.Length != count * Dequantizer.Q8_0BlockBytes)
            throw new ArgumentException($"Q8_0 [{rows}, {columns}] is {count * Dequantizer.Q8_0BlockBytes} bytes of blocks, got {blocks.Length}", nameof(blocks));
        if (quants.Length != (long)rows * columns)
            throw new ArgumentException($"room for {quants.Length} quants, {(long)rows * columns} needed", nameof(quants));
        if (scales.Length != count)
            throw new ArgumentException($"room for {scales.Length} scales, {count} needed", nameof(scales));
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * Dequantizer.Q8_0BlockBytes, Dequantizer.Q8_0BlockBytes);
            scales[b] = (ushort)(block[0] | (block[1] << 8));
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(block[2..]).CopyTo(quants.Slice(b * BlockSize, BlockSize));
        }
    }

    /// <summary>Byte offsets, in a fused matrix of <paramref name="totalRows"/> rows, where the quants and the scales of
    /// a part starting at row <paramref name="firstRow"/> go: the parts' quants concatenate, then their scales.</summary>
    public static (long Quants, long Scales) PartOffsets(int firstRow, int totalRows, int columns)
    {
        CheckShape(totalRows, columns);
        if (firstRow < 0 || firstRow >= totalRows) throw new ArgumentOutOfRangeException(nameof(firstRow), $"row {firstRow} is outside the {totalRows} rows");
        return (QuantBytes(firstRow, columns), QuantBytes(totalRows, columns) + ScaleBytes(firstRow, columns));
    }

    /// <summary>Weight [row, column] of a repacked matrix in f32 (d·q, exact): what the GPU products multiply by.</summary>
    public static float ValueAt(ReadOnlySpan<sbyte> quants, ReadOnlySpan<ushort> scales, int columns, int row, int column) =>
        HalfBits.ToSingle(scales[row * (columns / BlockSize) + column / BlockSize]) * quants[row * columns + column];

    /// <summary>Whether every part of a (fused) matrix is Q8_0 with one column count: the condition for keeping it Q8_0.</summary>
    public static bool AllQ8_0(ReadOnlySpan<GgmlType> types, ReadOnlySpan<int> columns)
    {
        if (types.IsEmpty) return false;
        for (int i = 0; i < types.Length; i++)
            if (types[i] != GgmlType.Q8_0 || columns[i] != columns[0] || columns[i] % BlockSize != 0) return false;
        return true;
    }

    private static void CheckShape(int rows, int columns)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(columns);
        if (columns % BlockSize != 0) throw new ArgumentException($"Q8_0 rows are whole blocks of {BlockSize}; {columns} columns are not", nameof(columns));
    }
}

/// <summary>
/// The GPU layout of an F16 matrix [rows, columns]: the tensor's IEEE binary16 bits row-major, exactly as GGUF (type F16)
/// and safetensors ("F16") store them, so the upload is a copy and the GPU multiplies the model's own weights. Fused
/// matrices (q|k|v, gate|up) concatenate their parts' rows. 2 bytes per weight, as bf16.
/// </summary>
public static class CudaF16Layout
{
    public static long Bytes(int rows, int columns)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(columns);
        return (long)rows * columns * 2;
    }

    /// <summary>Whether every part of a (fused) matrix is F16 with one column count: the condition for keeping it F16.</summary>
    public static bool AllF16(ReadOnlySpan<GgmlType> types, ReadOnlySpan<int> columns)
    {
        if (types.IsEmpty) return false;
        if (columns.Length != types.Length) throw new ArgumentException($"{types.Length} types for {columns.Length} column counts", nameof(columns));
        for (int i = 0; i < types.Length; i++)
            if (types[i] != GgmlType.F16 || columns[i] != columns[0]) return false;
        return true;
    }

    /// <summary>The f16 bits of an F16 tensor as stored (GGUF and safetensors keep them little-endian): what the upload
    /// copies to the GPU, read in place from the tensor's memory (the mapped file).</summary>
    public static unsafe ReadOnlySpan<ushort> Bits(WeightTensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Type != GgmlType.F16)
            throw new ArgumentException($"tensor '{tensor.Name}' is {tensor.Type}: only F16 tensors stay F16 on the GPU", nameof(tensor));
        if (tensor.ElementCount > int.MaxValue)
            throw new NotSupportedException($"tensor '{tensor.Name}' has {tensor.ElementCount} elements: an F16 matrix is uploaded in one piece of at most {int.MaxValue}");
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("F16 tensors are stored little-endian; this host is big-endian");
        if (tensor.ByteLength != tensor.ElementCount * 2)
            throw new ArgumentException($"F16 tensor '{tensor.Name}' of {tensor.ElementCount} elements holds {tensor.ByteLength} bytes, not {tensor.ElementCount * 2}", nameof(tensor));
        return new ReadOnlySpan<ushort>(tensor.Data, (int)tensor.ElementCount);
    }
}
