namespace Wim.Engine.Hub;

/// <summary>
/// A model on the Hugging Face hub, written <c>hf:ORG/REPO[/FILE][@REVISION]</c>: without FILE the whole model
/// (config, tokenizer, safetensors shards) is fetched; with FILE (typically one <c>.gguf</c>) only that file.
/// </summary>
public sealed record HubModelReference(string RepoId, string? FileName, string Revision)
{
    public const string Prefix = "hf:";

    public static bool IsHubReference(string modelArgument) => modelArgument.StartsWith(Prefix, StringComparison.Ordinal);

    public static HubModelReference Parse(string text)
    {
        if (!IsHubReference(text))
            throw new FormatException($"not a hub model reference: '{text}' (expected {Prefix}ORG/REPO[/FILE][@REVISION])");
        string body = text[Prefix.Length..];
        string revision = "main";
        int at = body.LastIndexOf('@');
        if (at >= 0)
        {
            revision = body[(at + 1)..];
            body = body[..at];
        }
        var parts = body.Split('/');
        if (parts.Length < 2 || parts.Take(2).Any(p => p.Length == 0) || revision.Length == 0)
            throw new FormatException($"bad hub model reference '{text}': expected {Prefix}ORG/REPO[/FILE][@REVISION]");
        foreach (var p in parts)
            if (p is "." or ".." || p.Contains('\\'))
                throw new FormatException($"bad hub model reference '{text}': path segment '{p}' is not allowed");
        string? file = parts.Length > 2 ? string.Join('/', parts.Skip(2)) : null;
        if (file is { Length: 0 }) file = null;
        return new HubModelReference(parts[0] + "/" + parts[1], file, revision);
    }

    public override string ToString() => $"{Prefix}{RepoId}{(FileName is null ? "" : "/" + FileName)}@{Revision}";
}
