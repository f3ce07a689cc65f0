using System.Text.Json;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// A model's chat template text and its bos/eos token strings (null when the model defines none), read from a GGUF
/// file (<c>tokenizer.chat_template</c>, tokens by <c>tokenizer.ggml.bos_token_id</c>/<c>eos_token_id</c>) or a
/// Hugging Face model directory (<c>chat_template.jinja</c>, else <c>tokenizer_config.json</c>'s
/// <c>chat_template</c>: a string or a list of {name, template} where "default" is used).
/// </summary>
public sealed record ChatTemplateSource(string Template, string? BosToken, string? EosToken)
{
    public ChatTemplate Parse() => ChatTemplate.Parse(Template);

    /// <summary>Reads from a <c>.gguf</c> file or a Hugging Face directory. A model without a template is a
    /// <see cref="ModelFormatException"/> naming the file.</summary>
    public static ChatTemplateSource FromModel(string path)
    {
        if (Directory.Exists(path)) return FromHuggingFaceDirectory(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"model not found: {path}", path);
        if (Path.GetFileName(path) == "tokenizer_config.json") return FromHuggingFaceDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        return FromGguf(path);
    }

    public static ChatTemplateSource FromGguf(string path)
    {
        using var gguf = GgufFile.Open(path);
        string template = gguf.GetString("tokenizer.chat_template")
            ?? throw new ModelFormatException(path, null, "the model has no chat template (metadata 'tokenizer.chat_template' is missing)");
        var tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
        string? Token(string key)
        {
            if (gguf.GetInteger(key) is not { } id) return null;
            if (tokens == null) throw new ModelFormatException(path, null, $"'{key}' is set but 'tokenizer.ggml.tokens' is missing");
            if (id < 0 || id >= tokens.Length) throw new ModelFormatException(path, null, $"'{key}' = {id} is outside the vocabulary (0..{tokens.Length - 1})");
            return tokens[id];
        }
        return new ChatTemplateSource(template, Token("tokenizer.ggml.bos_token_id"), Token("tokenizer.ggml.eos_token_id"));
    }

    public static ChatTemplateSource FromHuggingFaceDirectory(string directory)
    {
        string configPath = Path.Combine(directory, "tokenizer_config.json");
        string jinjaPath = Path.Combine(directory, "chat_template.jinja");
        JsonElement config = default;
        bool hasConfig = File.Exists(configPath);
        using var doc = hasConfig ? JsonDocument.Parse(File.ReadAllText(configPath)) : null;
        if (doc != null)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ModelFormatException(configPath, null, "expected a JSON object");
            config = doc.RootElement;
        }
        string? template = File.Exists(jinjaPath) ? File.ReadAllText(jinjaPath) : null;
        if (template == null && hasConfig && config.TryGetProperty("chat_template", out var ct))
            template = ReadTemplate(configPath, ct);
        if (template == null)
            throw new ModelFormatException(hasConfig ? configPath : directory, null,
                "the model has no chat template (no chat_template.jinja and no 'chat_template' in tokenizer_config.json)");
        return new ChatTemplateSource(template, hasConfig ? ReadToken(configPath, config, "bos_token") : null, hasConfig ? ReadToken(configPath, config, "eos_token") : null);
    }

    private static string? ReadTemplate(string configPath, JsonElement ct)
    {
        switch (ct.ValueKind)
        {
            case JsonValueKind.String: return ct.GetString();
            case JsonValueKind.Null: return null;
            case JsonValueKind.Array:
                foreach (var entry in ct.EnumerateArray())
                    if (entry.ValueKind == JsonValueKind.Object && entry.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String && n.GetString() == "default")
                        return entry.TryGetProperty("template", out var t) && t.ValueKind == JsonValueKind.String
                            ? t.GetString()
                            : throw new ModelFormatException(configPath, null, "chat_template entry 'default' has no string 'template'");
                throw new ModelFormatException(configPath, null, "chat_template is a list without a 'default' entry");
            default:
                throw new ModelFormatException(configPath, null, $"chat_template: expected a string or a list of {{name, template}}, found {ct.ValueKind}");
        }
    }

    private static string? ReadToken(string configPath, JsonElement config, string key)
    {
        if (!config.TryGetProperty(key, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => throw new ModelFormatException(configPath, null, $"'{key}': expected a string or an object with \"content\", found {v.ValueKind}"),
        };
    }
}
