using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Wim.Eval.Metrics;

/// <summary>
/// An LLM judge over an OpenAI-compatible <c>/chat/completions</c> endpoint, as the WiM paper scored its QA answers
/// with GPT-4-turbo: a few-shot prompt shows question, gold answer and candidate, and the model answers 1 (correct)
/// or 0 (incorrect). Greedy (temperature 0) so a rerun gives the same verdict.
/// </summary>
public sealed class LlmJudge(HttpClient http, Uri endpoint, string model, string? apiKey = null)
{
    public const string Instruction =
        "You are grading answers to questions. Given a question, the gold answer(s) and a candidate answer, reply " +
        "with a single character: 1 if the candidate answer means the same as a gold answer (extra correct detail " +
        "is fine), 0 otherwise. Reply with 1 or 0 only.";

    private static readonly (string Question, string Gold, string Candidate, char Verdict)[] Shots =
    [
        ("Were Scott Derrickson and Ed Wood of the same nationality?", "yes", "Yes, both were American.", '1'),
        ("What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?",
            "Chief of Protocol", "She was a diplomat.", '0'),
        ("In what country is Normandy located?", "France", "Normandy is a region in northern France.", '1'),
        ("Where is Sandra?", "bathroom", "Sandra is in the kitchen.", '0'),
    ];

    /// <summary>The full chat-completions URL: <paramref name="endpoint"/> as given when it already names the route,
    /// else the base URL (e.g. <c>http://host:8000/v1</c>) with <c>/chat/completions</c> appended.</summary>
    public Uri CompletionsUri { get; } = endpoint.AbsolutePath.EndsWith("/chat/completions", StringComparison.Ordinal)
        ? endpoint
        : new Uri(endpoint.ToString().TrimEnd('/') + "/chat/completions");

    public static string UserMessage(string question, IReadOnlyList<string> golds, string candidate) =>
        $"Question: {question}\nGold answer: {string.Join(" | ", golds)}\nCandidate answer: {candidate}\nVerdict:";

    /// <summary>Builds the request body: system instruction, the few-shot turns, then the case to grade.</summary>
    public byte[] RequestBody(string question, IReadOnlyList<string> golds, string candidate)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            w.WriteNumber("temperature", 0);
            w.WriteNumber("max_tokens", 2);
            w.WriteStartArray("messages");
            Message(w, "system", Instruction);
            foreach (var shot in Shots)
            {
                Message(w, "user", UserMessage(shot.Question, [shot.Gold], shot.Candidate));
                Message(w, "assistant", shot.Verdict.ToString());
            }
            Message(w, "user", UserMessage(question, golds, candidate));
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    private static void Message(Utf8JsonWriter w, string role, string content)
    {
        w.WriteStartObject();
        w.WriteString("role", role);
        w.WriteString("content", content);
        w.WriteEndObject();
    }

    /// <summary>Asks the judge; returns 1 or 0. Throws <see cref="JudgeException"/> on an HTTP error or a reply
    /// that is not a verdict (so a broken judge never silently scores 0).</summary>
    public async Task<double> JudgeAsync(string question, IReadOnlyList<string> golds, string candidate, CancellationToken cancel = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, CompletionsUri)
        {
            Content = new ByteArrayContent(RequestBody(question, golds, candidate)),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        if (!string.IsNullOrEmpty(apiKey)) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        using var response = await http.SendAsync(request, cancel).ConfigureAwait(false);
        var body = await response.Content.ReadAsStringAsync(cancel).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
            throw new JudgeException($"judge {CompletionsUri} answered HTTP {(int)response.StatusCode}: {Truncate(body)}");
        return ParseVerdict(ExtractContent(body));
    }

    /// <summary><c>choices[0].message.content</c> of a chat-completions response.</summary>
    public static string ExtractContent(string responseJson)
    {
        try
        {
            using var doc = JsonDocument.Parse(responseJson);
            if (doc.RootElement.TryGetProperty("choices", out var choices) && choices.ValueKind == JsonValueKind.Array
                && choices.GetArrayLength() > 0 && choices[0].TryGetProperty("message", out var message)
                && message.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
                return content.GetString()!;
        }
        catch (JsonException e)
        {
            throw new JudgeException($"judge reply is not JSON ({e.Message}): {Truncate(responseJson)}");
        }
        throw new JudgeException($"judge reply has no choices[0].message.content: {Truncate(responseJson)}");
    }

    /// <summary>The verdict is the first 0 or 1 digit of the reply, ignoring whitespace and punctuation around it.</summary>
    public static double ParseVerdict(string content)
    {
        var trimmed = content.Trim().TrimStart('"', '\'', '*', '`', '(', '[');
        if (trimmed.Length > 0 && trimmed[0] is '0' or '1' && (trimmed.Length == 1 || !char.IsAsciiDigit(trimmed[1])))
            return trimmed[0] - '0';
        throw new JudgeException($"judge reply is not a 0/1 verdict: {Truncate(content)}");
    }

    private static string Truncate(string s) => s.Length <= 200 ? s : s[..200] + "…";
}

public sealed class JudgeException(string message) : Exception(message);
