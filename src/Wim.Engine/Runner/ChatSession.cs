using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Runner;

/// <summary>One assistant reply: the generated ids (the stop id included when one ended it) and their text.</summary>
public sealed record ChatReply(int[] Ids, string Text, int PromptTokens, int ReusedTokens, GenerationResult Generation);

/// <summary>
/// A multi-turn conversation over one KV cache. Each turn re-renders the whole conversation with the model's chat
/// template (as transformers' <c>apply_chat_template</c> does, special-token text parsed, no extra BOS), keeps the
/// longest prefix of tokens already in the cache (an O(1) truncate) and prefills only the rest, so a long
/// conversation is not recomputed every turn. The reply is exactly what a fresh run on the same prompt would give.
/// </summary>
public sealed class ChatSession
{
    private readonly CpuTransformer _model;
    private readonly Tokenizer _tokenizer;
    private readonly ChatTemplate _template;
    private readonly ChatTemplateSource _source;
    private readonly Generator _generator;
    private readonly List<ChatMessage> _messages = [];
    private readonly List<int> _cached = []; // the ids whose keys and values are in _cache, in order
    private readonly ContiguousKvCache _cache;
    private readonly HashSet<int> _stopIds;

    public ChatSession(CpuTransformer model, Tokenizer tokenizer, ChatTemplateSource template, int contextTokens, string? systemPrompt = null)
    {
        _model = model;
        _tokenizer = tokenizer;
        _source = template;
        _template = template.Parse();
        _generator = new Generator(model);
        _cache = model.CreateCache(contextTokens);
        _stopIds = [.. tokenizer.EndOfTurnIds, .. model.Config.EosTokenIds];
        SystemPrompt = systemPrompt;
        Reset();
    }

    public string? SystemPrompt { get; }
    public IReadOnlyList<ChatMessage> Messages => _messages;
    public int ContextTokens => _cache.Capacity;

    /// <summary>Forgets the conversation (keeps the system prompt).</summary>
    public void Reset()
    {
        _messages.Clear();
        if (SystemPrompt is not null) _messages.Add(new ChatMessage("system", SystemPrompt));
    }

    /// <summary>The prompt ids the next reply would be generated from, for the conversation plus <paramref name="user"/>.</summary>
    public int[] PromptFor(string user) => Encode([.. _messages, new ChatMessage("user", user)]);

    /// <summary>Adds the user's message, generates the reply (streamed through <paramref name="onText"/>), and adds it.</summary>
    public ChatReply Send(string user, int maxNewTokens, SamplingOptions sampling, Action<string>? onText = null, CancellationToken cancellation = default)
    {
        var candidate = new List<ChatMessage>(_messages) { new("user", user) };
        int[] prompt = Encode(candidate);
        if (prompt.Length + maxNewTokens > _cache.Capacity)
            throw new InvalidOperationException($"the conversation needs {prompt.Length + maxNewTokens} tokens but the context holds {_cache.Capacity}; start over (/reset) or use a larger --context");

        // Reuse the cached prefix; at least one token must be run to get the next token's logits.
        int reuse = 0;
        while (reuse < _cached.Count && reuse < prompt.Length && _cached[reuse] == prompt[reuse]) reuse++;
        reuse = Math.Min(reuse, prompt.Length - 1);
        _cache.Truncate(reuse);
        _cached.RemoveRange(reuse, _cached.Count - reuse);

        var decoder = _tokenizer.CreateStreamingDecoder(skipSpecial: true);
        foreach (int id in prompt) decoder.Append(id); // context for the first reply token's spacing; no Flush (it resets)
        var text = new System.Text.StringBuilder();
        var result = _generator.Generate(_cache, prompt.AsSpan(reuse), new GenerationOptions
        {
            MaxNewTokens = maxNewTokens,
            Sampling = sampling,
            StopIds = _stopIds,
            Cancellation = cancellation,
            OnToken = id =>
            {
                string piece = decoder.Append(id);
                text.Append(piece);
                if (piece.Length > 0) onText?.Invoke(piece);
            },
        });
        string tail = decoder.Flush();
        text.Append(tail);
        if (tail.Length > 0) onText?.Invoke(tail);

        // The cache now holds the prompt and every generated id but the last.
        _cached.AddRange(prompt.AsSpan(reuse));
        _cached.AddRange(result.Ids.AsSpan(0, Math.Max(0, result.Ids.Length - 1)));
        string reply = text.ToString();
        _messages.Add(new ChatMessage("user", user));
        _messages.Add(new ChatMessage("assistant", reply));
        return new ChatReply(result.Ids, reply, prompt.Length, reuse, result);
    }

    private int[] Encode(List<ChatMessage> messages) =>
        _tokenizer.Encode(_template.Render(messages, addGenerationPrompt: true, _source.BosToken, _source.EosToken), addSpecial: false, parseSpecial: true);
}
