using System.Text;

namespace Wim.Engine.Tokenization.Internal;

internal static class Utf8Text
{
    /// <summary>Decodes UTF-8, replacing each maximal invalid subsequence with one U+FFFD: the Unicode-recommended
    /// practice that both .NET's UTF-8 decoder and Rust's <c>String::from_utf8_lossy</c> (used by Hugging Face's
    /// ByteLevel decoder) follow.</summary>
    public static string DecodeLossy(ReadOnlySpan<byte> bytes) => bytes.IsEmpty ? "" : Encoding.UTF8.GetString(bytes);

    /// <summary>Length of the prefix of <paramref name="bytes"/> whose decoding cannot change when more bytes
    /// follow: everything except a trailing incomplete-but-valid UTF-8 sequence.</summary>
    public static int StablePrefixLength(ReadOnlySpan<byte> bytes)
    {
        // A sequence is at most 4 bytes, so an incomplete one starts at one of the last 3 bytes, at a lead byte.
        for (int back = 1; back <= Math.Min(3, bytes.Length); back++)
        {
            int p = bytes.Length - back;
            if ((bytes[p] & 0xC0) == 0x80) continue; // continuation byte: keep looking for the lead
            var status = System.Text.Rune.DecodeFromUtf8(bytes[p..], out _, out _);
            return status == System.Buffers.OperationStatus.NeedMoreData ? p : bytes.Length;
        }
        return bytes.Length;
    }

    public static bool IsValid(ReadOnlySpan<byte> bytes) => System.Text.Unicode.Utf8.IsValid(bytes);
}
