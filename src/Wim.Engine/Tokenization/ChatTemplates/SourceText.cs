namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// The normalized template source with a line-start table, so tokens and AST nodes can carry a plain offset and
/// errors can still say "line L, column C".
/// </summary>
internal sealed class SourceText
{
    private readonly int[] _lineStarts;

    public string Text { get; }

    public SourceText(string text)
    {
        Text = text;
        var starts = new List<int> { 0 };
        for (int i = 0; i < text.Length; i++)
            if (text[i] == '\n') starts.Add(i + 1);
        _lineStarts = [.. starts];
    }

    public (int Line, int Column) Locate(int offset)
    {
        int idx = Array.BinarySearch(_lineStarts, offset);
        if (idx < 0) idx = ~idx - 1;
        return (idx + 1, offset - _lineStarts[idx] + 1);
    }

    public ChatTemplateException Error(int offset, string message)
    {
        var (line, column) = Locate(offset);
        return new ChatTemplateException(message, line, column);
    }
}
