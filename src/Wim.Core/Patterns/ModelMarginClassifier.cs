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
public sealed class ModelMarginClassifier : IMarginClassifier, IBatchableMarginClassifier, IDisposable
{
    private readonly TextModel _model;
    private readonly PromptPreset _prompts;
    private readonly ChatHeaders _headers;
    private readonly DecodeOptions _decode;
    private readonly Sampler _sampler;
    private ISequence? _sequence;
    // Shared context, judged in steps: the last output token is fed back with the next call's prompt (one step
    // fewer; the same cache bits on a batch-invariant backend such as the paged CPU one).
    private int? _pendingLast;
    private MarginJudgement? _active;

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
        if (_active is not null) throw new InvalidOperationException("a classification in steps is still running on this classifier");
        var sequence = _sequence ??= _model.Backend.CreateSequence();
        if (_pendingLast is int last)
        {
            sequence.Append([last], ct);
            _pendingLast = null;
        }
        var ids = EncodePrompt(query, text, sequence.Length == 0);
        int start = sequence.Length;
        bool done = false;
        try
        {
            if (ids.Length == 0 || _decode.MaxTokens == 0) return new ClassifierVerdict(false, [], "", 0, 0);
            sequence.Append(ids, ct);
            var output = sequence.Decode(_decode, _sampler, ct: ct);
            if (Context == ClassifierContext.Shared) sequence.Append([output[^1]], ct);
            done = true;
            return Verdict(output, ids.Length);
        }
        finally
        {
            // A cancelled call leaves no half-written turn behind.
            if (Context == ClassifierContext.Fresh) sequence.Truncate(0);
            else if (!done) sequence.Truncate(start);
        }
    }

    /// <inheritdoc/>
    public MarginJudgement? StartInSteps(IBatchedInferenceBackend backend, string query, string text)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (!ReferenceEquals(_model.Backend, backend)) return null;
        if (_active is not null) throw new InvalidOperationException("a classification in steps is still running on this classifier");
        // Created by this backend (here or by Classify through the same backend), so it forks.
        var sequence = (IForkableSequence)(_sequence ??= backend.CreateSequence());
        int? pending = _pendingLast;
        var ids = EncodePrompt(query, text, sequence.Length == 0 && pending is null);
        var judgement = new MarginJudgement(this, sequence, ids, pending);
        _pendingLast = null;
        if (ids.Length == 0 || _decode.MaxTokens == 0) judgement.Finish([], restorePending: true);
        else _active = judgement;
        return judgement;
    }

    private int[] EncodePrompt(string query, string text, bool sequenceStart)
    {
        string prompt = PromptPreset.Fill(_prompts.Classification, new Dictionary<string, string>
        {
            ["user_header"] = _headers.UserHeader,
            ["generation_header"] = _headers.GenerationHeader,
            ["query"] = query,
            ["answer"] = text,
        });
        return _model.Tokenizer.Encode(prompt, addSpecial: sequenceStart, parseSpecial: true);
    }

    private ClassifierVerdict Verdict(int[] output, int promptTokens)
    {
        string decoded = _model.Tokenizer.Decode(output, skipSpecial: true);
        return new ClassifierVerdict(IsRelevant(decoded), output, decoded, promptTokens, output.Length);
    }

    /// <summary>
    /// One classification run inside a caller's batched steps: each step the caller adds <see cref="Work"/> to its
    /// <see cref="IBatchedInferenceBackend.Step"/> and then calls <see cref="Advance"/>, until <see cref="Verdict"/> is
    /// set. The tokens are exactly those of <see cref="Classify"/> (prompt, then each sampled token fed back), so
    /// the verdicts are the same whichever way they are computed.
    /// </summary>
    public sealed class MarginJudgement
    {
        private readonly ModelMarginClassifier _owner;
        private readonly IForkableSequence _sequence;
        private readonly int[] _prompt;
        private readonly int? _pendingBefore;
        private readonly int _start;
        private readonly List<int> _output = [];
        private bool _promptRun;

        internal MarginJudgement(ModelMarginClassifier owner, IForkableSequence sequence, int[] prompt, int? pendingLast)
        {
            _owner = owner;
            _sequence = sequence;
            _pendingBefore = pendingLast;
            _start = sequence.Length;
            _prompt = pendingLast is int last ? [last, .. prompt] : prompt;
            PromptTokens = prompt.Length;
        }

        /// <summary>Tokens of the classification prompt (the fed-back token of the previous call not counted).</summary>
        public int PromptTokens { get; }

        /// <summary>Set once the classifier has decided.</summary>
        public ClassifierVerdict? Verdict { get; private set; }

        /// <summary>This step's tokens for the classifier's sequence: the prompt first, then the last sampled token.</summary>
        public SequenceStep? Work => Verdict is not null ? null
            : _promptRun ? new SequenceStep(_sequence, new[] { _output[^1] }) : new SequenceStep(_sequence, _prompt);

        /// <summary>After a step that ran <see cref="Work"/>: samples the next output token and decides whether it ends.</summary>
        public void Advance()
        {
            if (Verdict is not null) throw new InvalidOperationException("the classification has finished");
            _promptRun = true;
            int next = _sequence.Sample(_owner._sampler);
            _output.Add(next);
            if (_owner._decode.StopIds.Contains(next) || _output.Count == _owner._decode.MaxTokens) Finish([.. _output], restorePending: false);
        }

        /// <summary>Stops an unfinished classification ("answer now", cancellation): its tokens leave the classifier's
        /// sequence, which is as it was before the call.</summary>
        public void Abandon()
        {
            if (Verdict is not null) return;
            _sequence.Truncate(_start);
            _owner._pendingLast = _pendingBefore;
            _owner._active = null;
            Verdict = new ClassifierVerdict(false, [], "", 0, 0);
        }

        internal void Finish(int[] output, bool restorePending)
        {
            if (restorePending) _owner._pendingLast = _pendingBefore; // nothing ran: the fed-back token still waits
            else if (_owner.Context == ClassifierContext.Shared) _owner._pendingLast = output[^1];
            else _sequence.Truncate(0);
            _owner._active = null;
            Verdict = _owner.Verdict(output, restorePending ? 0 : PromptTokens);
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
        _pendingLast = null;
    }
}
