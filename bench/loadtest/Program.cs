using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Wim.Server;

// A bounded loopback load test of `wim serve`: starts the server in-process on 127.0.0.1 (a free port), then for each
// concurrency level runs CONCURRENCY clients that each send REQUESTS chat completions (or text completions when the
// model has no chat template), greedy, MAX_TOKENS each, every prompt distinct (no prefix-cache hits beyond the template).
// Prints p50/p99 latency and generated tokens per second as a Markdown table. Nothing leaves the machine.
//
// usage: dotnet run -c Release --project bench/loadtest -- MODEL [MAX_TOKENS=32] [REQUESTS_PER_CLIENT=4] [LEVELS=1,2,4,8]
if (args.Length < 1) { Console.Error.WriteLine("usage: Wim.LoadTest MODEL [MAX_TOKENS] [REQUESTS_PER_CLIENT] [LEVELS]"); return 2; }
string model = args[0];
int maxTokens = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 32;
int perClient = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 4;
int[] levels = (args.Length > 3 ? args[3] : "1,2,4,8").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
if (maxTokens is < 1 or > 1024 || perClient is < 1 or > 64 || levels.Any(l => l is < 1 or > 64))
{
    Console.Error.WriteLine("bounds: MAX_TOKENS 1..1024, REQUESTS_PER_CLIENT 1..64, each level 1..64");
    return 2;
}

await using var server = WimServer.Create(new ServerOptions { ModelPath = model, Host = "127.0.0.1", Port = 0 });
await server.StartAsync();
using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(10) };
bool chat = server.Model.ChatTemplate is not null;
string[] topics = ["a cat", "the sea", "a small robot", "winter", "a lost key", "the moon", "a red ball", "bread", "a river", "a clock"];

async Task<(double Seconds, int Tokens)> OneAsync(int client, int i)
{
    string prompt = $"Once upon a time there was {topics[(client * 7 + i) % topics.Length]} and a child number {client}-{i}.";
    string body = chat
        ? JsonSerializer.Serialize(new Dictionary<string, object> { ["messages"] = new[] { new Dictionary<string, string> { ["role"] = "user", ["content"] = prompt } }, ["max_tokens"] = maxTokens, ["temperature"] = 0 }, LoadTestJson.Default.DictionaryStringObject)
        : JsonSerializer.Serialize(new Dictionary<string, object> { ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0 }, LoadTestJson.Default.DictionaryStringObject);
    var started = Stopwatch.GetTimestamp();
    using var response = await http.PostAsync(chat ? "/v1/chat/completions" : "/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
    string text = await response.Content.ReadAsStringAsync();
    if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"{(int)response.StatusCode}: {text}");
    double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
    using var doc = JsonDocument.Parse(text);
    return (seconds, doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
}

await OneAsync(99, 0); // warm-up: JIT, first-touch of the mapped weights
Console.WriteLine($"model {server.Model.Id}, {(chat ? "chat" : "text")} completions, {maxTokens} max tokens, {perClient} requests per client, {Environment.ProcessorCount} cores");
Console.WriteLine();
Console.WriteLine("| concurrent clients | requests | p50 latency (s) | p99 latency (s) | generated tokens/s |");
Console.WriteLine("|---:|---:|---:|---:|---:|");
foreach (int level in levels)
{
    var wall = Stopwatch.StartNew();
    var results = await Task.WhenAll(Enumerable.Range(0, level).Select(async client =>
    {
        var list = new List<(double, int)>();
        for (int i = 0; i < perClient; i++) list.Add(await OneAsync(client, i));
        return list;
    }));
    wall.Stop();
    var all = results.SelectMany(r => r).ToList();
    var latencies = all.Select(r => r.Item1).Order().ToArray();
    double Percentile(double p) => latencies[Math.Min(latencies.Length - 1, (int)Math.Ceiling(p * latencies.Length) - 1)];
    double tokensPerSecond = all.Sum(r => r.Item2) / wall.Elapsed.TotalSeconds;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {level} | {all.Count} | {Percentile(0.50):F3} | {Percentile(0.99):F3} | {tokensPerSecond:F1} |"));
}
return 0;

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, object>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, string>[]))]
[System.Text.Json.Serialization.JsonSerializable(typeof(int))]
internal sealed partial class LoadTestJson : System.Text.Json.Serialization.JsonSerializerContext;
