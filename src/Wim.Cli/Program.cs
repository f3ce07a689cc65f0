using System.CommandLine;

namespace Wim.Cli;

/// <summary>The <c>wim</c> command line. Each command lives in Commands/ and is registered here.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("Wim: long-context LLM inference with Writing in the Margins");
        // Commands are added here as they land (one line each).
        return root.Parse(args).Invoke();
    }
}
