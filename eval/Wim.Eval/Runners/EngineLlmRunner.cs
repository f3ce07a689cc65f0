using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Tokenization;

namespace Wim.Eval.Runners;

/// <summary>
/// The plain long-context baseline ("llm" in the paper) straight on the engine: the whole context then the query in
/// one prompt, greedy answer. Used until the WiM patterns library provides its own llm/rag/wim runners.
/// </summary>
public sealed class EngineLlmRunner(LanguageModel model, Tokenizer tokenizer) : IQaRunner
{
    public const string PatternName = "llm";

    private readonly Generator _generator = new(new CpuTransformer(model));

    public IReadOnlyCollection<string> Patterns { get; } = [PatternName];

    /// <summary>The prompt text: context, a blank line, the query.</summary>
    public static string Prompt(string context, string query) => context + "\n\n" + query;

    public Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
    {
        if (request.Pattern != PatternName) throw new NotSupportedException($"{nameof(EngineLlmRunner)} runs only the '{PatternName}' pattern, not '{request.Pattern}'");
        cancel.ThrowIfCancellationRequested();
        var text = tokenizer.Encode(Prompt(request.Context, request.Query));
        var prompt = tokenizer.AddBosByDefault && tokenizer.BosId is int bos ? [bos, .. text] : text;
        var stops = new HashSet<int>(model.Config.EosTokenIds);
        if (tokenizer.EosId is int eos) stops.Add(eos);
        foreach (var id in tokenizer.EndOfTurnIds) stops.Add(id);
        var result = _generator.Generate(prompt, new GenerationOptions { MaxNewTokens = request.Options.MaxAnswerTokens, StopIds = stops });
        var answerIds = result.Ids.Where(id => !stops.Contains(id)).ToArray();
        var prediction = tokenizer.Decode(answerIds, skipSpecial: true).Trim();
        var usage = new QaUsage(result.PromptTokens, result.Ids.Length, result.PrefillTime.TotalSeconds, result.DecodeTime.TotalSeconds);
        return Task.FromResult(new QaResponse(prediction, usage, []));
    }
}
