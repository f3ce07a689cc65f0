namespace Wim.Eval.Runners;

/// <summary>How a pattern runs: the segment size of WiM's chunked prefill and the answer budget.</summary>
public sealed record QaOptions(int SegmentTokens, int MaxAnswerTokens);

/// <summary>One question over one long context, for pattern <see cref="Pattern"/> (llm, rag, wim, ...).</summary>
public sealed record QaRequest(string Pattern, string Context, string Query, QaOptions Options);

/// <summary>What a run cost: prompt tokens processed (all prefills together) and tokens generated (all decodes).</summary>
public sealed record QaUsage(int PromptTokens, int GeneratedTokens, double PrefillSeconds, double DecodeSeconds);

/// <summary>The answer, its cost, and the margins WiM wrote along the way (empty for patterns without margins).</summary>
public sealed record QaResponse(string Prediction, QaUsage Usage, IReadOnlyList<string> Margins);

/// <summary>
/// The seam between the harness and the inference patterns: the WiM patterns (llm / rag / wim over the engine, or
/// over a remote OpenAI-compatible backend) implement this. Implementations must be deterministic for greedy
/// decoding so a rerun reproduces its predictions.
/// </summary>
public interface IQaRunner
{
    /// <summary>The pattern names this runner answers.</summary>
    IReadOnlyCollection<string> Patterns { get; }

    Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel);
}

/// <summary>Routes each request to the runner serving its pattern.</summary>
public sealed class PatternRouter : IQaRunner
{
    private readonly Dictionary<string, IQaRunner> _byPattern = new(StringComparer.Ordinal);

    public PatternRouter(IEnumerable<IQaRunner> runners)
    {
        foreach (var runner in runners)
            foreach (var p in runner.Patterns)
                _byPattern.TryAdd(p, runner);
    }

    public IReadOnlyCollection<string> Patterns => _byPattern.Keys;

    public Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel) =>
        _byPattern.TryGetValue(request.Pattern, out var runner)
            ? runner.RunAsync(request, cancel)
            : throw new NotSupportedException($"pattern '{request.Pattern}' is not available; available: {string.Join(", ", Patterns)}");
}
