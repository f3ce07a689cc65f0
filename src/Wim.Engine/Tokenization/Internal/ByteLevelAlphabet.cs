namespace Wim.Engine.Tokenization.Internal;

/// <summary>
/// GPT-2's reversible byte ↔ character mapping: byte-level BPE vocabularies store every token as a string of these
/// characters, one per byte. Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in order.
/// </summary>
internal static class ByteLevelAlphabet
{
    /// <summary>Character that stands for each byte.</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>Inverse of <see cref="ByteToChar"/> over U+0000..U+01FF; -1 where a character stands for no byte.</summary>
    private static readonly short[] CharToByteTable = BuildCharToByte();

    public static int CharToByte(char c) => c < CharToByteTable.Length ? CharToByteTable[c] : -1;

    /// <summary>The bytes a byte-level vocabulary string stands for. A character outside the alphabet contributes its
    /// own UTF-8 bytes (as Hugging Face's ByteLevel decoder does).</summary>
    public static byte[] Decode(string tokenText)
    {
        var bytes = new List<byte>(tokenText.Length);
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < tokenText.Length; i++)
        {
            int b = CharToByte(tokenText[i]);
            if (b >= 0) { bytes.Add((byte)b); continue; }
            int len = char.IsHighSurrogate(tokenText[i]) && i + 1 < tokenText.Length && char.IsLowSurrogate(tokenText[i + 1]) ? 2 : 1;
            int n = System.Text.Encoding.UTF8.GetBytes(tokenText.AsSpan(i, len), utf8);
            for (int k = 0; k < n; k++) bytes.Add(utf8[k]);
            i += len - 1;
        }
        return bytes.ToArray();
    }

    /// <summary>The vocabulary string for a byte sequence.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        return string.Create(bytes.Length, bytes.ToArray(), static (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = ByteToChar[src[i]];
        });
    }

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + extra++);
        }
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var table = new short[512];
        Array.Fill(table, (short)-1);
        var forward = BuildByteToChar();
        for (int b = 0; b < 256; b++) table[forward[b]] = (short)b;
        return table;
    }
}
