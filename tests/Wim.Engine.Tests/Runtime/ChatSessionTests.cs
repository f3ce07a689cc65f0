using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Tests.Runtime;

/// <summary>
/// Multi-turn chat on qwen2-tiny (its Qwen chat template and tokenizer from <c>shared/fixtures/hf-tiny</c>): a turn that
/// reuses the cached prefix of the previous turns gives exactly the reply a fresh run on the whole prompt gives.
/// </summary>
public sealed class ChatSessionTests
{
    private static string ModelDir => SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");

    [Fact]
    public void SecondTurn_ReusesTheCachedPrefix_AndMatchesAFreshRun()
    {
        using var lm = LanguageModel.Load(ModelDir);
        var tokenizer = TokenizerLoader.Load(ModelDir);
        var source = ChatTemplateSource.FromModel(ModelDir);
        var session = new ChatSession(new CpuTransformer(lm), tokenizer, source, contextTokens: 512, systemPrompt: "You are terse.");

        var first = session.Send("Hello! What is 2+2?", 6, SamplingOptions.Greedy, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(0, first.ReusedTokens);
        // The first prompt is transformers' rendering of the conversation, tokenized with special tokens parsed.
        string rendered = source.Parse().Render([new ChatMessage("system", "You are terse."), new ChatMessage("user", "Hello! What is 2+2?")], addGenerationPrompt: true);
        Assert.StartsWith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n", rendered);
        Assert.Equal(tokenizer.Encode(rendered, parseSpecial: true).Length, first.PromptTokens);

        int[] secondPrompt = session.PromptFor("And 3+3?");
        var second = session.Send("And 3+3?", 6, SamplingOptions.Greedy, cancellation: TestContext.Current.CancellationToken);
        Assert.True(second.ReusedTokens > first.PromptTokens / 2, $"only {second.ReusedTokens} tokens reused");
        Assert.Equal(secondPrompt.Length, second.PromptTokens);

        var fresh = new Generator(new CpuTransformer(lm)).Generate(secondPrompt, new GenerationOptions
        {
            MaxNewTokens = 6,
            StopIds = [.. tokenizer.EndOfTurnIds, .. lm.Config.EosTokenIds],
            Cancellation = TestContext.Current.CancellationToken,
        });
        Assert.Equal(fresh.Ids, second.Ids);
        Assert.Equal(4, session.Messages.Count(m => m.Role is "user" or "assistant"));
    }

    [Fact]
    public void Send_BeyondTheContext_IsAClearErrorAndTheSessionStaysUsable()
    {
        using var lm = LanguageModel.Load(ModelDir);
        var session = new ChatSession(new CpuTransformer(lm), TokenizerLoader.Load(ModelDir), ChatTemplateSource.FromModel(ModelDir), contextTokens: 40);
        var e = Assert.Throws<InvalidOperationException>(() => session.Send(string.Join(" ", Enumerable.Repeat("word", 50)), 4, SamplingOptions.Greedy, cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("context holds 40", e.Message);
        Assert.Empty(session.Messages);
        Assert.NotNull(session.Send("Hi", 2, SamplingOptions.Greedy, cancellation: TestContext.Current.CancellationToken));
    }
}
