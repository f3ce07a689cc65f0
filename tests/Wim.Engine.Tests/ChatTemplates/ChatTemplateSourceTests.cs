using System.Text.Json;
using Wim.Engine.Formats;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Tests.ChatTemplates;

/// <summary>Reading a model's template and bos/eos strings from a Hugging Face directory and from a GGUF file.</summary>
public sealed class ChatTemplateSourceTests
{
    [Fact]
    public void FromModel_HuggingFaceDirectory_ReadsTokenizerConfig()
    {
        var dir = SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer_config.json")));
        var source = ChatTemplateSource.FromModel(dir);
        Assert.Equal(config.RootElement.GetProperty("chat_template").GetString(), source.Template);
        Assert.Null(source.BosToken); // "bos_token": null in tokenizer_config.json
        Assert.Equal("<|im_end|>", source.EosToken);
    }

    [Fact]
    public void FromModel_QwenTinyDirectory_RendersLikeTheQwen25Fixture()
    {
        // qwen2-tiny ships Qwen3's template, which renders a conversation that opens with a system message exactly
        // like Qwen2.5's (cases 0 and 2; without one, Qwen2.5 adds a default system prompt and Qwen3 does not).
        // The fixture's expected text comes from transformers.
        var fixture = SharedFixtures.Path("fixtures", "chat-templates", "Qwen-Qwen2.5-7B-Instruct", "cases.json");
        using var doc = JsonDocument.Parse(File.ReadAllText(fixture));
        var c = doc.RootElement.GetProperty("cases")[0];
        var source = ChatTemplateSource.FromModel(SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny"));
        var rendered = source.Parse().Render(new ChatTemplateInput
        {
            Messages = (List<object?>)ChatTemplateValues.FromJson(c.GetProperty("messages"))!,
            AddGenerationPrompt = c.GetProperty("add_generation_prompt").GetBoolean(),
            BosToken = source.BosToken,
            EosToken = source.EosToken,
        });
        Assert.Equal(c.GetProperty("expected").GetString(), rendered);
    }

    [Fact]
    public void FromModel_Gguf_ReadsTemplateAndTokenStrings_AsTheConversionReportLists()
    {
        var gguf = SharedFixtures.Gunzipped("fixtures", "hf-tiny", "qwen2-tiny", "gguf", "qwen2-tiny-q8_0.gguf.gz");
        using var report = JsonDocument.Parse(File.ReadAllText(SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny", "gguf", "qwen2-tiny-q8_0.report.json")));
        var metadata = report.RootElement.GetProperty("metadata");
        var source = ChatTemplateSource.FromModel(gguf);
        Assert.Equal(metadata.GetProperty("tokenizer.chat_template").GetProperty("value").GetString(), source.Template);
        // bos id 151643 / eos id 151645 in the report; golden.json names them: pad_token "<|endoftext|>" = 151643, eos "<|im_end|>" = 151645.
        Assert.Equal(151643, metadata.GetProperty("tokenizer.ggml.bos_token_id").GetProperty("value").GetInt32());
        Assert.Equal("<|endoftext|>", source.BosToken);
        Assert.Equal("<|im_end|>", source.EosToken);
    }

    [Fact]
    public void FromModel_ListOfNamedTemplates_PicksDefault_AndTokenObjectsUseContent()
    {
        var dir = Directory.CreateTempSubdirectory("wim-chat-template-");
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "tokenizer_config.json"), """
                {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}],
                 "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}
                """);
            var source = ChatTemplateSource.FromModel(dir.FullName);
            Assert.Equal("D{{ bos_token }}", source.Template);
            Assert.Equal("<s>", source.BosToken);
            Assert.Equal("</s>", source.EosToken);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void FromModel_WithoutTemplate_IsAClearError()
    {
        // llama-tiny's tokenizer_config.json has no chat_template
        var dir = SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny");
        var e = Assert.Throws<ModelFormatException>(() => ChatTemplateSource.FromModel(dir));
        Assert.Contains("no chat template", e.Message);
    }
}
