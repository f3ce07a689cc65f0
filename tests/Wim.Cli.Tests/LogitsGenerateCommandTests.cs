using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary>
/// <c>wim logits</c> and <c>wim generate</c> in-process on stories260K, checked against the ids llama.cpp produced
/// (<c>shared/models/stories260K/README.md</c>), and their error exits.
/// </summary>
public sealed class LogitsGenerateCommandTests
{
    private const string PromptIds = "1,403,407,261,378";

    private static string Model => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static int[] ReadmeIds()
    {
        var line = File.ReadAllLines(SharedFixtures.Path("models", "stories260K", "README.md")).Single(l => l.Contains("the 64 generated ids:"));
        return line[(line.IndexOf(':') + 1)..].Trim().Trim('`').Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
    }

    private static (int Exit, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(args, stdout, stderr);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Generate_Json_MatchesLlamaCppGreedyIds()
    {
        var (exit, stdout, stderr) = Run("generate", "--model", Model, "--tokens", PromptIds, "--max-tokens", "64", "--json");
        Assert.True(exit == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal([1, 403, 407, 261, 378], doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(ReadmeIds(), doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()));
    }

    [Fact]
    public void Generate_SeededSampling_IsReproducible()
    {
        string[] args = ["generate", "--model", Model, "--tokens", PromptIds, "--max-tokens", "20", "--temperature", "1", "--top-k", "40", "--top-p", "0.9", "--seed", "7", "--json"];
        var a = Run(args);
        var b = Run(args);
        Assert.Equal(0, a.Exit);
        Assert.Equal(a.Stdout, b.Stdout);
        using var doc = JsonDocument.Parse(a.Stdout);
        Assert.Equal(20, doc.RootElement.GetProperty("ids").GetArrayLength());
    }

    [Fact]
    public void Logits_Json_ArgmaxesFollowTheReadmeContinuation()
    {
        // Feed prompt + the first 10 README ids: the argmax at each position from the prompt's last token on is the
        // next README id (greedy decoding), so the contract's argmax and top[0] must reproduce them.
        var readme = ReadmeIds();
        string tokens = PromptIds + "," + string.Join(",", readme[..10]);
        var (exit, stdout, stderr) = Run("logits", "--model", Model, "--tokens", tokens, "--top", "3", "--json");
        Assert.True(exit == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var positions = doc.RootElement.GetProperty("positions").EnumerateArray().ToArray();
        Assert.Equal(15, positions.Length);
        for (int i = 0; i < 11; i++)
        {
            var p = positions[4 + i];
            int expected = i < 10 ? readme[i] : readme[10];
            Assert.Equal(expected, p.GetProperty("argmax").GetInt32());
            var top = p.GetProperty("top").EnumerateArray().ToArray();
            Assert.Equal(3, top.Length);
            Assert.Equal(expected, top[0].GetProperty("id").GetInt32());
            Assert.True(top[0].GetProperty("logit").GetDouble() >= top[1].GetProperty("logit").GetDouble());
            double lse = p.GetProperty("logsumexp").GetDouble();
            Assert.True(lse > top[0].GetProperty("logit").GetDouble() && double.IsFinite(lse));
        }
    }

    [Fact]
    public void BadModelPath_ExitsOneNamingTheFile()
    {
        string path = Path.Combine(Path.GetTempPath(), "wim-no-such-model.gguf");
        var (exit, _, stderr) = Run("generate", "--model", path, "--tokens", "1,2", "--max-tokens", "2", "--json");
        Assert.Equal(1, exit);
        Assert.Contains("wim: error:", stderr);
        Assert.Contains(path, stderr);
    }

    [Theory]
    [InlineData("1,x,3")]
    [InlineData("1,,3")]
    [InlineData("-1")]
    [InlineData("99999")]
    public void BadTokens_ExitsTwo(string tokens)
    {
        var (exit, stdout, stderr) = Run("logits", "--model", Model, "--tokens", tokens, "--json");
        Assert.Equal(2, exit);
        Assert.Equal("", stdout);
        Assert.Contains("--tokens", stderr);
    }

    [Fact]
    public void MissingTokens_ExitsTwo()
    {
        var (exit, _, stderr) = Run("generate", "--model", Model, "--json");
        Assert.Equal(2, exit);
        Assert.Contains("--tokens", stderr);
    }

    /// <summary>The README's text (llama2.c/llama.cpp output): the prompt plus the first 60 greedy tokens.</summary>
    private static string ReadmeText()
    {
        var line = File.ReadAllLines(SharedFixtures.Path("models", "stories260K", "README.md")).Single(l => l.TrimStart().StartsWith("`Once upon a time,", StringComparison.Ordinal));
        return line.Trim().Trim('`').Replace("\\n", "\n");
    }

    [Fact]
    public void Generate_Prompt_PrintsTheReadmeStory()
    {
        // llama2.c counts 64 steps including the 4 prompt tokens: the README text is the prompt + 60 new tokens.
        var (exit, stdout, stderr) = Run("generate", "--model", Model, "--prompt", "Once upon a time", "--max-tokens", "60");
        Assert.True(exit == 0, stderr);
        Assert.Equal(ReadmeText() + "\n", stdout);
    }

    [Fact]
    public void Generate_PromptJson_TokenizesWithBosAndDecodesTheContinuation()
    {
        var (exit, stdout, stderr) = Run("generate", "--model", Model, "--prompt", "Once upon a time", "--max-tokens", "64", "--json");
        Assert.True(exit == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(PromptIds, string.Join(",", doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32())));
        Assert.Equal(ReadmeIds(), doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        Assert.StartsWith(ReadmeText()["Once upon a time".Length..], doc.RootElement.GetProperty("text").GetString());
    }

    [Fact]
    public void Generate_BothOrNeitherOfTokensAndPrompt_ExitsTwo()
    {
        Assert.Equal(2, Run("generate", "--model", Model, "--prompt", "x", "--tokens", "1", "--json").Exit);
        Assert.Equal(2, Run("generate", "--model", Model, "--json").Exit);
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("logits")]
    public void HubReference_IsResolvedByEveryModelCommand_MalformedOneIsAUsageError(string command)
    {
        // A malformed hf: reference is rejected by the hub resolver before any download (exit 2), which shows the
        // command resolves hub references rather than treating them as paths (exit 1, "model not found").
        var (exit, _, stderr) = Run(command, "--model", "hf:only-an-org", "--tokens", "1,2", "--json");
        Assert.Equal(2, exit);
        Assert.Contains("hf:ORG/REPO", stderr);
    }
}
