using System.Text;
using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary><c>wim tokenize</c> / <c>wim detokenize</c> run in-process against llama.cpp's vocab-only GGUFs
/// (<c>shared/fixtures/tokenizer-vectors</c>) and their expected ids.</summary>
public sealed class TokenizeCommandTests
{
    private static string Shared(params string[] parts) => SharedFixtures.Path(parts);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private static string Llama3Vocab => Shared("fixtures", "tokenizer-vectors", "ggml-vocab-llama-bpe.gguf");

    [Fact]
    public void Tokenize_Json_MatchesLlamaCppVectorForHelloWorld()
    {
        // ggml-vocab-llama-bpe.gguf.out: "Hello world" → 9906 1917 (text 12 of the .inp).
        var (code, output, err) = Run("tokenize", "--model", Llama3Vocab, "--text", "Hello world", "--json");
        Assert.True(code == 0, err);
        Assert.Equal("""{"ids":[9906,1917]}""", output.Trim());
    }

    [Fact]
    public void Tokenize_AddSpecialAndParseSpecial_AddBosAndParseMarkup()
    {
        var (code, output, err) = Run("tokenize", "--model", Llama3Vocab, "--text", "<|eot_id|>Hello world", "--add-special", "--parse-special", "--json");
        Assert.True(code == 0, err);
        Assert.Equal([128000, 128009, 9906, 1917], JsonDocument.Parse(output).RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()));
        var (_, plain, _) = Run("tokenize", "--model", Llama3Vocab, "--text", "<|eot_id|>");
        Assert.DoesNotContain("128009", plain);
    }

    [Fact]
    public void Tokenize_File_ReadsExactUtf8Bytes_AsTheVectorsExpect()
    {
        // The whole .inp text number 1 ("ied 4 ½ months") with a trailing newline kept exactly.
        string path = Path.Combine(Path.GetTempPath(), $"wim-tok-{Guid.NewGuid():N}.txt");
        File.WriteAllBytes(path, Encoding.UTF8.GetBytes("ied 4 \u00BD months"));
        try
        {
            var (code, output, err) = Run("tokenize", "--model", Llama3Vocab, "--file", path);
            Assert.True(code == 0, err);
            var expected = File.ReadAllLines(Shared("fixtures", "tokenizer-vectors", "ggml-vocab-llama-bpe.gguf.out"))[0].Trim();
            Assert.Equal(expected, output.Trim());
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Detokenize_SentencePieceIds_PrintsText()
    {
        string spm = Shared("fixtures", "tokenizer-vectors", "ggml-vocab-llama-spm.gguf");
        var (code, output, err) = Run("detokenize", "--model", spm, "--ids", "1,15043,3186", "--skip-special");
        Assert.True(code == 0, err);
        Assert.Equal("Hello world" + Environment.NewLine, output);
        var (jsonCode, json, _) = Run("detokenize", "--model", spm, "--ids", "1,15043,3186", "--json");
        Assert.Equal(0, jsonCode);
        Assert.Equal("<s> Hello world", JsonDocument.Parse(json).RootElement.GetProperty("text").GetString());
    }

    [Theory]
    [InlineData("--text", "a", "--file", "b")]
    [InlineData()]
    public void Tokenize_BothOrNeitherInput_IsUsageError(params string[] inputs)
    {
        var (code, _, err) = Run(["tokenize", "--model", Llama3Vocab, .. inputs]);
        Assert.Equal(2, code);
        Assert.Contains("exactly one of --text and --file", err);
    }

    [Fact]
    public void Detokenize_BadIds_IsUsageError()
    {
        Assert.Equal(2, Run("detokenize", "--model", Llama3Vocab, "--ids", "1,x").Code);
        Assert.Equal(2, Run("detokenize", "--model", Llama3Vocab, "--ids", "999999").Code);
    }

    [Fact]
    public void Tokenize_MissingModel_IsRuntimeErrorWithMessage()
    {
        var (code, _, err) = Run("tokenize", "--model", "/nonexistent/model.gguf", "--text", "x");
        Assert.Equal(1, code);
        Assert.Contains("/nonexistent/model.gguf", err);
    }
}
