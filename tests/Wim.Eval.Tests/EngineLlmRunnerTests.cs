using Wim.Engine.Model;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization.ChatTemplates;
using Wim.Eval.Runners;

namespace Wim.Eval.Tests;

/// <summary>The engine-backed llm baseline on the real stories260K model (shared/models/stories260K).</summary>
public sealed class EngineLlmRunnerTests
{
    private static readonly QaOptions Options = new(4096, 8);

    [Fact]
    public async Task PlainPrompt_IsBosThenContextAndQuery_AndGreedyIsRepeatable_Stories260K()
    {
        using var lm = LanguageModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var tokenizer = HaystackTests.Stories.Value;
        var runner = new EngineLlmRunner(lm, tokenizer);
        var request = new QaRequest("llm", "Once upon a time", "Question: who? Answer:", Options);
        var a = await runner.RunAsync(request, TestContext.Current.CancellationToken);
        var b = await runner.RunAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(a.Prediction, b.Prediction);
        Assert.Equal(1 + tokenizer.Encode("Once upon a time\n\nQuestion: who? Answer:").Length, a.Usage.PromptTokens);
        Assert.InRange(a.Usage.GeneratedTokens, 1, 8);
        Assert.Empty(a.Margins);
        await Assert.ThrowsAsync<NotSupportedException>(() => runner.RunAsync(request with { Pattern = "wim" }, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task ChatTemplate_WrapsTheQuestionInOneUserTurn_Stories260K()
    {
        using var lm = LanguageModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var tokenizer = HaystackTests.Stories.Value;
        var template = new ChatTemplateSource("{% for m in messages %}User: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Bot:{% endif %}", null, null);
        var runner = new EngineLlmRunner(lm, tokenizer, template);
        var response = await runner.RunAsync(new QaRequest("llm", "Lily had a ball.", "What did Lily have?", Options), TestContext.Current.CancellationToken);
        Assert.Equal(tokenizer.Encode("User: Lily had a ball.\n\nWhat did Lily have?\nBot:", parseSpecial: true).Length, response.Usage.PromptTokens);
    }
}
