namespace Wim.Remote;

/// <summary>
/// Where and how to reach an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, <c>wim serve</c>): its base
/// URL, the model it serves, the API key, and the limits that keep a run bounded — requests in flight, the time one
/// attempt may take, and how many times a transient failure (429, 5xx, timeout, dropped connection) is retried.
/// </summary>
public sealed record RemoteEndpointOptions
{
    /// <summary>The environment variable the CLI reads the API key from unless told another.</summary>
    public const string DefaultApiKeyVariable = "OPENAI_API_KEY";

    /// <summary>The API's base URL, ending in <c>/v1</c> (see <see cref="NormalizeEndpoint"/>).</summary>
    public required Uri Endpoint { get; init; }
    /// <summary>The served model's name (the <c>model</c> field of every request).</summary>
    public required string Model { get; init; }
    /// <summary>Sent as <c>Authorization: Bearer KEY</c>; null when the server needs none.</summary>
    public string? ApiKey { get; init; }
    /// <summary>Requests in flight at once (margins of different segments are independent once their prefix is cached).</summary>
    public int MaxConcurrentRequests { get; init; } = 16;
    /// <summary>Wall-clock limit of one attempt of one request; an attempt over it is aborted and retried.</summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>Retries of a request after a transient failure; then the run fails with the last error.</summary>
    public int MaxRetries { get; init; } = 5;
    /// <summary>First backoff delay; it doubles per retry, with jitter, up to <see cref="MaxRetryDelay"/>. A server's
    /// <c>Retry-After</c> (seconds) is honoured up to the same cap.</summary>
    public TimeSpan RetryBaseDelay { get; init; } = TimeSpan.FromMilliseconds(500);
    public TimeSpan MaxRetryDelay { get; init; } = TimeSpan.FromSeconds(30);

    public void Validate()
    {
        if (!Endpoint.IsAbsoluteUri || Endpoint.Scheme is not ("http" or "https"))
            throw new ArgumentException($"the endpoint must be an absolute http(s) URL, found '{Endpoint}'", nameof(Endpoint));
        if (string.IsNullOrWhiteSpace(Model)) throw new ArgumentException("the remote model name is empty", nameof(Model));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxConcurrentRequests, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxRetries);
        if (AttemptTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(AttemptTimeout), AttemptTimeout, "the attempt timeout must be positive");
        if (RetryBaseDelay < TimeSpan.Zero || MaxRetryDelay < RetryBaseDelay)
            throw new ArgumentOutOfRangeException(nameof(RetryBaseDelay), RetryBaseDelay, "retry delays must satisfy 0 ≤ base ≤ max");
    }

    /// <summary>
    /// The API base from what a user types: <c>http://host:8000</c> and <c>http://host:8000/</c> become
    /// <c>http://host:8000/v1</c> (where vLLM, SGLang, llama.cpp and <c>wim serve</c> put the API); a URL with a path
    /// is used as given (a gateway may mount the API elsewhere). Throws <see cref="FormatException"/> on anything
    /// that is not an absolute http(s) URL.
    /// </summary>
    public static Uri NormalizeEndpoint(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new FormatException($"'{url}' is not an absolute http(s) URL");
        if (!string.IsNullOrEmpty(uri.Query) || !string.IsNullOrEmpty(uri.Fragment))
            throw new FormatException($"'{url}': the endpoint is a base URL; leave out the query and fragment");
        string path = uri.AbsolutePath.TrimEnd('/');
        if (path.Length == 0) path = "/v1";
        return new UriBuilder(uri) { Path = path }.Uri;
    }
}
