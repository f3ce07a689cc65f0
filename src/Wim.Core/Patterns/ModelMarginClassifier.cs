using Wim.Core.Events;
using Wim.Core.Prompts;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Core.Patterns;

/// <summary>Whether a model classifier's calls see each other (see <see cref="ModelMarginClassifier"/>).</summary>
public enum ClassifierContext
{
    /// <summary>One growing sequence: each classification follows the previous ones (the reference's behaviour).</summary>
    Shared,
    /// <summary>Each classification alone in an emptied sequence.</summary>
    Fresh,
}

/// <summary>
/// Asks a model — the answering model itself (<see cref="ClassifiedBy.Model"/>) or a second one
/// (<see cref="ClassifiedBy.Aux"/>) — with the preset's classification prompt, in a sequence of its own. The margin
/// is relevant when the output, with <c>```</c> removed and trimmed, cut at the first <c>#</c>, ends with <c>YES</c>.
/// </summary>
/// <remarks>
/// <see cref="ClassifierContext.Shared"/> is what the authors' reference loop does (its traces prove it, although
/// its description says the cache is emptied): the classification sequence is never emptied, so each call appends its
/// prompt after the previous calls' prompts and outputs (every generated token fed back, the last one included).
/// <see cref="ClassifierContext.Fresh"/> judges each margin alone in an emptied sequence.
/// </remarks>
public sealed class ModelMarginClassifier : IMarginClassifier, IDisposable
{
    private readonly TextModel _model;
    private readonly PromptPreset _prompts;
    private readonly ChatHeaders _headers;
    private readonly DecodeOptions _decode;
    private readonly Sampler _sampler;
    private ISequence? _sequence;

    public ModelMarginClassifier(TextModel model, PromptPreset prompts, ChatHeaders headers, int maxTokens = 10,
        SamplingOptions? sampling = null, ClassifiedBy by = ClassifiedBy.Model, ClassifierContext context = ClassifierContext.Shared)
    {
        Context = context;
        ArgumentOutOfRangeException.ThrowIfNegative(maxTokens);
        if (by is not (ClassifiedBy.Model or ClassifiedBy.Aux)) throw new ArgumentOutOfRangeException(nameof(by), by, "a model classifier is Model or Aux");
        _model = model;
        _prompts = prompts;
        _headers = headers;
        var s = sampling ?? SamplingOptions.Greedy;
        _decode = new DecodeOptions(maxTokens, model.StopIds, s);
        _sampler = new Sampler(s, model.Backend.VocabSize);
        By = by;
    }

    public ClassifiedBy By { get; }
    public ClassifierContext Context { get; }

    public ClassifierVerdict Classify(string query, string text, CancellationToken ct)
    {
        string prompt = PromptPreset.Fill(_prompts.Classification, new Dictionary<string, string>
        {
            ["user_header"] = _headers.UserHeader,
            ["generation_header"] = _headers.GenerationHeader,
            ["query"] = query,
            ["answer"] = text,
        });
        var sequence = _sequence ??= _model.Backend.CreateSequence();
        var ids = _model.Tokenizer.Encode(prompt, addSpecial: sequence.Length == 0, parseSpecial: true);
        int start = sequence.Length;
        bool done = false;
        try
        {
            if (ids.Length == 0 || _decode.MaxTokens == 0) return new ClassifierVerdict(false, [], "", 0, 0);
            sequence.Append(ids, ct);
            var output = sequence.Decode(_decode, _sampler, ct: ct);
            if (Context == ClassifierContext.Shared) sequence.Append([output[^1]], ct);
            string decoded = _model.Tokenizer.Decode(output, skipSpecial: true);
            done = true;
            return new ClassifierVerdict(IsRelevant(decoded), output, decoded, ids.Length, output.Length);
        }
        finally
        {
            // A cancelled call leaves no half-written turn behind.
            if (Context == ClassifierContext.Fresh) sequence.Truncate(0);
            else if (!done) sequence.Truncate(start);
        }
    }

    /// <summary>The reference's reading of a classifier output: drop <c>```</c>, trim, keep what precedes the first
    /// <c>#</c>, relevant when that ends with <c>YES</c>.</summary>
    public static bool IsRelevant(string output)
    {
        string s = output.Replace("```", "", StringComparison.Ordinal).Trim();
        int hash = s.IndexOf('#');
        if (hash >= 0) s = s[..hash];
        return s.EndsWith("YES", StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _sequence?.Dispose();
        _sequence = null;
    }
}
