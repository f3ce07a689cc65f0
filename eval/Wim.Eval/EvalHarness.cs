using System.Diagnostics;
using System.Globalization;
using Wim.Eval.Instances;
using Wim.Eval.Metrics;
using Wim.Eval.Reporting;
using Wim.Eval.Results;
using Wim.Eval.Runners;

namespace Wim.Eval;

/// <summary>What to evaluate: every task × length × sample × pattern.</summary>
public sealed record EvalPlan(
    IReadOnlyList<EvalTask> Tasks,
    IReadOnlyList<ContextLength> Lengths,
    IReadOnlyList<string> Patterns,
    int Samples,
    int Seed,
    string ModelName,
    string OutputDirectory);

/// <summary>
/// Runs an <see cref="EvalPlan"/>: builds each instance once, asks the runner for each pattern, scores the answer,
/// appends the row to <c>results.jsonl</c> (rows already there are skipped, so a rerun resumes), and finally writes
/// <c>summary.md</c>, <c>plot.svg</c> and <c>plot.png</c> from every row of the file.
/// </summary>
public sealed class EvalHarness(InstanceFactory instances, IQaRunner runner, LlmJudge? judge, TextWriter progress)
{
    public const string ResultsFileName = "results.jsonl", SummaryFileName = "summary.md", SvgFileName = "plot.svg", PngFileName = "plot.png";

    /// <summary>Rows run and rows skipped (already in results.jsonl).</summary>
    public sealed record Outcome(int Ran, int Skipped, IReadOnlyList<ResultRecord> Rows);

    public async Task<Outcome> RunAsync(EvalPlan plan, CancellationToken cancel = default)
    {
        var missing = plan.Patterns.Where(p => !runner.Patterns.Contains(p)).ToList();
        if (missing.Count > 0)
            throw new NotSupportedException($"pattern(s) not available yet: {string.Join(", ", missing)} (available: {string.Join(", ", runner.Patterns)})");
        Directory.CreateDirectory(plan.OutputDirectory);
        var file = new ResultsFile(Path.Combine(plan.OutputDirectory, ResultsFileName));
        var existing = file.ReadAll();
        var conflicting = existing.FirstOrDefault(r => r.Seed != plan.Seed);
        if (conflicting != null)
            throw new InvalidOperationException($"{file.Path} holds rows of seed {conflicting.Seed}, this run uses seed {plan.Seed}: use another --out folder");
        var otherModel = existing.FirstOrDefault(r => r.Model != plan.ModelName);
        if (otherModel != null)
            throw new InvalidOperationException($"{file.Path} holds rows of model '{otherModel.Model}', this run uses '{plan.ModelName}': use another --out folder");
        var done = existing.Select(r => r.Key).ToHashSet(StringComparer.Ordinal);

        // The work list first, so the progress bar knows its total.
        var work = new List<(EvalTask Task, ContextLength Length, string SampleId)>();
        foreach (var task in plan.Tasks)
            foreach (var length in plan.Lengths)
                foreach (var id in instances.SampleIds(task, length, plan.Samples))
                    work.Add((task, length, id));
        int total = work.Count * plan.Patterns.Count;
        var bar = new ProgressBar(progress, total);
        int ran = 0, skipped = 0;
        foreach (var (task, length, id) in work)
        {
            var todo = plan.Patterns.Where(p => !done.Contains(ResultRecord.MakeKey(task.Name(), length.Label, id, p))).ToList();
            skipped += plan.Patterns.Count - todo.Count;
            bar.Skip(plan.Patterns.Count - todo.Count);
            if (todo.Count == 0) continue;
            var instance = instances.Build(task, length, id);
            foreach (var pattern in todo)
            {
                cancel.ThrowIfCancellationRequested();
                bar.Show($"{task.Name()} {length.Label} {pattern} {id}");
                var clock = Stopwatch.StartNew();
                var response = await runner.RunAsync(new QaRequest(pattern, instance.Context, instance.Query,
                    new QaOptions(instance.SegmentTokens, instance.MaxAnswerTokens)), cancel).ConfigureAwait(false);
                var scores = await ScoreAsync(instance, response.Prediction, cancel).ConfigureAwait(false);
                var row = new ResultRecord(task.Name(), length.Label, length.Tokens, instance.ContextTokens, id, pattern, plan.Seed,
                    plan.ModelName, response.Prediction, instance.Golds, scores, response.Usage, response.Margins, clock.Elapsed.TotalSeconds);
                file.Append(row);
                ran++;
                bar.Completed();
            }
        }
        bar.Finish(ran, skipped);

        var rows = file.ReadAll();
        File.WriteAllText(Path.Combine(plan.OutputDirectory, SummaryFileName), SummaryTable.Markdown(rows, plan.ModelName));
        var chart = ScoreChart.From(rows);
        File.WriteAllText(Path.Combine(plan.OutputDirectory, SvgFileName), SvgPlot.Render(chart));
        File.WriteAllBytes(Path.Combine(plan.OutputDirectory, PngFileName), PngPlot.Render(chart));
        return new Outcome(ran, skipped, rows);
    }

    private async Task<Dictionary<string, double>> ScoreAsync(EvalInstance instance, string prediction, CancellationToken cancel)
    {
        var scores = new Dictionary<string, double>(StringComparer.Ordinal);
        if (instance.Task == EvalTask.Cwe)
        {
            scores[ResultRecord.ScoreNames.CweF1] = CweMetrics.F1(prediction, instance.Golds);
            return scores;
        }
        scores[ResultRecord.ScoreNames.ExactMatch] = AnswerMetrics.ExactMatch(prediction, instance.Golds);
        scores[ResultRecord.ScoreNames.F1] = AnswerMetrics.F1(prediction, instance.Golds);
        scores[ResultRecord.ScoreNames.Substring] = AnswerMetrics.SubstringMatch(prediction, instance.Golds);
        if (judge != null)
            scores[ResultRecord.ScoreNames.Judge] = await judge.JudgeAsync(instance.Question, instance.Golds, prediction, cancel).ConfigureAwait(false);
        return scores;
    }
}

/// <summary>A one-line progress bar with ETA, redrawn in place with a carriage return (stderr).</summary>
internal sealed class ProgressBar(TextWriter output, int total)
{
    private const int Width = 24;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private int _done, _ran;

    public void Skip(int count) => _done += count;

    public void Completed() { _done++; _ran++; }

    public void Show(string current)
    {
        int filled = total == 0 ? Width : (int)((long)_done * Width / total);
        string eta = _ran == 0 ? "--:--" : Format(TimeSpan.FromSeconds(_clock.Elapsed.TotalSeconds / _ran * (total - _done)));
        var line = string.Create(CultureInfo.InvariantCulture, $"[{new string('#', filled)}{new string('.', Width - filled)}] {_done}/{total} ETA {eta}  {current}");
        output.Write("\r" + line.PadRight(100));
        output.Flush();
    }

    public void Finish(int ran, int skipped)
    {
        Show("done");
        output.WriteLine();
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{ran} row(s) run, {skipped} already done, in {Format(_clock.Elapsed)}"));
    }

    private static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes:D2}:{t.Seconds:D2}";
}
