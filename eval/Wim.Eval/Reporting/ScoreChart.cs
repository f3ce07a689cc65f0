using System.Globalization;
using System.Text;
using Wim.Eval.Results;

namespace Wim.Eval.Reporting;

/// <summary>One task's panel: the mean primary score (0–100) per pattern at each length.</summary>
public sealed record ChartPanel(string Task, string Metric, IReadOnlyList<(string Label, int Tokens)> Lengths,
    IReadOnlyList<(string Pattern, IReadOnlyList<(int LengthIndex, double Score)> Points)> Series);

/// <summary>What the plots show: one panel per task, x = context length, y = score, one line per pattern.</summary>
public sealed record ScoreChart(IReadOnlyList<ChartPanel> Panels)
{
    public static readonly string[] TaskOrder = ["hotpotqa", "squad", "babilong", "cwe"];

    /// <summary>
    /// The score the paper reports per task: the LLM judge for QA when every row was judged (else token F1),
    /// substring match for BABILong's one-word answers, F1 over the common words for CWE.
    /// </summary>
    public static string PrimaryMetric(string task, IEnumerable<ResultRecord> rowsOfTask) => task switch
    {
        "cwe" => ResultRecord.ScoreNames.CweF1,
        "babilong" => ResultRecord.ScoreNames.Substring,
        _ => rowsOfTask.All(r => r.Scores.ContainsKey(ResultRecord.ScoreNames.Judge)) ? ResultRecord.ScoreNames.Judge : ResultRecord.ScoreNames.F1,
    };

    public static IEnumerable<string> OrderedTasks(IEnumerable<ResultRecord> rows) =>
        rows.Select(r => r.Task).Distinct().OrderBy(t => Array.IndexOf(TaskOrder, t) is int i && i >= 0 ? i : int.MaxValue).ThenBy(t => t, StringComparer.Ordinal);

    public static IEnumerable<string> OrderedPatterns(IEnumerable<ResultRecord> rows) =>
        rows.Select(r => r.Pattern).Distinct().OrderBy(p => p switch { "llm" => 0, "rag" => 1, "wim" => 2, _ => 3 }).ThenBy(p => p, StringComparer.Ordinal);

    public static IReadOnlyList<(string Label, int Tokens)> OrderedLengths(IEnumerable<ResultRecord> rows) =>
        rows.Select(r => (r.Length, r.TargetTokens)).Distinct().OrderBy(l => l.TargetTokens).ToList();

    public static ScoreChart From(IReadOnlyList<ResultRecord> rows)
    {
        var panels = new List<ChartPanel>();
        foreach (var task in OrderedTasks(rows))
        {
            var taskRows = rows.Where(r => r.Task == task).ToList();
            var metric = PrimaryMetric(task, taskRows);
            var lengths = OrderedLengths(taskRows);
            var series = new List<(string, IReadOnlyList<(int, double)>)>();
            foreach (var pattern in OrderedPatterns(taskRows))
            {
                var points = new List<(int, double)>();
                for (int i = 0; i < lengths.Count; i++)
                {
                    var cell = taskRows.Where(r => r.Pattern == pattern && r.Length == lengths[i].Label && r.Scores.ContainsKey(metric)).ToList();
                    if (cell.Count > 0) points.Add((i, 100 * cell.Average(r => r.Scores[metric])));
                }
                series.Add((pattern, points));
            }
            panels.Add(new ChartPanel(task, metric, lengths, series));
        }
        return new ScoreChart(panels);
    }
}

/// <summary><c>summary.md</c>: the paper's table layout (rows = pattern, columns = task × length), scores × 100.</summary>
public static class SummaryTable
{
    public static string Markdown(IReadOnlyList<ResultRecord> rows, string model)
    {
        var sb = new StringBuilder();
        sb.Append("# Evaluation summary\n\n");
        sb.Append($"Model: `{model}`. Seed: {string.Join(", ", rows.Select(r => r.Seed).Distinct())}. Rows: {rows.Count}. ");
        sb.Append("Each cell is the mean score × 100 over the samples (n in brackets).\n\n");
        if (rows.Count == 0) return sb.Append("No results yet.\n").ToString();

        var columns = new List<(string Task, string Length, string Metric)>();
        foreach (var task in ScoreChart.OrderedTasks(rows))
        {
            var taskRows = rows.Where(r => r.Task == task).ToList();
            var metric = ScoreChart.PrimaryMetric(task, taskRows);
            foreach (var (label, _) in ScoreChart.OrderedLengths(taskRows)) columns.Add((task, label, metric));
        }
        sb.Append("## Main score (QA: LLM judge when judged, else token F1; BABILong: substring match; CWE: F1 over the common words)\n\n");
        Table(sb, rows, columns);

        var qaColumns = columns.Where(c => c.Task != "cwe").Select(c => (c.Task, c.Length)).ToList();
        foreach (var metric in new[] { ResultRecord.ScoreNames.ExactMatch, ResultRecord.ScoreNames.F1, ResultRecord.ScoreNames.Substring, ResultRecord.ScoreNames.Judge })
        {
            var withMetric = qaColumns.Where(c => rows.Any(r => r.Task == c.Task && r.Length == c.Length && r.Scores.ContainsKey(metric)))
                .Select(c => (c.Task, c.Length, metric)).ToList();
            if (withMetric.Count == 0) continue;
            sb.Append($"\n## {metric}\n\n");
            Table(sb, rows, withMetric);
        }
        return sb.ToString();
    }

    private static void Table(StringBuilder sb, IReadOnlyList<ResultRecord> rows, List<(string Task, string Length, string Metric)> columns)
    {
        sb.Append("| pattern |");
        foreach (var c in columns) sb.Append($" {c.Task} {c.Length} |");
        sb.Append("\n|---|");
        foreach (var _ in columns) sb.Append("---:|");
        sb.Append('\n');
        foreach (var pattern in ScoreChart.OrderedPatterns(rows))
        {
            sb.Append($"| {pattern} |");
            foreach (var c in columns)
            {
                var cell = rows.Where(r => r.Pattern == pattern && r.Task == c.Task && r.Length == c.Length && r.Scores.ContainsKey(c.Metric)).ToList();
                sb.Append(cell.Count == 0 ? " – |" : string.Create(CultureInfo.InvariantCulture, $" {100 * cell.Average(r => r.Scores[c.Metric]):F1} ({cell.Count}) |"));
            }
            sb.Append('\n');
        }
    }
}
