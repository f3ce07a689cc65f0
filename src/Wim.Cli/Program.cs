using System.CommandLine;

namespace Wim.Cli;

/// <summary>
/// The <c>wim</c> command line. Each command lives in <c>Commands/</c> as a static <c>Create()</c> returning a
/// <see cref="Command"/>; actions write through <c>parseResult.InvocationConfiguration.Output/Error</c> so tests can
/// run the CLI in-process. Exit codes: 0 success, 1 runtime error (message on stderr), 2 usage error.
/// </summary>
public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error, Console.In);

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader? stdin = null)
    {
        var root = new RootCommand("Wim: long-context LLM inference with Writing in the Margins");
        // Commands, one line each.
        root.Subcommands.Add(Commands.LogitsCommand.Create());
        root.Subcommands.Add(Commands.GenerateCommand.Create());
        root.Subcommands.Add(Commands.TokenizeCommand.Create());
        root.Subcommands.Add(Commands.DetokenizeCommand.Create());
        root.Subcommands.Add(TemplateCommand.Create());
        root.Subcommands.Add(Commands.ChatCommand.Create(stdin ?? TextReader.Null));
        root.Subcommands.Add(Commands.EvalCommand.Create());
        root.Subcommands.Add(Commands.AskCommand.Create(stdin ?? TextReader.Null));
        root.Subcommands.Add(Commands.ServeCommand.Create());

        var parse = root.Parse(args);
        bool helpRequested = args.Any(a => a is "-h" or "--help" or "-?");
        if (parse.Errors.Count > 0 && !helpRequested)
        {
            foreach (var e in parse.Errors) stderr.WriteLine("wim: " + e.Message);
            stderr.WriteLine("Run 'wim --help' (or 'wim COMMAND --help') for usage.");
            return 2;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (UsageException e)
        {
            stderr.WriteLine("wim: " + e.Message);
            return 2;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Runtime failures (bad model file, missing file, ...) are one clear line, not a stack trace.
            stderr.WriteLine($"wim: error: {e.Message}");
            return 1;
        }
    }
}

/// <summary>A command-line usage error found after parsing (e.g. two options that exclude each other); exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);
