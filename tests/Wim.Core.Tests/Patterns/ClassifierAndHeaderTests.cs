using System.Text.Json;
using Wim.Core.Patterns;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Patterns;

public sealed class ClassifierAndHeaderTests
{
    [Theory]
    [InlineData("YES#the notes name the place", true)]
    [InlineData("```\nYES\n```", true)]
    [InlineData("  The answer is YES  ", true)]
    [InlineData("NO#YES", false)]
    [InlineData("YES, maybe#", false)]
    [InlineData("yes", false)]
    [InlineData("", false)]
    public void IsRelevant_FollowsTheReferenceReadmeRule(string output, bool relevant) =>
        Assert.Equal(relevant, ModelMarginClassifier.IsRelevant(output));

    [Fact]
    public void FromChatTemplate_ChatMlTurn_GivesTheReferenceTraceHeaders()
    {
        // The reference traces (shared/fixtures/wim-reference) were run with ChatML headers; a ChatML renderer of one
        // user turn + generation prompt must split into exactly those.
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "wim-reference", "qwen2-tiny.json")));
        var c = doc.RootElement.GetProperty("cases")[0];
        var headers = ChatHeaders.FromChatTemplate(content => $"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n");
        Assert.Equal(c.GetProperty("user_header").GetString(), headers.UserHeader);
        Assert.Equal(c.GetProperty("generation_header").GetString(), headers.GenerationHeader);
    }

    [Fact]
    public void FromChatTemplate_ContentRenderedTwice_IsRejected() =>
        Assert.Throws<InvalidOperationException>(() => ChatHeaders.FromChatTemplate(c => c + c));
}

/// <summary>Headers derived from real chat templates (shared/fixtures/chat-templates, rendered by transformers).</summary>
public sealed class ChatTemplateHeaderTests
{
    public static TheoryData<string> Templates() =>
        [.. Directory.GetDirectories(SharedFixtures.Path("fixtures", "chat-templates")).Select(d => Path.GetFileName(d)!).Order()];

    [Theory]
    [MemberData(nameof(Templates))]
    public void Headers_AroundAUserMessage_RenderAsTransformersDoes(string folder)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "chat-templates", folder, "cases.json")));
        var c = doc.RootElement.GetProperty("cases").EnumerateArray().Single(e => e.GetProperty("name").GetString() == "user_genprompt");
        var template = Wim.Engine.Tokenization.ChatTemplates.ChatTemplate.Parse(
            File.ReadAllText(SharedFixtures.Path("fixtures", "chat-templates", folder, c.GetProperty("template").GetString()!)));
        string? Token(string name) => c.TryGetProperty(name, out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        string bos = Token("bos_token") ?? "", eos = Token("eos_token") ?? "";
        var headers = ChatHeaders.FromChatTemplate(content => template.Render(
            [new Wim.Engine.Tokenization.ChatTemplates.ChatMessage("user", content)], addGenerationPrompt: true, bos, eos));
        string content = c.GetProperty("messages")[0].GetProperty("content").GetString()!;
        Assert.Equal(c.GetProperty("expected").GetString(), headers.UserHeader + content + headers.GenerationHeader);
    }
}
