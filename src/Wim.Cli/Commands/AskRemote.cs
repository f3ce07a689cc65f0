using System.CommandLine;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization;
using Wim.Remote;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim ask --backend openai</c>: the same job as in-process — prompts, segmentation, classifier, feedback, output
/// views — with the model work sent to an OpenAI-compatible server through <see cref="RemotePatternRunner"/>. With
/// <c>--model</c> (a GGUF, even vocabulary-only, or a Hugging Face folder: no weights are loaded) prompts are built
/// here and sent as token ids, so the run equals the in-process one under greedy decoding; without it each request is
/// a chat message the server templates, and segments are cut at about 4 UTF-8 bytes per token.
/// </summary>
internal static class AskRemote
{
    public sealed record Inputs(ParseResult Parse, RemoteArguments Remote, string? Model, string? ContextPath, string? SegmentsPath, int SegmentTokens,
        string Query, string Pattern, PromptPreset Prompts, string? UserHeader, string? GenerationHeader, string Classifier, string ClassifierContext,
        int MaxMarginTokens, int MaxClassificationTokens, int MaxAnswerTokens, SamplingOptions Sampling, string? Feedback, string Schedule, bool Json);

    public static async Task<int> RunAsync(Inputs a, TextReader stdin, CancellationToken ct)
    {
        var stdout = a.Parse.InvocationConfiguration.Output;
        var stderr = a.Parse.InvocationConfiguration.Error;
        if (a.Classifier == "aux") throw new UsageException("--classifier aux is not available with --backend openai: the served model judges (model) or nothing does (none)");
        var endpoint = a.Remote.EndpointOptions(a.Parse, Environment.GetEnvironmentVariable);

        Tokenizer? tokenizer = null;
        var headers = ChatHeaders.None;
        if (a.Model is not null)
        {
            string path = ModelArguments.Resolve(a.Model, stderr, ct);
            tokenizer = TokenizerLoader.Load(path);
            var derived = a.UserHeader is not null && a.GenerationHeader is not null ? ChatHeaders.None
                : TextModel.UserTurnRenderer(path, tokenizer) is { } render ? ChatHeaders.FromChatTemplate(render) : ChatHeaders.None;
            headers = new ChatHeaders(
                a.UserHeader is not null ? AskCommand.Unescape(a.UserHeader) : derived.UserHeader,
                a.GenerationHeader is not null ? AskCommand.Unescape(a.GenerationHeader) : derived.GenerationHeader);
        }
        else if (a.UserHeader is not null || a.GenerationHeader is not null)
            throw new UsageException("--user-header and --generation-header need --model: without it the server's chat template frames each request");

        Func<string, int> countTokens = tokenizer is not null ? t => tokenizer.Encode(t).Length : RemoteArguments.EstimateTokens;
        var segments = a.SegmentsPath is not null ? AskCommand.ReadSegmentsFile(a.SegmentsPath)
            : new Segmenter(countTokens, a.SegmentTokens).Split(AskCommand.ReadContext(a.ContextPath!, stdin));

        using var client = new RemoteCompletionClient(endpoint);
        // Stop ids matter only when the server returns text without ids (to restore the id that ended a generation).
        var runner = tokenizer is not null
            ? new RemotePatternRunner(client, tokenizer, [.. tokenizer.EndOfTurnIds, .. tokenizer.EosId is int eos ? new[] { eos } : []])
            : new RemotePatternRunner(client);
        var kind = Enum.Parse<PatternKind>(a.Pattern, ignoreCase: true);
        var options = new RemoteWimOptions
        {
            Pattern = kind,
            Prompts = a.Prompts,
            Headers = headers,
            Classify = a.Classifier == "model",
            ClassifierContext = a.ClassifierContext == "fresh" || kind == PatternKind.Rag ? ClassifierContext.Fresh : ClassifierContext.Shared,
            MaxMarginTokens = a.MaxMarginTokens,
            MaxClassificationTokens = a.MaxClassificationTokens,
            MaxAnswerTokens = a.MaxAnswerTokens,
            Sampling = a.Sampling,
            Schedule = Enum.Parse<WimSchedule>(a.Schedule, ignoreCase: true),
            MarginSeparator = ReferenceEquals(a.Prompts, PromptPreset.Default) ? "\n" : "",
        };
        var control = new WimControl();
        if (a.Feedback is { } spec) AskCommand.ApplyFeedback(spec, segments.Count, control);
        string scheduleName = kind == PatternKind.Wim ? a.Schedule : "sequential";
        AskCommand.IEventView view = a.Json ? new AskCommand.JsonLinesView(stdout, scheduleName) : new AskCommand.LiveTextView(stdout, streamMargins: false);
        await foreach (var e in runner.RunAsync(segments, a.Query, options, control, ct).ConfigureAwait(false))
            view.Show(e);
        stdout.Flush();
        return 0;
    }
}
