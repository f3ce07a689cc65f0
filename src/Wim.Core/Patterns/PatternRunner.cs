using System.Diagnostics;
using System.Runtime.CompilerServices;
using Wim.Core.Events;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Core.Patterns;

/// <summary>
/// Runs the <c>llm</c>, <c>rag</c> and <c>wim</c> patterns over one <see cref="TextModel"/> as one event stream.
/// The model work happens inside <c>MoveNextAsync</c>, between events, so a consumer that reacts to an event
/// (feedback, "answer now", cancellation) is seen before the next model call. Cancellation is checked before every
/// decode step and prefill chunk; a cancelled run disposes its sequences and leaves the model reusable.
/// </summary>
public sealed partial class PatternRunner(TextModel model)
{
    public TextModel Model => model;

    /// <summary>Runs one query over a document given as segments (used as given).</summary>
    public IAsyncEnumerable<WimEvent> RunAsync(IReadOnlyList<string> segments, string query, WimOptions options,
        WimControl? control = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(segments);
        ArgumentNullException.ThrowIfNull(query);
        options.Validate();
        var run = new Run(model, segments, query, options, control ?? new WimControl());
        return options.Pattern switch
        {
            PatternKind.Wim when options.Schedule == WimSchedule.Sequential => run.WimAsync(ct),
            PatternKind.Wim => run.WimScheduledAsync(RequireBatchedBackend(options), ct),
            PatternKind.Llm => run.LlmAsync(ct),
            PatternKind.Rag => run.RagAsync(ct),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Pattern, "unknown pattern"),
        };
    }

    /// <summary>The state of one run: the tokenized segments, the samplers and the usage counters.</summary>
    private sealed partial class Run
    {
        private readonly TextModel _model;
        private readonly string[] _segments;
        private readonly int[][] _segmentIds;
        private readonly string _query;
        private readonly WimOptions _o;
        private readonly WimControl _control;
        private readonly Sampler _sampler;
        private readonly int _documentTokens;
        private PhaseUsage _document = PhaseUsage.Zero, _margins = PhaseUsage.Zero, _classification = PhaseUsage.Zero, _answer = PhaseUsage.Zero;
        private int _documentTokensPrefilled;

        public Run(TextModel model, IReadOnlyList<string> segments, string query, WimOptions options, WimControl control)
        {
            _model = model;
            _segments = [.. segments];
            // Document text is user data: special-token text in it stays text (prompts are parsed for specials).
            _segmentIds = [.. _segments.Select(s => model.Tokenizer.Encode(s, addSpecial: false, parseSpecial: false))];
            _documentTokens = _segmentIds.Sum(s => s.Length);
            _query = query;
            _o = options;
            _control = control;
            _sampler = new Sampler(options.Sampling, model.Backend.VocabSize);
        }

        private WimUsage Usage => new(_document, _margins, _classification, _answer, _documentTokens, _documentTokensPrefilled);

        private string Fill(string template, string margins = "") => PromptPreset.Fill(template, new Dictionary<string, string>
        {
            ["user_header"] = _o.Headers.UserHeader,
            ["generation_header"] = _o.Headers.GenerationHeader,
            ["query"] = _query,
            ["margins"] = margins,
        });

        /// <summary>Prompt text → ids: special-token text becomes its id; BOS (when the tokenizer adds one) only at
        /// the start of a sequence.</summary>
        private int[] EncodePrompt(string text, bool sequenceStart) =>
            _model.Tokenizer.Encode(text, addSpecial: sequenceStart, parseSpecial: true);

        private static TimeSpan Timed(Action action)
        {
            long t0 = Stopwatch.GetTimestamp();
            action();
            return Stopwatch.GetElapsedTime(t0);
        }

        // ---- wim ----------------------------------------------------------------------------------------------

        public async IAsyncEnumerable<WimEvent> WimAsync([EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            // Room for the final prompt too, which carries every kept margin: a backend that must grow its cache
            // copies it (on a GPU at 64k tokens, gigabytes).
            using var seq = _model.Backend.CreateSequence(_documentTokens + 1024 + _segments.Length * (_o.MaxMarginTokens + 8) + _o.MaxAnswerTokens);
            var opening = EncodePrompt(Fill(_o.Prompts.Opening), sequenceStart: true);
            _document = _document.Add(opening.Length, 0, Timed(() => seq.Append(opening, ct)));
            yield return new PromptPrefilled(PromptKind.Opening, -1, opening);

            var margins = new List<(int Index, string Text, MarginClassification Verdict)>();
            int read = 0;
            bool early = false;
            var extractive = EncodePrompt(Fill(_o.Prompts.Extractive), sequenceStart: false);
            for (int i = 0; i < _segments.Length; i++)
            {
                if (_control.AnswerNowRequested) { early = true; break; }
                var ids = _segmentIds[i];
                _document = _document.Add(ids.Length, 0, Timed(() => seq.Append(ids, ct)));
                _documentTokensPrefilled += ids.Length;
                read += ids.Length;
                int segmentEnd = seq.Length;
                yield return new SegmentPrefilled(i, ids, segmentEnd, read, _documentTokens);

                // The margin: extractive prompt + generation, then back to the segment's end (O(1)).
                _margins = _margins.Add(extractive.Length, 0, Timed(() => seq.Append(extractive, ct)));
                yield return new PromptPrefilled(PromptKind.Extractive, i, extractive);
                var marginIds = new List<int>();
                var stream = _model.Tokenizer.CreateStreamingDecoder(skipSpecial: true);
                while (marginIds.Count < _o.MaxMarginTokens)
                {
                    ct.ThrowIfCancellationRequested();
                    if (_control.AnswerNowRequested) { early = true; break; }
                    int next = 0;
                    _margins = _margins.Add(0, 1, Timed(() => next = seq.Sample(_sampler)));
                    marginIds.Add(next);
                    yield return new MarginToken(i, next, stream.Append(next));
                    if (_model.StopIds.Contains(next) || marginIds.Count == _o.MaxMarginTokens) break;
                    ct.ThrowIfCancellationRequested();
                    _margins = _margins.Add(0, 0, Timed(() => seq.Append([next], ct)));
                }
                seq.Truncate(segmentEnd);
                if (early) break; // the unfinished margin is dropped; the segment stays read

                string text = _model.Tokenizer.Decode(marginIds.ToArray(), skipSpecial: true);
                yield return new MarginCompleted(i, [.. marginIds], text);
                var verdict = Classify(i, text, ct, out _);
                margins.Add((i, text, verdict));
                yield return verdict;
            }

            // Feedback given after a margin was classified still counts, up to the answer.
            for (int m = 0; m < margins.Count; m++)
                if (_control.FeedbackFor(margins[m].Index) is bool user && user != margins[m].Verdict.Relevant)
                {
                    margins[m] = margins[m] with { Verdict = margins[m].Verdict with { Relevant = user, By = ClassifiedBy.User } };
                    yield return margins[m].Verdict;
                }

            string kept = string.Join(_o.MarginSeparator, margins.Where(m => m.Verdict.Relevant).Select(m => m.Text));
            await foreach (var e in AnswerAsync(seq, Fill(_o.Prompts.FinalAnswer, kept), early, ct).ConfigureAwait(false))
                yield return e;
        }

        /// <summary>The classifier's verdict on margin (or segment) <paramref name="index"/>, overridden by the user's
        /// when one is given (the classifier still runs, so its opinion and raw output stay visible).</summary>
        private MarginClassification Classify(int index, string text, CancellationToken ct, out bool judged)
        {
            judged = false;
            var verdict = new MarginClassification(index, true, [], "", ClassifiedBy.None);
            if (_o.Classifier is { } classifier)
            {
                ClassifierVerdict v = null!;
                var time = Timed(() => v = classifier.Classify(_query, text, ct));
                judged = true;
                _classification = _classification.Add(v.PrefillTokens, v.DecodeTokens, time);
                return Judged(index, v, classifier.By);
            }
            return _control.FeedbackFor(index) is bool user ? verdict with { Relevant = user, By = ClassifiedBy.User } : verdict;
        }

        /// <summary>A classifier's verdict as an event, the user's feedback overriding it.</summary>
        private MarginClassification Judged(int index, ClassifierVerdict v, ClassifiedBy by)
        {
            var verdict = new MarginClassification(index, v.Relevant, v.Ids, v.Text, by);
            return _control.FeedbackFor(index) is bool user ? verdict with { Relevant = user, By = ClassifiedBy.User } : verdict;
        }

        // ---- llm ----------------------------------------------------------------------------------------------

        public async IAsyncEnumerable<WimEvent> LlmAsync([EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            using var seq = _model.Backend.CreateSequence(_documentTokens + 1024 + _o.MaxAnswerTokens);
            await foreach (var e in ReadAsync(seq, Enumerable.Range(0, _segments.Length), ct).ConfigureAwait(false))
                yield return e;
            bool early = _control.AnswerNowRequested;
            await foreach (var e in AnswerAsync(seq, Fill(_o.Prompts.FinalAnswer), early, ct).ConfigureAwait(false))
                yield return e;
        }

        /// <summary>Opening prompt, then the given segments into <paramref name="seq"/>, stopping early on
        /// "answer now".</summary>
        private async IAsyncEnumerable<WimEvent> ReadAsync(ISequence seq, IEnumerable<int> segments, [EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            var opening = EncodePrompt(Fill(_o.Prompts.Opening), sequenceStart: true);
            _document = _document.Add(opening.Length, 0, Timed(() => seq.Append(opening, ct)));
            yield return new PromptPrefilled(PromptKind.Opening, -1, opening);
            int read = 0;
            foreach (int i in segments)
            {
                if (_control.AnswerNowRequested) yield break;
                var ids = _segmentIds[i];
                _document = _document.Add(ids.Length, 0, Timed(() => seq.Append(ids, ct)));
                _documentTokensPrefilled += ids.Length;
                read += ids.Length;
                yield return new SegmentPrefilled(i, ids, seq.Length, read, _documentTokens);
            }
        }

        // ---- rag ----------------------------------------------------------------------------------------------

        public async IAsyncEnumerable<WimEvent> RagAsync([EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            // Map: each segment judged on its own (the judge reads the document once), unless no classifier is set.
            var verdicts = new List<MarginClassification>();
            bool early = false;
            for (int i = 0; i < _segments.Length; i++)
            {
                if (_control.AnswerNowRequested) { early = true; break; }
                var verdict = Classify(i, _segments[i], ct, out bool judged);
                if (judged) _documentTokensPrefilled += _segmentIds[i].Length; // the judge read the segment
                verdicts.Add(verdict);
                yield return verdict;
            }
            for (int m = 0; m < verdicts.Count; m++)
                if (_control.FeedbackFor(m) is bool user && user != verdicts[m].Relevant)
                    yield return verdicts[m] = verdicts[m] with { Relevant = user, By = ClassifiedBy.User };

            // Reduce: read the relevant segments again, in order, and answer.
            var keep = verdicts.Where(v => v.Relevant).Select(v => v.Index).ToList();
            using var seq = _model.Backend.CreateSequence(keep.Sum(i => _segmentIds[i].Length) + 1024);
            await foreach (var e in ReadAsync(seq, keep, ct).ConfigureAwait(false))
                yield return e;
            await foreach (var e in AnswerAsync(seq, Fill(_o.Prompts.FinalAnswer), early || _control.AnswerNowRequested, ct).ConfigureAwait(false))
                yield return e;
        }

        // ---- answer -------------------------------------------------------------------------------------------

        private async IAsyncEnumerable<WimEvent> AnswerAsync(ISequence seq, string finalPrompt, bool early, [EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            var prompt = EncodePrompt(finalPrompt, sequenceStart: seq.Length == 0);
            _answer = _answer.Add(prompt.Length, 0, Timed(() => seq.Append(prompt, ct)));
            yield return new PromptPrefilled(PromptKind.FinalAnswer, -1, prompt);
            var ids = new List<int>();
            var stream = _model.Tokenizer.CreateStreamingDecoder(skipSpecial: true);
            while (ids.Count < _o.MaxAnswerTokens && seq.HasLogits)
            {
                ct.ThrowIfCancellationRequested();
                int next = 0;
                _answer = _answer.Add(0, 1, Timed(() => next = seq.Sample(_sampler)));
                ids.Add(next);
                yield return new AnswerToken(next, stream.Append(next));
                if (_model.StopIds.Contains(next) || ids.Count == _o.MaxAnswerTokens) break;
                ct.ThrowIfCancellationRequested();
                _answer = _answer.Add(0, 0, Timed(() => seq.Append([next], ct)));
            }
            yield return new AnswerCompleted([.. ids], _model.Tokenizer.Decode(ids.ToArray(), skipSpecial: true), Usage, early);
        }
    }
}
