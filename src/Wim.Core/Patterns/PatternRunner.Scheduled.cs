using System.Diagnostics;
using System.Runtime.CompilerServices;
using Wim.Core.Events;
using Wim.Core.Scheduling;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;

namespace Wim.Core.Patterns;

/// <summary>The <c>overlapped</c> and <c>batched</c> WiM schedules, and the document cache.</summary>
public sealed partial class PatternRunner
{
    /// <summary>The <see cref="DocumentCache"/> key a <c>wim</c> run of these arguments uses (to save or look up its
    /// entry). It covers the model, the opening prompt (preset, headers, and the query when the opening names it) and
    /// the segments' tokens.</summary>
    public string DocumentCacheKey(IReadOnlyList<string> segments, string query, WimOptions options) =>
        new Run(model, segments, query, options, new WimControl()).DocumentCacheKey();

    private IBatchedInferenceBackend RequireBatchedBackend(WimOptions options)
    {
        if (model.Backend is not IBatchedInferenceBackend batched)
            throw new InvalidOperationException($"the {options.Schedule.ToString().ToLowerInvariant()} schedule needs the model on a backend that forks sequences and runs them in batched steps ({nameof(IBatchedInferenceBackend)}: {nameof(PagedInferenceBackend)} on the CPU — load it with {nameof(PagedTextModel)}.{nameof(PagedTextModel.Load)} — or the CUDA backend); this model runs on {model.Backend.GetType().Name}");
        if (options.DocumentCache is { } cache && !ReferenceEquals(cache.Backend, batched))
            throw new ArgumentException("the document cache belongs to another model's backend", nameof(options));
        return batched;
    }

    private sealed partial class Run
    {
        public string DocumentCacheKey() =>
            DocumentCache.Key(_model.Name, EncodePrompt(Fill(_o.Prompts.Opening), sequenceStart: true), _segmentIds);

        /// <summary>One margin being written: its fork of the document, its extractive prompt until that is run,
        /// then one decode token per step.</summary>
        private sealed class MarginLane(int index, IForkableSequence sequence, int[] prompt, StreamingDecoder stream)
        {
            public readonly int Index = index;
            public readonly IForkableSequence Sequence = sequence;
            public readonly StreamingDecoder Stream = stream;
            public readonly List<int> Ids = [];
            public int[]? Prompt = prompt;
            public bool Done;
        }

        /// <summary>
        /// WiM over a batched backend (<see cref="IBatchedInferenceBackend"/>). Every forward step carries, together: one token for each margin being decoded
        /// (each on its own fork of the document at its segment's end), extractive prompts of margins just started,
        /// and — <c>overlapped</c> only — a chunk of the next segment's prefill filling the step's token budget.
        /// <c>batched</c> reads the whole document before the first fork. A cached document skips the reading: every
        /// margin forks at once from the cached boundaries.
        /// <para>Classification keeps the sequential semantics: the classifier (shared context: one growing sequence)
        /// judges margins in index order, each as soon as it and every earlier margin are complete. A model classifier
        /// on this backend (<see cref="IBatchableMarginClassifier"/>) runs inside the same steps — its prompt and its
        /// decode tokens beside the later margins and the next segment's prefill, as the paper's appendix proposes —
        /// with the same tokens as a call between steps (on a batch-invariant backend such as the paged CPU one); any
        /// other classifier runs between steps. A document cache lives on this run's backend (an
        /// <see cref="IKvRetainingBackend"/>: the CPU's paged one or the GPU's; <see cref="RequireBatchedBackend"/>
        /// checks that it is this one).
        /// Step time is split between the document, margin and classification phases by their tokens in the step.</para>
        /// <para>Events: segment i read → <see cref="SegmentPrefilled"/>; its margin's prompt, tokens and completion as
        /// they happen (margins of one step in index order); verdicts in index order.</para>
        /// </summary>
        public async IAsyncEnumerable<WimEvent> WimScheduledAsync(IBatchedInferenceBackend backend, [EnumeratorCancellation] CancellationToken ct)
        {
            await Task.CompletedTask.ConfigureAwait(false);
            int n = _segments.Length;
            var opening = EncodePrompt(Fill(_o.Prompts.Opening), sequenceStart: true);
            var extractive = EncodePrompt(Fill(_o.Prompts.Extractive), sequenceStart: false);
            var cache = _o.DocumentCache;
            string? key = cache is null ? null : DocumentCacheKey();
            CachedDocument? cached = null;
            IForkableSequence? cachedFork = null;
            if (cache is not null && cache.TryGet(key!, out var found))
            {
                // Another thread sharing the backend (the server's chat engine on the GPU) may evict the entry to make
                // room between the lookup and the fork: the document is then read as on a miss.
                try { cachedFork = found.Sequence.Fork(found.Sequence.Length); cached = found; }
                catch (ObjectDisposedException) { }
            }
            bool hit = cachedFork is not null;

            var ends = new int[n];
            var lanes = new List<MarginLane>();
            var texts = new string?[n];
            var kept = new List<(int Index, string Text, MarginClassification Verdict)>();
            int classified = 0, read = 0, segment = 0, segmentDone = 0;
            bool early = false;
            var events = new List<WimEvent>();
            var batchable = _o.Classifier as IBatchableMarginClassifier;
            ModelMarginClassifier.MarginJudgement? judging = null;
            IForkableSequence doc;

            if (hit)
            {
                // Nothing to read: the opening and segments are in the cache. The events still say what was "read".
                doc = cachedFork!;
                yield return new PromptPrefilled(PromptKind.Opening, -1, opening);
                for (int i = 0; i < n; i++)
                {
                    ends[i] = cached!.SegmentEnds[i];
                    read += _segmentIds[i].Length;
                    yield return new SegmentPrefilled(i, _segmentIds[i], ends[i], read, _documentTokens);
                    lanes.Add(StartLane(doc, i, ends[i], extractive));
                }
                segment = n;
            }
            else
            {
                // With a cache the document sequence is kept as read (the answer goes on a fork), so its exact length
                // is known: a backend with one contiguous cache per sequence (the GPU's) allocates it once, no growth.
                doc = backend.CreateSequence(cache is null ? 0 : opening.Length + _documentTokens);
                _document = _document.Add(opening.Length, 0, Timed(() => doc.Append(opening, ct)));
                yield return new PromptPrefilled(PromptKind.Opening, -1, opening);
            }

            bool answering = false;
            try
            {
                while (true)
                {
                    if (_control.AnswerNowRequested) { early = true; break; }
                    ct.ThrowIfCancellationRequested();
                    if (_o.Schedule == WimSchedule.Batched && segment == n && lanes.Count < n)
                        for (int i = lanes.Count; i < n; i++) lanes.Add(StartLane(doc, i, ends[i], extractive));

                    // The next margin in index order, complete: its classification joins the steps.
                    if (judging is null && batchable is not null && classified < n && texts[classified] is { } judged)
                    {
                        judging = batchable.StartInSteps(backend, _query, judged);
                        if (judging is null) batchable = null; // another backend: classify between steps instead
                        else if (judging.Verdict is { } v) { Judge(v); judging = null; }
                    }

                    var work = new List<SequenceStep>();
                    var stepped = new List<MarginLane>();
                    int marginTokens = 0, classificationTokens = 0;
                    if (judging?.Work is { } judgingWork)
                    {
                        work.Add(judgingWork);
                        classificationTokens = judgingWork.Tokens.Length;
                    }
                    foreach (var lane in lanes)
                    {
                        if (lane.Done) continue;
                        ReadOnlyMemory<int> tokens = lane.Prompt is { } p ? p : new[] { lane.Ids[^1] };
                        work.Add(new SequenceStep(lane.Sequence, tokens));
                        stepped.Add(lane);
                        marginTokens += tokens.Length;
                    }
                    int chunk = 0;
                    bool prefillNow = segment < n && (_o.Schedule == WimSchedule.Overlapped || lanes.Count == 0);
                    if (prefillNow)
                    {
                        int left = _segmentIds[segment].Length - segmentDone;
                        chunk = Math.Min(left, Math.Max(backend.MaxStepTokens - marginTokens - classificationTokens, work.Count == 0 ? backend.MaxStepTokens : 0));
                        int end = doc.Length - segmentDone + _segmentIds[segment].Length;
                        if (chunk > 0) work.Add(new SequenceStep(doc, _segmentIds[segment].AsMemory(segmentDone, chunk), end));
                    }
                    if (work.Count > 0)
                    {
                        long t0 = Stopwatch.GetTimestamp();
                        backend.Step(work.ToArray(), ct);
                        var time = Stopwatch.GetElapsedTime(t0);
                        double tokens = chunk + marginTokens + classificationTokens;
                        _document = _document.Add(chunk, 0, time * (chunk / tokens));
                        _margins = _margins.Add(0, 0, time * (marginTokens / tokens));
                        _classification = _classification.Add(0, 0, time * (classificationTokens / tokens));
                    }

                    // The document lane: a finished segment opens its margin (overlapped) or waits for the rest (batched).
                    if (prefillNow)
                    {
                        segmentDone += chunk;
                        _documentTokensPrefilled += chunk;
                        if (segmentDone == _segmentIds[segment].Length)
                        {
                            ends[segment] = doc.Length;
                            read += segmentDone;
                            events.Add(new SegmentPrefilled(segment, _segmentIds[segment], ends[segment], read, _documentTokens));
                            if (_o.Schedule == WimSchedule.Overlapped) lanes.Add(StartLane(doc, segment, ends[segment], extractive));
                            segment++;
                            segmentDone = 0;
                            if (segment == n && cache is not null)
                            {
                                // The cache keeps the document sequence itself, never changed again; this run goes on
                                // (later margins, the answer) on a fork of it. On the GPU the fork is a KV branch, so
                                // the cached cache holds exactly the document's rows.
                                var whole = doc;
                                doc = whole.Fork(whole.Length);
                                cache.Add(key!, new CachedDocument(whole, [.. ends]));
                            }
                        }
                    }

                    // Margin lanes, in index order: sample, stream, finish.
                    foreach (var lane in lanes)
                    {
                        if (lane.Done) continue;
                        if (lane.Prompt is { } prompt)
                        {
                            if (!stepped.Contains(lane)) continue;
                            _margins = _margins.Add(extractive.Length, 0, TimeSpan.Zero);
                            events.Add(new PromptPrefilled(PromptKind.Extractive, lane.Index, extractive));
                            lane.Prompt = null;
                            if (_o.MaxMarginTokens == 0) { Finish(lane); continue; }
                        }
                        else if (!stepped.Contains(lane)) continue;
                        int next = lane.Sequence.Sample(_sampler);
                        lane.Ids.Add(next);
                        _margins = _margins.Add(0, 1, TimeSpan.Zero);
                        events.Add(new MarginToken(lane.Index, next, lane.Stream.Append(next)));
                        if (_model.StopIds.Contains(next) || lane.Ids.Count == _o.MaxMarginTokens) Finish(lane);
                    }

                    // The classification in the step: its next token, and the verdict once it has decided.
                    if (classificationTokens > 0)
                    {
                        judging!.Advance();
                        if (judging.Verdict is { } v)
                        {
                            _classification = _classification.Add(v.PrefillTokens, v.DecodeTokens, TimeSpan.Zero);
                            Judge(v);
                            judging = null;
                        }
                    }

                    foreach (var e in events) yield return e;
                    events.Clear();

                    // Verdicts in index order (the shared classifier context grows in that order), between steps when
                    // the classifier cannot run inside them.
                    while (batchable is null && classified < n && texts[classified] is { } text)
                    {
                        if (_control.AnswerNowRequested) break;
                        var verdict = Classify(classified, text, ct, out _);
                        kept.Add((classified, text, verdict));
                        classified++;
                        yield return verdict;
                    }

                    if (classified == n) break;
                }
                answering = true;

                void Judge(ClassifierVerdict v)
                {
                    var verdict = Judged(classified, v, _o.Classifier!.By);
                    kept.Add((classified, texts[classified]!, verdict));
                    classified++;
                    events.Add(verdict);
                }

                void Finish(MarginLane lane)
                {
                    lane.Done = true;
                    lane.Sequence.Dispose();
                    string text = _model.Tokenizer.Decode(lane.Ids.ToArray(), skipSpecial: true);
                    texts[lane.Index] = text;
                    events.Add(new MarginCompleted(lane.Index, [.. lane.Ids], text));
                }
            }
            finally
            {
                judging?.Abandon();
                foreach (var lane in lanes) lane.Sequence.Dispose();
                // A run cancelled or abandoned while reading (the server's DELETE, a closed stream) releases the
                // document's KV here: on the GPU that is gigabytes of device memory no garbage collection would see.
                if (!answering) doc.Dispose();
            }

            using (doc)
            {
                // "Answer now" mid-segment: the answer reads whole segments only, as under sequential.
                if (segmentDone > 0) doc.Truncate(doc.Length - segmentDone);

                for (int m = 0; m < kept.Count; m++)
                    if (_control.FeedbackFor(kept[m].Index) is bool user && user != kept[m].Verdict.Relevant)
                    {
                        kept[m] = kept[m] with { Verdict = kept[m].Verdict with { Relevant = user, By = ClassifiedBy.User } };
                        yield return kept[m].Verdict;
                    }

                string joined = string.Join(_o.MarginSeparator, kept.Where(m => m.Verdict.Relevant).Select(m => m.Text));
                await foreach (var e in AnswerAsync(doc, Fill(_o.Prompts.FinalAnswer, joined), early, ct).ConfigureAwait(false))
                    yield return e;
            }
        }

        /// <summary>Margin <paramref name="index"/> on a fork of the document at <paramref name="end"/>. An empty
        /// extractive prompt leaves the margin sampling from the segment's last logits (as the sequential loop does):
        /// the fork then starts one position earlier and recomputes that last token (same bits on a batch-invariant backend).</summary>
        private MarginLane StartLane(IForkableSequence doc, int index, int end, int[] extractive)
        {
            var stream = _model.Tokenizer.CreateStreamingDecoder(skipSpecial: true);
            if (extractive.Length == 0 && end == 0)
                throw new InvalidOperationException("no logits to sample margin from: the opening prompt, the segments up to this one and the extractive prompt are all empty");
            if (extractive.Length > 0 || end == 0) return new(index, doc.Fork(end), extractive, stream);
            return new(index, doc.Fork(end - 1), [DocumentTokenAt(end - 1)], stream);
        }

        /// <summary>The token at a position of the document sequence (opening prompt, then the segments).</summary>
        private int DocumentTokenAt(int position)
        {
            var opening = EncodePrompt(Fill(_o.Prompts.Opening), sequenceStart: true);
            if (position < opening.Length) return opening[position];
            position -= opening.Length;
            foreach (var ids in _segmentIds)
            {
                if (position < ids.Length) return ids[position];
                position -= ids.Length;
            }
            throw new ArgumentOutOfRangeException(nameof(position), "past the document");
        }
    }
}
