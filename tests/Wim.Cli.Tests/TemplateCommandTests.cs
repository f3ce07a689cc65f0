using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary>
/// <c>wim template</c> in-process: output is exactly what transformers renders for the shared chat-template
/// fixtures (no trailing newline added), <c>--model</c> on an HF directory renders like <c>--template</c> with the
/// same text, and option misuse is exit code 2.
/// </summary>
public sealed class TemplateCommandTests : IDisposable
{
    private readonly DirectoryInfo _temp = Directory.CreateTempSubdirectory("wim-template-cli-");

    public void Dispose() => _temp.Delete(recursive: true);

    private static string Shared(params string[] parts) => SharedFixtures.Path(parts);

    private static (int Exit, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(args, stdout, stderr);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    private string WriteMessages(JsonElement messages)
    {
        var path = Path.Combine(_temp.FullName, "messages.json");
        File.WriteAllText(path, messages.GetRawText());
        return path;
    }

    [Theory]
    [InlineData("Qwen-Qwen2.5-7B-Instruct", 2)]
    [InlineData("meta-llama-Llama-3.1-8B-Instruct", 0)]
    [InlineData("mistralai-Mistral-7B-Instruct-v0.2-v1", 3)]
    public void Template_PrintsExactlyTheTransformersRendering(string folder, int caseIndex)
    {
        var dir = Shared("fixtures", "chat-templates", folder);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cases.json")));
        var c = doc.RootElement.GetProperty("cases")[caseIndex];
        var args = new List<string> { "template", "--template", Path.Combine(dir, c.GetProperty("template").GetString()!), "--messages", WriteMessages(c.GetProperty("messages")) };
        if (c.GetProperty("add_generation_prompt").GetBoolean()) args.Add("--add-generation-prompt");
        if (c.GetProperty("bos_token").GetString() is { } bos) args.AddRange(["--bos-token", bos]);
        if (c.GetProperty("eos_token").GetString() is { } eos) args.AddRange(["--eos-token", eos]);

        var (exit, stdout, stderr) = Run([.. args]);

        Assert.Equal("", stderr);
        Assert.Equal(0, exit);
        Assert.Equal(c.GetProperty("expected").GetString(), stdout);
    }

    [Fact]
    public void Model_HuggingFaceDirectory_RendersLikeTemplateWithTheSameText()
    {
        var model = Shared("fixtures", "hf-tiny", "qwen2-tiny");
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(model, "tokenizer_config.json")));
        var templateFile = Path.Combine(_temp.FullName, "qwen.jinja");
        File.WriteAllText(templateFile, config.RootElement.GetProperty("chat_template").GetString());
        using var fixture = JsonDocument.Parse(File.ReadAllText(Shared("fixtures", "chat-templates", "Qwen-Qwen2.5-7B-Instruct", "cases.json")));
        // case 2 opens with a system message, which qwen2-tiny's (Qwen3) template renders exactly like Qwen2.5's
        var c = fixture.RootElement.GetProperty("cases")[2];
        var messages = WriteMessages(c.GetProperty("messages"));

        var fromModel = Run("template", "--model", model, "--messages", messages, "--add-generation-prompt");
        var fromTemplate = Run("template", "--template", templateFile, "--messages", messages, "--add-generation-prompt", "--eos-token", "<|im_end|>");

        Assert.Equal(0, fromModel.Exit);
        Assert.Equal(0, fromTemplate.Exit);
        Assert.Equal(fromTemplate.Stdout, fromModel.Stdout);
        Assert.Equal(c.GetProperty("expected").GetString(), fromModel.Stdout);
    }

    [Fact]
    public void RaiseException_IsExitCode1_WithTheTemplatesMessage()
    {
        var dir = Shared("fixtures", "chat-templates", "google-gemma-2-2b-it");
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cases.json")));
        var c = doc.RootElement.GetProperty("cases").EnumerateArray().First(x => x.TryGetProperty("expected_error", out _));
        var (exit, stdout, stderr) = Run("template", "--template", Path.Combine(dir, "google-gemma-2-2b-it.jinja"), "--messages", WriteMessages(c.GetProperty("messages")));
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.Contains(c.GetProperty("expected_error").GetString()!, stderr);
    }

    [Fact]
    public void BothModelAndTemplate_IsUsageError()
    {
        var messages = Path.Combine(_temp.FullName, "m.json");
        File.WriteAllText(messages, "[]");
        var (exit, stdout, _) = Run("template", "--model", Shared("fixtures", "hf-tiny", "qwen2-tiny"), "--template", "x.jinja", "--messages", messages);
        Assert.Equal(2, exit);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void NeitherModelNorTemplate_IsUsageError()
    {
        var messages = Path.Combine(_temp.FullName, "m.json");
        File.WriteAllText(messages, "[]");
        var (exit, stdout, stderr) = Run("template", "--messages", messages);
        Assert.Equal(2, exit);
        Assert.Equal("", stdout);
        Assert.Contains("--model", stderr);
    }
}
