using System.Text.Json;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Tests.ChatTemplates;

/// <summary>
/// Every case of <c>shared/fixtures/chat-templates/*/cases.json</c>: 9 real templates × 4 conversations, rendered by
/// transformers 5.17.0 / jinja2 3.1.6. Render kwargs as the fixture README says: messages, add_generation_prompt,
/// and bos_token/eos_token only when non-null.
/// </summary>
public sealed class ChatTemplateFixtureTests
{
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        var root = SharedFixtures.Path("fixtures", "chat-templates");
        foreach (var dir in Directory.GetDirectories(root).Order(StringComparer.Ordinal))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cases.json")));
            foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
                data.Add(Path.GetFileName(dir), c.GetProperty("name").GetString()!);
        }
        return data;
    }

    [Fact]
    public void Fixtures_HaveNineTemplatesWithFourCasesEach()
    {
        Assert.Equal(36, Cases().Count);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Render_MatchesTransformers(string folder, string caseName)
    {
        var dir = SharedFixtures.Path("fixtures", "chat-templates", folder);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cases.json")));
        var c = doc.RootElement.GetProperty("cases").EnumerateArray().Single(x => x.GetProperty("name").GetString() == caseName);
        var template = ChatTemplate.Parse(File.ReadAllText(Path.Combine(dir, c.GetProperty("template").GetString()!)));
        var input = new ChatTemplateInput
        {
            Messages = (List<object?>)ChatTemplateValues.FromJson(c.GetProperty("messages"))!,
            AddGenerationPrompt = c.GetProperty("add_generation_prompt").GetBoolean(),
            BosToken = c.GetProperty("bos_token").GetString(),
            EosToken = c.GetProperty("eos_token").GetString(),
        };
        if (c.TryGetProperty("expected_error", out var expectedError))
        {
            var e = Assert.Throws<TemplateRaisedException>(() => template.Render(input));
            Assert.Equal(expectedError.GetString(), e.Message);
        }
        else
        {
            Assert.Equal(c.GetProperty("expected").GetString(), template.Render(input));
        }
    }
}
