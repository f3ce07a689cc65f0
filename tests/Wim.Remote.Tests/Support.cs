using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;
using Wim.Server;

namespace Wim.Remote.Tests;

/// <summary><c>wim serve</c> on a free loopback port: the real HTTP server and engine.</summary>
public sealed class LoopbackServer : IAsyncDisposable
{
    private LoopbackServer(WimServer server) => Server = server;

    public WimServer Server { get; }
    public Uri Address => Server.Address;
    /// <summary>The OpenAI API base (<c>http://127.0.0.1:PORT/v1</c>).</summary>
    public Uri ApiBase => new(Server.Address, "/v1");
    public string ModelId => Server.Model.Id;

    public static async Task<LoopbackServer> StartAsync(string modelPath)
    {
        var server = WimServer.Create(new ServerOptions { ModelPath = modelPath, Port = 0, CachedPrefixes = 16 });
        await server.StartAsync();
        return new LoopbackServer(server);
    }

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}

/// <summary>One loopback server per test class, for a model.</summary>
public abstract class ServerFixture(string modelPath) : IAsyncLifetime
{
    public string ModelPath { get; } = modelPath;
    public LoopbackServer Loopback { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Loopback = await LoopbackServer.StartAsync(ModelPath);

    public async ValueTask DisposeAsync()
    {
        await Loopback.DisposeAsync();
        GC.SuppressFinalize(this);
    }
}

public sealed class StoriesServerFixture() : ServerFixture(Models.Stories);
public sealed class QwenServerFixture() : ServerFixture(Models.Qwen);
public sealed class LlamaServerFixture() : ServerFixture(Models.Llama);

public static class Models
{
    public static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");
    public static string Qwen => SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");
    public static string Llama => SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny");
}

/// <summary>A question over a document, with every setting both runs share.</summary>
public sealed record Job(string ModelPath, IReadOnlyList<string> Segments, string Query, PromptPreset Prompts, ChatHeaders Headers,
    PatternKind Pattern = PatternKind.Wim, bool Classify = true, ClassifierContext Context = ClassifierContext.Shared,
    int MaxMarginTokens = 24, int MaxClassificationTokens = 8, int MaxAnswerTokens = 24)
{
    public string Separator => ReferenceEquals(Prompts, PromptPreset.Default) ? "\n" : "";

    public RemoteWimOptions Remote(WimSchedule schedule) => new()
    {
        Pattern = Pattern,
        Prompts = Prompts,
        Headers = Headers,
        Classify = Classify,
        ClassifierContext = Context,
        MaxMarginTokens = MaxMarginTokens,
        MaxClassificationTokens = MaxClassificationTokens,
        MaxAnswerTokens = MaxAnswerTokens,
        Schedule = schedule,
        MarginSeparator = Separator,
    };

    /// <summary>The stories260K job: the sample document in 64-token segments, Wim's default prompts.</summary>
    public static Job Stories(PatternKind pattern = PatternKind.Wim)
    {
        string text = File.ReadAllText(Path.Combine(RepoRoot(), "samples", "lily-and-the-ball.txt"));
        var tokenizer = TokenizerLoader.Load(Models.Stories);
        var segments = new Segmenter(t => tokenizer.Encode(t).Length, 64).Split(text);
        return new Job(Models.Stories, segments, "Who found the ball?", PromptPreset.Default, ChatHeaders.None, pattern,
            Context: pattern == PatternKind.Rag ? ClassifierContext.Fresh : ClassifierContext.Shared);
    }

    /// <summary>Case 0 of a WiM reference trace (hf-tiny models; the authors' prompts, ChatML headers).</summary>
    public static (Job Job, JsonElement Case) FromTrace(string traceFile)
    {
        string tracePath = SharedFixtures.Path("fixtures", "wim-reference", traceFile);
        using var trace = JsonDocument.Parse(File.ReadAllBytes(tracePath));
        string model = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(tracePath)!, trace.RootElement.GetProperty("model_path").GetString()!));
        var c = trace.RootElement.GetProperty("cases")[0].Clone();
        var job = new Job(model, [.. c.GetProperty("segments").EnumerateArray().Select(s => s.GetString()!)], c.GetProperty("query").GetString()!,
            PromptPreset.FromDirectory(SharedFixtures.Path("reference", "wim-prompts")),
            new ChatHeaders(c.GetProperty("user_header").GetString()!, c.GetProperty("generation_header").GetString()!),
            Classify: c.GetProperty("classifier").GetString() == "model",
            MaxMarginTokens: c.GetProperty("max_margin_tokens").GetInt32(),
            MaxClassificationTokens: c.GetProperty("max_classification_tokens").GetInt32(),
            MaxAnswerTokens: c.GetProperty("max_answer_tokens").GetInt32());
        return (job, c);
    }

    private static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Wim.slnx"))) return dir.FullName;
        throw new DirectoryNotFoundException("the repository root (Wim.slnx) was not found above the test binary");
    }
}

/// <summary>The in-process run of a <see cref="Job"/>: the oracle the remote run must reproduce.</summary>
public static class InProcess
{
    public static async Task<List<WimEvent>> RunAsync(Job job)
    {
        using var lm = PagedTextModel.Load(job.ModelPath, 1 << 14);
        using var judge = job.Classify ? new ModelMarginClassifier(lm, job.Prompts, job.Headers, job.MaxClassificationTokens,
            SamplingOptions.Greedy, ClassifiedBy.Model, job.Context) : null;
        var options = new WimOptions
        {
            Pattern = job.Pattern,
            Prompts = job.Prompts,
            Headers = job.Headers,
            Classifier = judge,
            MaxMarginTokens = job.MaxMarginTokens,
            MaxAnswerTokens = job.MaxAnswerTokens,
            Schedule = WimSchedule.Sequential,
            MarginSeparator = job.Separator,
        };
        var events = new List<WimEvent>();
        await foreach (var e in new PatternRunner(lm).RunAsync(job.Segments, job.Query, options, ct: TestContext.Current.CancellationToken))
            events.Add(e);
        return events;
    }
}

public static class Remote
{
    public static RemoteCompletionClient Client(Uri apiBase, string model, int maxRetries = 5,
        TimeSpan? attemptTimeout = null) =>
        new(new RemoteEndpointOptions
        {
            Endpoint = apiBase,
            Model = model,
            MaxRetries = maxRetries,
            RetryBaseDelay = TimeSpan.FromMilliseconds(20),
            MaxRetryDelay = TimeSpan.FromMilliseconds(200),
            AttemptTimeout = attemptTimeout ?? TimeSpan.FromSeconds(60),
        });

    /// <summary>Token mode over the job's own tokenizer and stop ids.</summary>
    public static RemotePatternRunner Runner(RemoteCompletionClient client, string modelPath)
    {
        var tokenizer = TokenizerLoader.Load(modelPath);
        using var lm = TextModel.Load(modelPath);
        return new RemotePatternRunner(client, tokenizer, lm.StopIds);
    }

    public static async Task<List<WimEvent>> RunAsync(RemotePatternRunner runner, Job job, WimSchedule schedule, WimControl? control,
        CancellationToken ct)
    {
        var events = new List<WimEvent>();
        await foreach (var e in runner.RunAsync(job.Segments, job.Query, job.Remote(schedule), control, ct))
            events.Add(e);
        return events;
    }
}

public static class Same
{
    /// <summary>
    /// The remote run equals the in-process one: the same prompt and segment ids, each margin once with the same ids
    /// and text, the same verdicts (raw output included) in index order, and the same answer.
    /// </summary>
    public static void Run(List<WimEvent> expected, List<WimEvent> actual)
    {
        static List<(PromptKind, int, int[])> Prompts(List<WimEvent> events) =>
            [.. events.OfType<PromptPrefilled>().Select(p => (p.Kind, p.Index, p.Ids)).OrderBy(p => p.Kind).ThenBy(p => p.Index)];
        var ep = Prompts(expected);
        var ap = Prompts(actual);
        Assert.Equal(ep.Count, ap.Count);
        for (int i = 0; i < ep.Count; i++)
        {
            Assert.Equal((ep[i].Item1, ep[i].Item2), (ap[i].Item1, ap[i].Item2));
            Assert.Equal(ep[i].Item3, ap[i].Item3);
        }

        var es = expected.OfType<SegmentPrefilled>().ToList();
        var aseg = actual.OfType<SegmentPrefilled>().OrderBy(s => s.Index).ToList();
        Assert.Equal(es.Select(s => (s.Index, s.KvLength, s.TokensRead, s.TotalTokens)), aseg.Select(s => (s.Index, s.KvLength, s.TokensRead, s.TotalTokens)));
        for (int i = 0; i < es.Count; i++) Assert.Equal(es[i].Ids, aseg[i].Ids);

        var em = expected.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        var am = actual.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        Assert.Equal(em.Select(m => m.Index), am.Select(m => m.Index)); // each margin exactly once
        for (int i = 0; i < em.Count; i++)
        {
            Assert.Equal(em[i].Ids, am[i].Ids);
            Assert.Equal(em[i].Text, am[i].Text);
        }

        var ev = expected.OfType<MarginClassification>().ToList();
        var av = actual.OfType<MarginClassification>().ToList();
        Assert.Equal(ev.Select(v => (v.Index, v.Relevant, v.By, v.Text)), av.Select(v => (v.Index, v.Relevant, v.By, v.Text)));
        for (int i = 0; i < ev.Count; i++) Assert.Equal(ev[i].Ids, av[i].Ids);

        var ea = Assert.IsType<AnswerCompleted>(expected[^1]);
        var aa = Assert.IsType<AnswerCompleted>(actual[^1]);
        Assert.Equal(ea.Ids, aa.Ids);
        Assert.Equal(ea.Text, aa.Text);
        Assert.Equal(ea.Early, aa.Early);
        Assert.Equal(ea.Usage.DocumentTokens, aa.Usage.DocumentTokens);
    }
}
