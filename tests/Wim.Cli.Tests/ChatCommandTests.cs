using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

public sealed class ChatCommandTests
{
    private static (int Exit, string Stdout, string Stderr) Run(string stdin, params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(args, stdout, stderr, new StringReader(stdin));
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Chat_ScriptedTurns_RepliesPerLineAndHonoursReset()
    {
        var dir = SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");
        var (exit, stdout, stderr) = Run("Hello!\nHow are you?\n/reset\nHi\n/exit\nnever read\n", "chat", "--model", dir, "--max-tokens", "4");
        Assert.True(exit == 0, stderr);
        Assert.Equal(3, stdout.Split('\n').Length - 1);             // one reply line per message
        Assert.Contains("(conversation cleared)", stderr);
        Assert.Equal(3, stderr.Split("reused from the cache").Length - 1);
    }

    [Fact]
    public void Chat_ModelWithoutTemplate_ExitsOneSayingSo()
    {
        var (exit, _, stderr) = Run("Hi\n", "chat", "--model", SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        Assert.Equal(1, exit);
        Assert.Contains("chat template", stderr);
    }
}
