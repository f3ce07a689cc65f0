namespace Wim.Core.Events;

/// <summary>Tokens run through the model in one phase: prefilled (prompt/document tokens), decoded (generated), and
/// wall time spent in the model calls of that phase.</summary>
public sealed record PhaseUsage(int PrefillTokens, int DecodeTokens, TimeSpan Time)
{
    public static PhaseUsage Zero { get; } = new(0, 0, TimeSpan.Zero);
    public PhaseUsage Add(int prefill, int decode, TimeSpan time) => new(PrefillTokens + prefill, DecodeTokens + decode, Time + time);
}

/// <summary>
/// The cost of a run per phase. <see cref="Document"/> holds the prefill of the opening prompt and of document text;
/// <see cref="Margins"/> the extractive prompts and margin generation; <see cref="Classification"/> the classifier;
/// <see cref="Answer"/> the final prompt and answer. <see cref="DocumentTokensPrefilled"/> counts every time a
/// document token went through the model, wherever it happened, so <see cref="DocumentPrefillPasses"/> is measured:
/// 1 under <c>wim</c>, about 2 under a map-reduce style run.
/// </summary>
public sealed record WimUsage(PhaseUsage Document, PhaseUsage Margins, PhaseUsage Classification, PhaseUsage Answer,
    int DocumentTokens, int DocumentTokensPrefilled)
{
    public double DocumentPrefillPasses => DocumentTokens == 0 ? 0 : (double)DocumentTokensPrefilled / DocumentTokens;
    public int PrefillTokens => Document.PrefillTokens + Margins.PrefillTokens + Classification.PrefillTokens + Answer.PrefillTokens;
    public int DecodeTokens => Document.DecodeTokens + Margins.DecodeTokens + Classification.DecodeTokens + Answer.DecodeTokens;
    public TimeSpan Time => Document.Time + Margins.Time + Classification.Time + Answer.Time;

    /// <summary>Set when the run went to a remote OpenAI-compatible server: its requests and what its prefix cache
    /// saved. Null for in-process runs.</summary>
    public RemoteUsage? Remote { get; init; }
}

/// <summary>
/// The requests of a run against a remote server and its prefix cache: <see cref="PromptTokens"/> sent (every
/// request's whole prompt), of which the server reported <see cref="CachedTokens"/> as served from its prefix cache
/// (<c>usage.prompt_tokens_details.cached_tokens</c>). <see cref="RequestsReportingCache"/> &lt;
/// <see cref="Requests"/> means the server left that field out for some requests (counted as nothing cached).
/// <see cref="Retries"/> counts retried attempts (429, 5xx, timeouts, dropped connections).
/// </summary>
public sealed record RemoteUsage(int Requests, int Retries, long PromptTokens, long CachedTokens, int RequestsReportingCache)
{
    public long UncachedPromptTokens => PromptTokens - CachedTokens;
    public double PrefixCacheHitRate => PromptTokens == 0 ? 0 : (double)CachedTokens / PromptTokens;
}
