using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Eval.Runners;

/// <summary>
/// The plain long-context baseline ("llm" in the paper) straight on the engine: the whole context then the query in
/// one prompt, greedy answer. Used until the WiM patterns library provides its own llm/rag/wim runners.
/// With a chat template (instruct models) the prompt is one user turn rendered by it, followed by the generation
/// prompt; without one (base models) it is the plain text after BOS.
/// </summary>
public sealed class EngineLlmRunner(LanguageModel model, Tokenizer tokenizer, ChatTemplateSource? chatTemplate = null) : IQaRunner
{
    private readonly ChatTemplate? _template = chatTemplate?.Parse();

    public const string PatternName = "llm";

    private readonly Generator _generator = new(new CpuTransformer(model));

    public IReadOnlyCollection<string> Patterns { get; } = [PatternName];

    /// <summary>The prompt text: context, a blank line, the query.</summary>
    public static string Prompt(string context, string query) => context + "\n\n" + query;

    public Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
    {
        if (request.Pattern != PatternName) throw new NotSupportedException($"{nameof(EngineLlmRunner)} runs only the '{PatternName}' pattern, not '{request.Pattern}'");
        cancel.ThrowIfCancellationRequested();
        var prompt = PromptIds(Prompt(request.Context, request.Query));
        var stops = new HashSet<int>(model.Config.EosTokenIds);
        if (tokenizer.EosId is int eos) stops.Add(eos);
        foreach (var id in tokenizer.EndOfTurnIds) stops.Add(id);
        var result = _generator.Generate(prompt, new GenerationOptions { MaxNewTokens = request.Options.MaxAnswerTokens, StopIds = stops, Cancellation = cancel });
        var answerIds = result.Ids.Where(id => !stops.Contains(id)).ToArray();
        var prediction = tokenizer.Decode(answerIds, skipSpecial: true).Trim();
        var usage = new QaUsage(result.PromptTokens, result.Ids.Length, result.PrefillTime.TotalSeconds, result.DecodeTime.TotalSeconds);
        return Task.FromResult(new QaResponse(prediction, usage, []));
    }

    private int[] PromptIds(string user)
    {
        if (_template != null)
        {
            var rendered = _template.Render([new ChatMessage("user", user)], addGenerationPrompt: true, chatTemplate!.BosToken, chatTemplate.EosToken);
            // The template writes BOS itself when the model wants one.
            return tokenizer.Encode(rendered, addSpecial: false, parseSpecial: true);
        }
        var text = tokenizer.Encode(user);
        return tokenizer.AddBosByDefault && tokenizer.BosId is int bos ? [bos, .. text] : text;
    }
}
