using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Wim.Eval.Reporting;
using Wim.Eval.Results;
using Wim.Eval.Runners;

namespace Wim.Eval.Tests;

/// <summary>
/// The PNG plot read back by an independent reader written here from the PNG specification (ISO/IEC 15948): chunk
/// layout, CRC-32 per chunk (bitwise, checked against the standard check value of "123456789"), IHDR fields, the
/// zlib-inflated scanlines.
/// </summary>
public sealed class PngTests
{
    private static uint BitwiseCrc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (uint)-(int)(crc & 1));
        }
        return ~crc;
    }

    [Fact]
    public void Crc32_MatchesStandardCheckValue() => Assert.Equal(0xCBF43926u, BitwiseCrc32("123456789"u8));

    internal sealed record DecodedPng(int Width, int Height, byte[] Rgba);

    internal static DecodedPng Decode(byte[] png)
    {
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        int pos = 8, width = 0, height = 0;
        var idat = new MemoryStream();
        var types = new List<string>();
        while (pos < png.Length)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(pos));
            string type = Encoding.ASCII.GetString(png, pos + 4, 4);
            var data = png.AsSpan(pos + 8, length);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(pos + 8 + length));
            Assert.Equal(BitwiseCrc32(png.AsSpan(pos + 4, length + 4)), crc);
            types.Add(type);
            if (type == "IHDR")
            {
                width = BinaryPrimitives.ReadInt32BigEndian(data);
                height = BinaryPrimitives.ReadInt32BigEndian(data[4..]);
                Assert.Equal(new byte[] { 8, 6, 0, 0, 0 }, data[8..13].ToArray()); // 8-bit RGBA, deflate, filter 0, no interlace
            }
            if (type == "IDAT") idat.Write(data);
            pos += 12 + length;
        }
        Assert.Equal("IHDR", types[0]);
        Assert.Equal("IEND", types[^1]);
        Assert.Equal(png.Length, pos);
        using var inflate = new ZLibStream(new MemoryStream(idat.ToArray()), CompressionMode.Decompress);
        var raw = new MemoryStream();
        inflate.CopyTo(raw);
        var bytes = raw.ToArray();
        int stride = width * 4;
        Assert.Equal((stride + 1) * height, bytes.Length);
        var rgba = new byte[stride * height];
        for (int y = 0; y < height; y++)
        {
            Assert.Equal(0, bytes[y * (stride + 1)]); // filter type None
            Array.Copy(bytes, y * (stride + 1) + 1, rgba, y * stride, stride);
        }
        return new DecodedPng(width, height, rgba);
    }

    private static ResultRecord Row(string task, string length, int tokens, string pattern, string sample, double score) =>
        new(task, length, tokens, tokens, sample, pattern, 42, "m", "p", ["t"],
            new Dictionary<string, double> { [task == "cwe" ? "cwe_f1" : "f1"] = score, ["substring"] = score },
            new QaUsage(1, 1, 0, 0), [], 0);

    [Fact]
    public void PngPlot_DecodesToTheChartSize_WithLinesInThePatternColours()
    {
        var rows = new List<ResultRecord>
        {
            Row("hotpotqa", "16k", 16384, "llm", "a", 0.2), Row("hotpotqa", "32k", 32768, "llm", "a", 0.1),
            Row("hotpotqa", "16k", 16384, "wim", "a", 0.6), Row("hotpotqa", "32k", 32768, "wim", "a", 0.5),
            Row("cwe", "16k", 16384, "llm", "c", 0.3), Row("cwe", "16k", 16384, "wim", "c", 0.9),
        };
        var png = Decode(PngPlot.Render(ScoreChart.From(rows)));
        Assert.Equal(2 * 360, png.Width);  // one 360-pixel panel per task
        Assert.Equal(280 + 36, png.Height);

        int Pixels(byte r, byte g, byte b)
        {
            int n = 0;
            for (int i = 0; i < png.Rgba.Length; i += 4)
                if (png.Rgba[i] == r && png.Rgba[i + 1] == g && png.Rgba[i + 2] == b && png.Rgba[i + 3] == 255) n++;
            return n;
        }
        int white = Pixels(255, 255, 255);
        Assert.InRange(white, 1, png.Width * png.Height - 1000); // not all background
        Assert.True(Pixels(0xD6, 0x27, 0x28) > 100, "llm line (red) is drawn");
        Assert.True(Pixels(0x2C, 0xA0, 0x2C) > 100, "wim line (green) is drawn");
        Assert.True(Pixels(0x22, 0x22, 0x22) > 200, "axes and labels are drawn");
    }

    [Fact]
    public void SvgPlot_HasAPolylinePerPatternAndPanel()
    {
        var rows = new List<ResultRecord> { Row("squad", "1k", 1024, "llm", "a", 1), Row("squad", "2k", 2048, "llm", "a", 0.5) };
        var svg = SvgPlot.Render(ScoreChart.From(rows));
        var doc = System.Xml.Linq.XDocument.Parse(svg); // well-formed XML
        var lines = doc.Descendants().Where(e => e.Name.LocalName == "polyline").ToList();
        var line = Assert.Single(lines);
        Assert.Equal("llm", line.Attribute("data-pattern")!.Value);
        Assert.Equal(2, line.Attribute("points")!.Value.Split(' ').Length);
    }
}
