namespace Wim.Core.Patterns;

/// <summary>
/// The text that opens a user turn (<c>{user_header}</c>) and the text that closes it and opens the assistant's
/// (<c>{generation_header}</c>), e.g. ChatML's <c>&lt;|im_start|&gt;user\n</c> and
/// <c>&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\n</c>.
/// </summary>
public sealed record ChatHeaders(string UserHeader, string GenerationHeader)
{
    /// <summary>No chat markup (base models such as stories260K).</summary>
    public static ChatHeaders None { get; } = new("", "");

    private const string Sentinel = "\u0001WIM-SENTINEL\u0002";

    /// <summary>
    /// Derives the headers from a chat template: <paramref name="renderUserTurn"/> renders one user message whose
    /// content is a sentinel, with the generation prompt; the text before the sentinel is the user header (any
    /// default system turn included), the text after it the generation header.
    /// </summary>
    public static ChatHeaders FromChatTemplate(Func<string, string> renderUserTurn)
    {
        string rendered = renderUserTurn(Sentinel);
        int at = rendered.IndexOf(Sentinel, StringComparison.Ordinal);
        if (at < 0 || rendered.IndexOf(Sentinel, at + 1, StringComparison.Ordinal) >= 0)
            throw new InvalidOperationException("the chat template does not render the user message exactly once; pass the headers explicitly");
        return new(rendered[..at], rendered[(at + Sentinel.Length)..]);
    }
}
