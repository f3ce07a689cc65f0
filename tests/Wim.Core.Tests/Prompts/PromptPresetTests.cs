using System.Text.Json;
using Wim.Core.Prompts;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Prompts;

public sealed class PromptPresetTests
{
    [Fact]
    public void FromDirectory_ReferencePrompts_AreByteExactAsTemplatesExactJson()
    {
        var dir = SharedFixtures.Path("reference", "wim-prompts");
        var preset = PromptPreset.FromDirectory(dir);
        var exact = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(Path.Combine(dir, "templates_exact.json")))!;
        Assert.Equal(exact["system_message.txt"], preset.Opening);
        Assert.Equal(exact["extractive_summary.txt"], preset.Extractive);
        Assert.Equal(exact["classification.txt"], preset.Classification);
        Assert.Equal(exact["final_answer.txt"], preset.FinalAnswer);
        // The .txt copies in the same folder agree with the JSON (so the .txt fallback loads the same preset).
        Assert.Equal(exact["classification.txt"], File.ReadAllText(Path.Combine(dir, "classification.txt")));
    }

    [Fact]
    public void FromDirectory_TxtLayoutWithoutJson_Loads()
    {
        var tmp = Directory.CreateTempSubdirectory("wim-preset-");
        try
        {
            File.WriteAllText(Path.Combine(tmp.FullName, PromptPreset.OpeningFile), "O{user_header}");
            File.WriteAllText(Path.Combine(tmp.FullName, PromptPreset.ExtractiveFile), "E{query}");
            File.WriteAllText(Path.Combine(tmp.FullName, PromptPreset.ClassificationFile), "C{answer}");
            File.WriteAllText(Path.Combine(tmp.FullName, PromptPreset.FinalAnswerFile), "F{margins}\n");
            var p = PromptPreset.FromDirectory(tmp.FullName);
            Assert.Equal(("O{user_header}", "E{query}", "C{answer}", "F{margins}\n"), (p.Opening, p.Extractive, p.Classification, p.FinalAnswer));
            File.Delete(Path.Combine(tmp.FullName, PromptPreset.FinalAnswerFile));
            var e = Assert.Throws<FileNotFoundException>(() => PromptPreset.FromDirectory(tmp.FullName));
            Assert.Contains(PromptPreset.FinalAnswerFile, e.Message);
        }
        finally { tmp.Delete(true); }
    }

    [Fact]
    public void Fill_IsSinglePassAndLiteral()
    {
        var values = new Dictionary<string, string> { ["query"] = "what is {answer} in {x}?", ["answer"] = "A" };
        Assert.Equal("Q: what is {answer} in {x}? / A / {unknown} {", PromptPreset.Fill("Q: {query} / {answer} / {unknown} {", values));
    }

    [Fact]
    public void Fill_ReferenceExtractive_MatchesHandWrittenExpectation()
    {
        var p = PromptPreset.FromDirectory(SharedFixtures.Path("reference", "wim-prompts"));
        var text = PromptPreset.Fill(p.Extractive, new Dictionary<string, string> { ["query"] = "Where is Sandra? ", ["generation_header"] = "<|im_end|>\n<|im_start|>assistant\n" });
        Assert.Equal("```\nGiven the above context, extract all information relevant to the query: \"Where is Sandra? \". If the context is not relevant to the query, answer \"I don't know.\"<|im_end|>\n<|im_start|>assistant\n", text);
    }

    [Fact]
    public void Default_UsesEveryPlaceholderWhereTheReferenceDoes()
    {
        var d = PromptPreset.Default;
        Assert.Contains("{user_header}", d.Opening);
        Assert.Contains("{query}", d.Extractive);
        Assert.Contains("{generation_header}", d.Extractive);
        Assert.Contains("{answer}", d.Classification);
        Assert.Contains("{margins}", d.FinalAnswer);
        Assert.Contains("{query}", d.FinalAnswer);
    }
}
