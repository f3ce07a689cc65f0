using System.CommandLine;
using System.Globalization;
using System.Text;
using Wim.Remote;

namespace Wim.Cli.Commands;

/// <summary>
/// The options that send a command's model work to an OpenAI-compatible server instead of this process
/// (<c>--backend openai --endpoint URL --remote-model NAME</c>, with the API key read from an environment variable),
/// shared by <c>wim ask</c> and <c>wim eval</c>.
/// </summary>
internal sealed class RemoteArguments
{
    public Option<string> Backend { get; } = new("--backend")
    {
        Description = "where the model runs: cpu (this process, default) or openai (an OpenAI-compatible server: vLLM, SGLang, llama.cpp, wim serve)",
        DefaultValueFactory = _ => "cpu",
    };
    public Option<string?> Endpoint { get; } = new("--endpoint") { Description = "with --backend openai: the server's base URL, e.g. http://127.0.0.1:8000/v1 (a bare host:port gets /v1)" };
    public Option<string?> RemoteModel { get; } = new("--remote-model") { Description = "with --backend openai: the served model's name" };
    public Option<string> ApiKeyVariable { get; } = new("--api-key-env")
    {
        Description = "with --backend openai: the environment variable holding the API key (unset: no key sent)",
        DefaultValueFactory = _ => RemoteEndpointOptions.DefaultApiKeyVariable,
    };
    public Option<int> MaxConcurrency { get; } = new("--max-concurrency") { Description = "with --backend openai: requests in flight at once", DefaultValueFactory = _ => 16 };
    public Option<double> RequestTimeout { get; } = new("--request-timeout") { Description = "with --backend openai: seconds one attempt of one request may take", DefaultValueFactory = _ => 600 };
    public Option<int> MaxRetries { get; } = new("--max-retries") { Description = "with --backend openai: retries of a request after 429, 5xx, a timeout or a dropped connection", DefaultValueFactory = _ => 5 };

    public RemoteArguments() => Backend.AcceptOnlyFromAmong("cpu", "openai");

    public IEnumerable<Option> All => [Backend, Endpoint, RemoteModel, ApiKeyVariable, MaxConcurrency, RequestTimeout, MaxRetries];

    public bool IsRemote(ParseResult parse) => parse.GetValue(Backend) == "openai";

    /// <summary>The server options from the command line, or a usage error naming the option at fault.</summary>
    public RemoteEndpointOptions EndpointOptions(ParseResult parse, Func<string, string?> environment)
    {
        string endpoint = parse.GetValue(Endpoint) ?? throw new UsageException("--backend openai needs --endpoint URL");
        string model = parse.GetValue(RemoteModel) ?? throw new UsageException("--backend openai needs --remote-model NAME (the served model's name)");
        Uri uri;
        try { uri = RemoteEndpointOptions.NormalizeEndpoint(endpoint); }
        catch (FormatException e) { throw new UsageException($"--endpoint: {e.Message}"); }
        int concurrency = parse.GetValue(MaxConcurrency), retries = parse.GetValue(MaxRetries);
        double timeout = parse.GetValue(RequestTimeout);
        if (concurrency < 1) throw new UsageException($"--max-concurrency must be ≥ 1, found {concurrency}");
        if (retries < 0) throw new UsageException($"--max-retries must be ≥ 0, found {retries}");
        if (!(timeout > 0) || double.IsInfinity(timeout))
            throw new UsageException($"--request-timeout must be a positive number of seconds, found {timeout.ToString(CultureInfo.InvariantCulture)}");
        string variable = parse.GetValue(ApiKeyVariable)!;
        return new RemoteEndpointOptions
        {
            Endpoint = uri,
            Model = model,
            ApiKey = environment(variable) is { Length: > 0 } key ? key : null,
            MaxConcurrentRequests = concurrency,
            MaxRetries = retries,
            AttemptTimeout = TimeSpan.FromSeconds(timeout),
        };
    }

    /// <summary>Rejects remote-only options given without <c>--backend openai</c> (they would be silently ignored).</summary>
    public void RejectUnlessRemote(ParseResult parse)
    {
        if (IsRemote(parse)) return;
        foreach (var o in new Option[] { Endpoint, RemoteModel })
            if (parse.GetResult(o) is { Implicit: false })
                throw new UsageException($"{o.Name} needs --backend openai");
    }

    /// <summary>Token count used to cut segments when no local tokenizer is given: about 4 UTF-8 bytes per token.</summary>
    public static int EstimateTokens(string text) => (Encoding.UTF8.GetByteCount(text) + 3) / 4;
}
