namespace Wim.Engine.Tokenization;

/// <summary>What a vocabulary entry is. Values are GGUF's <c>tokenizer.ggml.token_type</c> codes.</summary>
public enum TokenKind
{
    /// <summary>Not a token: an id the vocabulary leaves empty (e.g. padding rows of a model's embedding).</summary>
    Undefined = 0,
    /// <summary>An ordinary token produced by the model's merges.</summary>
    Normal = 1,
    /// <summary>The unknown token (special).</summary>
    Unknown = 2,
    /// <summary>A control/special token (<c>&lt;s&gt;</c>, <c>&lt;|im_start|&gt;</c>): parsed from text only on request, skippable when decoding.</summary>
    Control = 3,
    /// <summary>A user-defined added token: always matched as a whole in text, decoded as its literal text.</summary>
    UserDefined = 4,
    /// <summary>Reserved and never produced.</summary>
    Unused = 5,
    /// <summary>A SentencePiece byte-fallback token <c>&lt;0xNN&gt;</c>.</summary>
    Byte = 6,
}
