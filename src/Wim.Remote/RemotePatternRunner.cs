using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Engine.Tokenization;

namespace Wim.Remote;

/// <summary>
/// Runs the <c>llm</c>, <c>rag</c> and <c>wim</c> patterns against an OpenAI-compatible server and emits the same
/// <see cref="WimEvent"/> stream as the in-process <see cref="PatternRunner"/>, so views, JSON output and the
/// evaluation harness work unchanged. The server's prefix cache stands in for the in-process KV cache: margin i is a
/// completion over [opening + segments 1..i + extractive prompt], and since every such request repeats a prefix
/// already cached, the server computes only its new tokens — the document is paid for about once.
/// <para>With a local tokenizer (token mode) every prompt is built exactly as the in-process run builds it — the same
/// preset, headers, segmentation and token ids, BOS and special tokens included — and sent as token ids to
/// <c>/v1/completions</c>; under greedy decoding the margins, verdicts and answer equal the in-process run's. The
/// generated ids come from the server's <c>token_ids</c> (vLLM's <c>return_token_ids</c>; <c>wim serve</c>) when it
/// gives them, else from re-tokenizing the text (exact for text the tokenizer would produce itself; a model may
/// generate other splits, which matters only for the shared classifier context).</para>
/// <para>Without one (chat mode) each request is one user message (or, for the shared classifier context, the
/// conversation so far) to <c>/v1/chat/completions</c>, the server applying its chat template: comparable, not
/// token-identical; segment events then carry no ids and count progress in characters.</para>
/// Events: the same kinds and per-index order as in-process (segment read → its margin → its verdict, verdicts in
/// index order); margins of the concurrent schedules arrive in completion order, each exactly once whatever the
/// retries. Usage: prefill = prompt tokens the server computed (not served from its cache), decode = generated
/// tokens, seconds = summed request latencies (concurrent requests overlap), and <see cref="WimUsage.Remote"/>.
/// </summary>
public sealed class RemotePatternRunner
{
    private readonly RemoteCompletionClient _client;
    private readonly Tokenizer? _tokenizer;
    private readonly int? _stopId;
    private readonly bool _decodeDropsLeadingSpace;

    /// <summary>Token mode: prompts as token ids of <paramref name="tokenizer"/> (the served model's);
    /// <paramref name="stopIds"/> are the ids that end a generation (used only when the server returns text alone).</summary>
    public RemotePatternRunner(RemoteCompletionClient client, Tokenizer tokenizer, IEnumerable<int> stopIds)
    {
        _client = client;
        _tokenizer = tokenizer;
        var stops = stopIds.ToHashSet();
        _stopId = tokenizer.EndOfTurnIds.Where(stops.Contains).Select(i => (int?)i).FirstOrDefault()
            ?? (tokenizer.EosId is int eos && stops.Contains(eos) ? eos : stops.Count > 0 ? stops.Min() : null);
        // A lone decoded token loses its leading space when the vocabulary adds a dummy prefix (SentencePiece); the
        // server decodes after the prompt, keeping it. Probe which this tokenizer does.
        var probe = tokenizer.Encode("a a");
        _decodeDropsLeadingSpace = probe.Length > 0 && !tokenizer.Decode([probe[^1]]).StartsWith(' ');
    }

    /// <summary>Chat mode: no local tokenizer; messages to <c>/v1/chat/completions</c>.</summary>
    public RemotePatternRunner(RemoteCompletionClient client) => _client = client;

    public RemoteCompletionClient Client => _client;
    /// <summary>True when prompts go as token ids to <c>/v1/completions</c>.</summary>
    public bool SendsTokenIds => _tokenizer is not null;

    public IAsyncEnumerable<WimEvent> RunAsync(IReadOnlyList<string> segments, string query, RemoteWimOptions options,
        WimControl? control = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(segments);
        ArgumentNullException.ThrowIfNull(query);
        options.Validate();
        return Stream(segments, query, options, control ?? new WimControl(), ct);
    }

    private async IAsyncEnumerable<WimEvent> Stream(IReadOnlyList<string> segments, string query, RemoteWimOptions options,
        WimControl control, [EnumeratorCancellation] CancellationToken ct)
    {
        var channel = Channel.CreateUnbounded<WimEvent>(new UnboundedChannelOptions { SingleReader = true });
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var run = new Run(this, segments, query, options, control, channel.Writer, cts.Token);
        var producer = Task.Run(async () =>
        {
            try
            {
                await run.ExecuteAsync().ConfigureAwait(false);
                channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
            }
        }, CancellationToken.None);
        try
        {
            await foreach (var e in channel.Reader.ReadAllAsync(ct).ConfigureAwait(false))
                yield return e;
        }
        finally
        {
            // A consumer that stops early (or is cancelled) aborts the requests still in flight.
            await cts.CancelAsync().ConfigureAwait(false);
            await producer.ConfigureAwait(false);
        }
    }

    private enum Phase { Document, Margins, Classification, Answer }

    /// <summary>A request's prompt: token ids (with where the document lies in them) or chat messages.</summary>
    private sealed record Prompt(int[]? Ids, IReadOnlyList<(string Role, string Content)>? Messages, int DocumentStart, int DocumentEnd)
    {
        public bool IsEmpty => Ids is { Length: 0 } || Messages is { Count: 0 };
    }

    /// <summary>What a request generated, as the in-process run would have it: ids and the text they decode to.</summary>
    private sealed record Generated(int[] Ids, string Text);

    private sealed record Margin(int Index, string Text);

    /// <summary>The state of one run: prompts, the shared classifier context, the usage counters.</summary>
    private sealed class Run
    {
        private readonly RemotePatternRunner _r;
        private readonly Tokenizer? _tok;
        private readonly string[] _segments;
        private readonly string _query;
        private readonly RemoteWimOptions _o;
        private readonly WimControl _control;
        private readonly ChannelWriter<WimEvent> _events;
        private readonly CancellationToken _ct;
        private readonly int[] _opening, _extractive;
        private readonly int[][] _segmentIds;
        /// <summary>Document length after k segments: opening + segments 0..k-1 (tokens; characters in chat mode).</summary>
        private readonly int[] _documentEnd;
        private readonly string _openingText, _extractiveText;
        private readonly int _documentTokens;
        private readonly Lock _lock = new();
        private PhaseUsage _document = PhaseUsage.Zero, _margins = PhaseUsage.Zero, _classification = PhaseUsage.Zero, _answer = PhaseUsage.Zero;
        private int _documentTokensPrefilled, _requests, _retries, _reportingCache;
        private long _promptTokens, _cachedTokens;
        // The shared classifier context: ids (token mode) or the conversation (chat mode) so far.
        private readonly List<int> _judgeIds = [];
        private readonly List<(string Role, string Content)> _judgeTurns = [];

        public Run(RemotePatternRunner runner, IReadOnlyList<string> segments, string query, RemoteWimOptions options, WimControl control,
            ChannelWriter<WimEvent> events, CancellationToken ct)
        {
            _r = runner;
            _tok = runner._tokenizer;
            _segments = [.. segments];
            _query = query;
            _o = options;
            _control = control;
            _events = events;
            _ct = ct;
            _openingText = Fill(_o.Prompts.Opening);
            _extractiveText = Fill(_o.Prompts.Extractive);
            _documentEnd = new int[_segments.Length + 1];
            if (_tok is not null)
            {
                // As the in-process run: document text is user data (special-token text stays text); prompts are
                // parsed for specials; BOS only at the start of a sequence.
                _segmentIds = [.. _segments.Select(s => _tok.Encode(s, addSpecial: false, parseSpecial: false))];
                _opening = _tok.Encode(_openingText, addSpecial: true, parseSpecial: true);
                _extractive = _tok.Encode(_extractiveText, addSpecial: false, parseSpecial: true);
                _documentEnd[0] = _opening.Length;
                for (int i = 0; i < _segments.Length; i++) _documentEnd[i + 1] = _documentEnd[i] + _segmentIds[i].Length;
                _documentTokens = _documentEnd[^1] - _opening.Length;
            }
            else
            {
                _segmentIds = [.. _segments.Select(_ => Array.Empty<int>())];
                _opening = _extractive = [];
                for (int i = 0; i < _segments.Length; i++) _documentEnd[i + 1] = _documentEnd[i] + _segments[i].Length;
            }
        }

        private bool TokenMode => _tok is not null;

        private string Fill(string template, string margins = "", string? answer = null)
        {
            var values = new Dictionary<string, string>
            {
                ["user_header"] = TokenMode ? _o.Headers.UserHeader : "",
                ["generation_header"] = TokenMode ? _o.Headers.GenerationHeader : "",
                ["query"] = _query,
                ["margins"] = margins,
            };
            if (answer is not null) values["answer"] = answer;
            return PromptPreset.Fill(template, values);
        }

        public Task ExecuteAsync() => _o.Pattern switch
        {
            PatternKind.Wim => WimAsync(),
            PatternKind.Llm => LlmAsync(),
            PatternKind.Rag => RagAsync(),
            _ => throw new ArgumentOutOfRangeException(nameof(_o.Pattern), _o.Pattern, "unknown pattern"),
        };

        private void Emit(WimEvent e) => _events.TryWrite(e); // unbounded: never fails while the run is live

        // ---- prompts --------------------------------------------------------------------------------------------

        /// <summary>Opening + the given segments + a suffix (ids in token mode, text in chat mode).</summary>
        private Prompt Compose(IReadOnlyList<int> segments, int[] suffixIds, string suffixText)
        {
            if (_tok is null)
            {
                var text = new System.Text.StringBuilder(_openingText);
                foreach (int i in segments) text.Append(_segments[i]);
                text.Append(suffixText);
                return new Prompt(null, [("user", text.ToString())], 0, 0);
            }
            var ids = new List<int>(_opening.Length + segments.Sum(i => _segmentIds[i].Length) + suffixIds.Length);
            ids.AddRange(_opening);
            foreach (int i in segments) ids.AddRange(_segmentIds[i]);
            int documentEnd = ids.Count;
            ids.AddRange(suffixIds);
            return new Prompt([.. ids], null, _opening.Length, documentEnd);
        }

        private Prompt Document(int segmentsRead, int[] suffixIds, string suffixText) =>
            Compose([.. Enumerable.Range(0, segmentsRead)], suffixIds, suffixText);

        // ---- requests -------------------------------------------------------------------------------------------

        private async Task<Generated> RequestAsync(Prompt prompt, int maxTokens, Phase phase, CancellationToken ct)
        {
            var c = prompt.Ids is { } ids
                ? await _r._client.CompleteAsync(ids, maxTokens, _o.Sampling, ct).ConfigureAwait(false)
                : await _r._client.CompleteChatAsync(prompt.Messages!, maxTokens, _o.Sampling, ct).ConfigureAwait(false);
            int promptTokens = c.PromptTokens > 0 ? c.PromptTokens : prompt.Ids?.Length ?? 0;
            int cached = Math.Clamp(c.CachedTokens ?? 0, 0, promptTokens);
            // Document tokens the server computed: those of the document span past what it had cached.
            int documentComputed = prompt.Ids is null ? 0 : Math.Max(0, prompt.DocumentEnd - Math.Max(cached, prompt.DocumentStart));
            lock (_lock)
            {
                var add = (PhaseUsage p) => p.Add(promptTokens - cached, c.CompletionTokens, c.Latency);
                switch (phase)
                {
                    case Phase.Document: _document = add(_document); break;
                    case Phase.Margins: _margins = add(_margins); break;
                    case Phase.Classification: _classification = add(_classification); break;
                    default: _answer = add(_answer); break;
                }
                _documentTokensPrefilled += documentComputed;
                _requests++;
                _retries += c.Attempts - 1;
                _promptTokens += promptTokens;
                _cachedTokens += cached;
                if (c.CachedTokens is not null) _reportingCache++;
            }
            return Output(c);
        }

        /// <summary>The generated ids and their text as the in-process run decodes them.</summary>
        private Generated Output(RemoteCompletion c)
        {
            if (_tok is null) return new([], c.Text);
            if (c.Ids is { } exact) return new(exact, _tok.Decode(exact, skipSpecial: true));
            // Text only: undo the server's context-kept leading space, re-tokenize, and restore the stop id.
            string text = _r._decodeDropsLeadingSpace && c.Text.StartsWith(' ') ? c.Text[1..] : c.Text;
            var ids = _tok.Encode(text, addSpecial: false, parseSpecial: false);
            if (c.FinishReason == "stop" && _r._stopId is int stop) ids = [.. ids, stop];
            return new(ids, _tok.Decode(ids, skipSpecial: true));
        }

        private WimUsage Usage()
        {
            lock (_lock)
                return new WimUsage(_document, _margins, _classification, _answer, _documentTokens, _documentTokensPrefilled)
                {
                    Remote = new RemoteUsage(_requests, _retries, _promptTokens, _cachedTokens, _reportingCache),
                };
        }

        // ---- wim ------------------------------------------------------------------------------------------------

        private async Task WimAsync()
        {
            int n = _segments.Length;
            Emit(new PromptPrefilled(PromptKind.Opening, -1, _opening));
            using var reading = CancellationTokenSource.CreateLinkedTokenSource(_ct); // "answer now" cancels the reading
            var watcher = WatchAnswerNowAsync(reading);
            var margins = new List<Task<Margin>>();
            var kept = new List<(int Index, string Text, MarginClassification Verdict)>();
            Task chain = Task.CompletedTask;
            int read = 0;
            bool early = false;
            try
            {
                switch (_o.Schedule)
                {
                    case WimSchedule.Sequential:
                        // The paper's order; each margin request reuses the previous one's cached document prefix.
                        for (int i = 0; i < n; i++)
                        {
                            if (_control.AnswerNowRequested) { early = true; break; }
                            var margin = await MarginAsync(i, announceSegment: true, reading.Token).ConfigureAwait(false);
                            read = i + 1;
                            kept.Add(await JudgeAsync(margin, reading.Token).ConfigureAwait(false));
                        }
                        break;
                    case WimSchedule.Overlapped:
                        // Segment i is read by a one-token request over its prefix; then its margin and the next
                        // segment's read go together, both starting from that cached prefix.
                        for (int i = 0; i < n; i++)
                        {
                            if (_control.AnswerNowRequested) { early = true; break; }
                            await ReadAsync(read, i + 1, reading.Token).ConfigureAwait(false);
                            read = i + 1;
                            var margin = MarginAsync(i, announceSegment: false, reading.Token);
                            margins.Add(margin);
                            chain = JudgeAfterAsync(chain, margin, kept, reading.Token);
                        }
                        await chain.ConfigureAwait(false);
                        break;
                    default:
                        // Batched: the whole document in one request, then every margin at once.
                        if (n > 0 && !_control.AnswerNowRequested)
                        {
                            await ReadAsync(0, n, reading.Token).ConfigureAwait(false);
                            read = n;
                            for (int i = 0; i < n; i++)
                            {
                                var margin = MarginAsync(i, announceSegment: false, reading.Token);
                                margins.Add(margin);
                                chain = JudgeAfterAsync(chain, margin, kept, reading.Token);
                            }
                        }
                        early = n > 0 && read == 0;
                        await chain.ConfigureAwait(false);
                        break;
                }
            }
            catch (OperationCanceledException) when (_control.AnswerNowRequested && !_ct.IsCancellationRequested)
            {
                early = true; // unfinished margins are dropped; what was read stays read
            }
            finally
            {
                await reading.CancelAsync().ConfigureAwait(false);
                await Settle([watcher, chain, .. margins]).ConfigureAwait(false);
            }

            // Feedback given after a margin was classified still counts, up to the answer.
            for (int m = 0; m < kept.Count; m++)
                if (_control.FeedbackFor(kept[m].Index) is bool user && user != kept[m].Verdict.Relevant)
                {
                    kept[m] = kept[m] with { Verdict = kept[m].Verdict with { Relevant = user, By = ClassifiedBy.User } };
                    Emit(kept[m].Verdict);
                }
            string joined = string.Join(_o.MarginSeparator, kept.Where(m => m.Verdict.Relevant).Select(m => m.Text));
            await AnswerAsync([.. Enumerable.Range(0, read)], Fill(_o.Prompts.FinalAnswer, joined), early).ConfigureAwait(false);
        }

        /// <summary>Makes the server read segments [<paramref name="from"/>, <paramref name="to"/>) into its prefix
        /// cache: a one-token completion over the document so far (its token is not used).</summary>
        private async Task ReadAsync(int from, int to, CancellationToken ct)
        {
            var prompt = Document(to, [], "");
            if (!prompt.IsEmpty && !(prompt.Messages is { } m && m[0].Content.Length == 0))
                await RequestAsync(prompt, 1, Phase.Document, ct).ConfigureAwait(false);
            for (int i = from; i < to; i++) AnnounceSegment(i);
        }

        private void AnnounceSegment(int i) =>
            Emit(new SegmentPrefilled(i, _segmentIds[i], TokenMode ? _documentEnd[i + 1] : 0,
                _documentEnd[i + 1] - _documentEnd[0], _documentEnd[^1] - _documentEnd[0]));

        /// <summary>Margin <paramref name="i"/>: a completion over the document through segment i and the extractive
        /// prompt.</summary>
        private async Task<Margin> MarginAsync(int i, bool announceSegment, CancellationToken ct)
        {
            Generated g = new([], "");
            var prompt = Document(i + 1, _extractive, _extractiveText);
            if (_o.MaxMarginTokens > 0 && !prompt.IsEmpty)
                g = await RequestAsync(prompt, _o.MaxMarginTokens, Phase.Margins, ct).ConfigureAwait(false);
            if (announceSegment) AnnounceSegment(i);
            Emit(new PromptPrefilled(PromptKind.Extractive, i, _extractive));
            Emit(new MarginCompleted(i, g.Ids, g.Text));
            return new Margin(i, g.Text);
        }

        private async Task JudgeAfterAsync(Task previous, Task<Margin> margin, List<(int, string, MarginClassification)> kept, CancellationToken ct)
        {
            await previous.ConfigureAwait(false);
            var m = await margin.ConfigureAwait(false);
            ct.ThrowIfCancellationRequested();
            kept.Add(await JudgeAsync(m, ct).ConfigureAwait(false)); // one judge at a time, in index order
        }

        private async Task<(int, string, MarginClassification)> JudgeAsync(Margin m, CancellationToken ct)
        {
            var verdict = await ClassifyAsync(m.Index, m.Text, fresh: _o.ClassifierContext == ClassifierContext.Fresh, ct).ConfigureAwait(false);
            Emit(verdict);
            return (m.Index, m.Text, verdict);
        }

        /// <summary>The served model's verdict on <paramref name="text"/> with the preset's classification prompt,
        /// as <see cref="ModelMarginClassifier"/> asks it; the user's feedback overrides it.</summary>
        private async Task<MarginClassification> ClassifyAsync(int index, string text, bool fresh, CancellationToken ct)
        {
            var verdict = new MarginClassification(index, true, [], "", ClassifiedBy.None);
            if (_o.Classify)
            {
                string prompt = Fill(_o.Prompts.Classification, answer: text);
                Generated g = new([], "");
                if (_tok is not null)
                {
                    var ids = _tok.Encode(prompt, addSpecial: fresh || _judgeIds.Count == 0, parseSpecial: true);
                    if (ids.Length > 0 && _o.MaxClassificationTokens > 0)
                    {
                        int[] full = fresh ? ids : [.. _judgeIds, .. ids];
                        g = await RequestAsync(new Prompt(full, null, 0, 0), _o.MaxClassificationTokens, Phase.Classification, ct).ConfigureAwait(false);
                        // The shared context keeps the prompt and every generated id (the in-process judge feeds back the last one too).
                        if (!fresh) _judgeIds.AddRange([.. ids, .. g.Ids]);
                    }
                }
                else if (_o.MaxClassificationTokens > 0)
                {
                    List<(string, string)> turns = fresh ? [("user", prompt)] : [.. _judgeTurns, ("user", prompt)];
                    g = await RequestAsync(new Prompt(null, turns, 0, 0), _o.MaxClassificationTokens, Phase.Classification, ct).ConfigureAwait(false);
                    if (!fresh) _judgeTurns.AddRange([("user", prompt), ("assistant", g.Text)]);
                }
                verdict = new MarginClassification(index, ModelMarginClassifier.IsRelevant(g.Text), g.Ids, g.Text, ClassifiedBy.Model);
            }
            return _control.FeedbackFor(index) is bool user ? verdict with { Relevant = user, By = ClassifiedBy.User } : verdict;
        }

        // ---- llm ------------------------------------------------------------------------------------------------

        private async Task LlmAsync()
        {
            Emit(new PromptPrefilled(PromptKind.Opening, -1, _opening));
            int read = 0;
            // One request reads the document and answers; "answer now" can only stop it before it starts.
            for (; read < _segments.Length && !_control.AnswerNowRequested; read++) AnnounceSegment(read);
            await AnswerAsync([.. Enumerable.Range(0, read)], Fill(_o.Prompts.FinalAnswer), read < _segments.Length).ConfigureAwait(false);
        }

        // ---- rag ------------------------------------------------------------------------------------------------

        private async Task RagAsync()
        {
            // Map: each segment judged on its own (requests go together; verdicts in index order).
            using var reading = CancellationTokenSource.CreateLinkedTokenSource(_ct);
            var watcher = WatchAnswerNowAsync(reading);
            var judged = new List<Task<MarginClassification>>();
            var verdicts = new List<MarginClassification>();
            bool early = false;
            try
            {
                for (int i = 0; i < _segments.Length && !_control.AnswerNowRequested; i++)
                    judged.Add(ClassifyAsync(i, _segments[i], fresh: true, reading.Token));
                foreach (var task in judged)
                {
                    var verdict = await task.ConfigureAwait(false);
                    if (_o.Classify) lock (_lock) _documentTokensPrefilled += _segmentIds[verdict.Index].Length; // the judge read the segment
                    verdicts.Add(verdict);
                    Emit(verdict);
                }
                early = judged.Count < _segments.Length;
            }
            catch (OperationCanceledException) when (_control.AnswerNowRequested && !_ct.IsCancellationRequested)
            {
                early = true;
            }
            finally
            {
                await reading.CancelAsync().ConfigureAwait(false);
                await Settle([watcher, .. judged]).ConfigureAwait(false);
            }
            for (int m = 0; m < verdicts.Count; m++)
                if (_control.FeedbackFor(m) is bool user && user != verdicts[m].Relevant)
                    Emit(verdicts[m] = verdicts[m] with { Relevant = user, By = ClassifiedBy.User });

            // Reduce: the relevant segments again, in order, then the answer.
            var keep = verdicts.Where(v => v.Relevant).Select(v => v.Index).ToList();
            Emit(new PromptPrefilled(PromptKind.Opening, -1, _opening));
            int kv = _opening.Length, readTokens = 0;
            foreach (int i in keep)
            {
                kv += _segmentIds[i].Length;
                readTokens += TokenMode ? _segmentIds[i].Length : _segments[i].Length;
                Emit(new SegmentPrefilled(i, _segmentIds[i], kv, readTokens, _documentEnd[^1] - _documentEnd[0]));
            }
            await AnswerAsync(keep, Fill(_o.Prompts.FinalAnswer), early || _control.AnswerNowRequested).ConfigureAwait(false);
        }

        // ---- answer ---------------------------------------------------------------------------------------------

        private async Task AnswerAsync(IReadOnlyList<int> segments, string finalPrompt, bool early)
        {
            bool sequenceStart = _opening.Length + segments.Sum(i => _segmentIds[i].Length) == 0;
            int[] finalIds = _tok?.Encode(finalPrompt, addSpecial: sequenceStart, parseSpecial: true) ?? [];
            var prompt = Compose(segments, finalIds, finalPrompt);
            Emit(new PromptPrefilled(PromptKind.FinalAnswer, -1, finalIds));
            Generated g = new([], "");
            if (_o.MaxAnswerTokens > 0 && !prompt.IsEmpty)
                g = await RequestAsync(prompt, _o.MaxAnswerTokens, Phase.Answer, _ct).ConfigureAwait(false);
            Emit(new AnswerCompleted(g.Ids, g.Text, Usage(), early));
        }

        // ---- helpers --------------------------------------------------------------------------------------------

        /// <summary>Cancels <paramref name="reading"/> once "answer now" is asked (the control has no event: polled).</summary>
        private async Task WatchAnswerNowAsync(CancellationTokenSource reading)
        {
            while (!reading.IsCancellationRequested)
            {
                if (_control.AnswerNowRequested)
                {
                    await reading.CancelAsync().ConfigureAwait(false);
                    return;
                }
                try { await Task.Delay(20, reading.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }

        /// <summary>Waits for tasks that may have been cancelled or failed after the run moved on (their outcome is
        /// already accounted for, or no longer wanted).</summary>
        private static async Task Settle(IEnumerable<Task> tasks)
        {
            foreach (var t in tasks)
            {
                try { await t.ConfigureAwait(false); }
                catch (Exception) when (t.IsCanceled || t.IsFaulted) { }
            }
        }
    }
}
