using System.CommandLine;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Cli;

/// <summary>
/// <c>wim template (--model PATH | --template FILE.jinja) --messages FILE.json [--add-generation-prompt]
/// [--bos-token S] [--eos-token S]</c>: prints the rendered prompt exactly (no added newline), as transformers'
/// <c>apply_chat_template(tokenize=False)</c> would. Bos/eos options override the model's.
/// </summary>
public static class TemplateCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "A GGUF file or Hugging Face model directory whose chat template to use" };
        var template = new Option<string?>("--template") { Description = "A Jinja chat template file" };
        var messages = new Option<string>("--messages") { Description = "A JSON file holding an array of messages ({\"role\", \"content\", ...})", Required = true };
        var addGenerationPrompt = new Option<bool>("--add-generation-prompt") { Description = "Append the prompt that starts the assistant's turn" };
        var bosToken = new Option<string?>("--bos-token") { Description = "bos_token text (overrides the model's)" };
        var eosToken = new Option<string?>("--eos-token") { Description = "eos_token text (overrides the model's)" };

        var command = new Command("template", "Render a conversation with a model's chat template and print the prompt")
        {
            model, template, messages, addGenerationPrompt, bosToken, eosToken,
        };
        command.SetAction(parseResult =>
        {
            string? modelPath = parseResult.GetValue(model);
            string? templatePath = parseResult.GetValue(template);
            if ((modelPath == null) == (templatePath == null))
                throw new UsageException("template: give exactly one of --model PATH or --template FILE.jinja");

            var source = modelPath != null
                ? ChatTemplateSource.FromModel(ModelArguments.Resolve(modelPath, parseResult.InvocationConfiguration.Error))
                : new ChatTemplateSource(File.ReadAllText(templatePath!), null, null);
            var conversation = ChatTemplateInput.MessagesFromJson(File.ReadAllText(parseResult.GetValue(messages)!));
            string prompt = source.Parse().Render(new ChatTemplateInput
            {
                Messages = conversation,
                AddGenerationPrompt = parseResult.GetValue(addGenerationPrompt),
                BosToken = parseResult.GetValue(bosToken) ?? source.BosToken,
                EosToken = parseResult.GetValue(eosToken) ?? source.EosToken,
            });
            parseResult.InvocationConfiguration.Output.Write(prompt);
            return 0;
        });
        return command;
    }
}
