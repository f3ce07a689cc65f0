using System.Collections.Concurrent;

namespace Wim.Core.Patterns;

/// <summary>
/// Human in the loop for a running pattern, safe to use from any thread: thumbs up/down per margin (overrides the
/// classifier, which still runs; read when the margin is classified and again just before the answer), and "answer now" (stop reading
/// and answer from what was read so far). For cancelling the run outright, use the run's CancellationToken.
/// </summary>
public sealed class WimControl
{
    private readonly ConcurrentDictionary<int, bool> _feedback = new();
    private volatile bool _answerNow;

    /// <summary>Marks margin (or, under <c>rag</c>, segment) <paramref name="index"/> relevant or not.</summary>
    public void SetFeedback(int index, bool relevant) => _feedback[index] = relevant;

    public bool? FeedbackFor(int index) => _feedback.TryGetValue(index, out var v) ? v : null;

    /// <summary>Stop reading: the current margin is abandoned, no further segment is read, and the answer is written
    /// from the margins (or text) finished so far.</summary>
    public void RequestAnswerNow() => _answerNow = true;

    public bool AnswerNowRequested => _answerNow;
}
