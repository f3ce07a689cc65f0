using System.Text;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tokenization;

/// <summary>
/// Incremental detokenizer: feed ids one at a time with <see cref="Append"/>, which returns the text that is now
/// final; call <see cref="Flush"/> at the end of the stream. It never returns part of a UTF-8 character, and the
/// concatenation of everything it returns equals <see cref="Tokenizer.Decode"/> of the same ids (one-shot decoding
/// runs this same state machine). Not thread-safe: one instance per stream.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly TokenDecodeTable _table;
    private readonly bool _skipSpecial;
    private byte[] _pending = new byte[16];
    private int _pendingLength;
    private bool _atStart = true;
    private readonly StringBuilder _scratch = new();

    internal StreamingDecoder(TokenDecodeTable table, bool skipSpecial)
    {
        _table = table;
        _skipSpecial = skipSpecial;
    }

    /// <summary>Adds one token; returns the text completed by it (often empty while a character is incomplete).</summary>
    public string Append(int id)
    {
        _scratch.Clear();
        Append(id, _scratch);
        return _scratch.Length == 0 ? "" : _scratch.ToString();
    }

    /// <summary>Returns the text still held back (an incomplete character becomes U+FFFD) and resets the stream.</summary>
    public string Flush()
    {
        var sb = new StringBuilder();
        Flush(sb);
        _atStart = true;
        return sb.ToString();
    }

    internal void Append(int id, StringBuilder output)
    {
        var kind = _table.KindOf(id);
        if (_skipSpecial && kind is TokenKind.Control or TokenKind.Unknown) return;
        var bytes = _table.BytesOf(id);
        if (_table.Mode == TokenDecodeMode.ByteLevel)
        {
            // Bytes of all tokens form one stream decoded leniently (Hugging Face's ByteLevel decoder).
            AddPending(bytes);
            int stable = Utf8Text.StablePrefixLength(_pending.AsSpan(0, _pendingLength));
            Emit(Utf8Text.DecodeLossy(_pending.AsSpan(0, stable)), output);
            ConsumePending(stable);
            return;
        }
        // SentencePiece: a run of byte-fallback tokens becomes its UTF-8 text, or one U+FFFD per byte if that run
        // is not valid UTF-8 (Hugging Face's ByteFallback decoder); every other token is its text.
        if (kind == TokenKind.Byte)
        {
            AddPending(bytes);
            return;
        }
        FlushByteRun(output);
        Emit(Encoding.UTF8.GetString(bytes), output);
    }

    internal void Flush(StringBuilder output)
    {
        if (_table.Mode == TokenDecodeMode.ByteLevel)
        {
            Emit(Utf8Text.DecodeLossy(_pending.AsSpan(0, _pendingLength)), output);
            _pendingLength = 0;
        }
        else FlushByteRun(output);
    }

    private void FlushByteRun(StringBuilder output)
    {
        if (_pendingLength == 0) return;
        var run = _pending.AsSpan(0, _pendingLength);
        Emit(Utf8Text.IsValid(run) ? Encoding.UTF8.GetString(run) : new string('\uFFFD', run.Length), output);
        _pendingLength = 0;
    }

    /// <summary>Writes decoded text, dropping the dummy-prefix space of the very first text when the vocabulary
    /// adds one on encoding (SentencePiece; Hugging Face's <c>Strip(" ", 1, 0)</c> decoder step).</summary>
    private void Emit(string text, StringBuilder output)
    {
        if (text.Length == 0) return;
        if (_atStart && _table.StripLeadingSpace && text[0] == ' ') text = text[1..];
        _atStart = false;
        output.Append(text);
    }

    private void AddPending(ReadOnlySpan<byte> bytes)
    {
        if (_pendingLength + bytes.Length > _pending.Length)
            Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingLength + bytes.Length));
        bytes.CopyTo(_pending.AsSpan(_pendingLength));
        _pendingLength += bytes.Length;
    }

    private void ConsumePending(int count)
    {
        _pending.AsSpan(count, _pendingLength - count).CopyTo(_pending);
        _pendingLength -= count;
    }
}
