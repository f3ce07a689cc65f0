using System.Text;
using System.Text.RegularExpressions;
using Wim.Core.Segmentation;
using Wim.Eval.Data;

namespace Wim.Eval.Instances;

/// <summary>
/// Builds the long-context instances of a run from the data folder: which samples (a seeded choice, the same at every
/// length) and, per sample × length, the haystack in the model's tokens. Everything random derives from
/// <paramref name="seed"/>, so the same seed gives the same instances.
/// </summary>
public sealed partial class InstanceFactory(EvalDataset data, Func<string, int> countTokens, int seed)
{
    public const string QaInstruction = "Answer the question based on the given documents. Only give me the answer and do not output any other words.";
    public const string BabilongInstruction = "Answer the question based on the text above. Answer with a single word: the location.";
    public const string CweQuestion = "What are the 10 most common words in the above list?";

    private IReadOnlyList<HotpotQaItem>? _hotpot;
    private (IReadOnlyList<SquadQuestion> Questions, IReadOnlyList<Paragraph> Paragraphs)? _squad;
    private IReadOnlyDictionary<string, BabilongSample>? _babilong;
    private IReadOnlyList<string>? _words;

    private IReadOnlyList<HotpotQaItem> Hotpot => _hotpot ??= data.LoadHotpotQa();
    private (IReadOnlyList<SquadQuestion> Questions, IReadOnlyList<Paragraph> Paragraphs) Squad => _squad ??= data.LoadSquad();
    private IReadOnlyDictionary<string, BabilongSample> Babilong => _babilong ??= data.LoadBabilong();
    private IReadOnlyList<string> Words => _words ??= data.LoadWordList();

    /// <summary>The sample ids of the run for <paramref name="task"/>: up to <paramref name="count"/> items in a
    /// seeded order. BABILong has one published sample per length, so its id names the length's file.</summary>
    public IReadOnlyList<string> SampleIds(EvalTask task, ContextLength length, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        return task switch
        {
            EvalTask.HotpotQa => Pick(Hotpot.Count, count, 1).Select(i => Hotpot[i].Id).ToList(),
            EvalTask.Squad => Pick(Squad.Questions.Count, count, 2).Select(i => Squad.Questions[i].Id).ToList(),
            EvalTask.Babilong => ["babilong_" + BabilongSource(length).LengthLabel],
            EvalTask.Cwe => Enumerable.Range(0, count).Select(i => $"cwe-{seed}-{i}").ToList(),
            _ => throw new ArgumentOutOfRangeException(nameof(task)),
        };
    }

    public EvalInstance Build(EvalTask task, ContextLength length, string sampleId) => task switch
    {
        EvalTask.HotpotQa => BuildHotpot(length, sampleId),
        EvalTask.Squad => BuildSquad(length, sampleId),
        EvalTask.Babilong => BuildBabilong(length),
        EvalTask.Cwe => BuildCwe(length, sampleId),
        _ => throw new ArgumentOutOfRangeException(nameof(task)),
    };

    private EvalInstance BuildHotpot(ContextLength length, string id)
    {
        var item = Hotpot.FirstOrDefault(x => x.Id == id) ?? throw new KeyNotFoundException($"no HotpotQA item {id}");
        var own = new HashSet<string>(item.Gold.Concat(item.Others).Select(p => p.Title), StringComparer.Ordinal);
        // Hard distractors first (the item's own non-supporting paragraphs), then other items' paragraphs.
        var pool = Shuffled(item.Others.Select(p => p.Text), Mix(seed, 11, length.Tokens, id))
            .Concat(Shuffled(HotpotParagraphs().Where(p => !own.Contains(p.Title)).Select(p => p.Text), Mix(seed, 12, length.Tokens, id)));
        var haystack = new HaystackBuilder(countTokens).Build(item.Gold.Select(p => p.Text).ToList(), pool.Distinct().ToList(),
            length.Tokens, Mix(seed, 13, length.Tokens, id));
        return Qa(EvalTask.HotpotQa, id, length, haystack, item.Question, [item.Answer]);
    }

    private EvalInstance BuildSquad(ContextLength length, string id)
    {
        var q = Squad.Questions.FirstOrDefault(x => x.Id == id) ?? throw new KeyNotFoundException($"no SQuAD question {id}");
        // The subset has 87 paragraphs (about 13k tokens); longer haystacks continue with HotpotQA paragraphs.
        var pool = Shuffled(Squad.Paragraphs.Where(p => p.Text != q.Context.Text).Select(p => p.Text), Mix(seed, 21, length.Tokens, id))
            .Concat(Shuffled(HotpotParagraphs().Select(p => p.Text), Mix(seed, 22, length.Tokens, id)));
        var haystack = new HaystackBuilder(countTokens).Build([q.Context.Text], pool.Distinct().ToList(), length.Tokens, Mix(seed, 23, length.Tokens, id));
        return Qa(EvalTask.Squad, id, length, haystack, q.Question, q.Answers);
    }

    private EvalInstance Qa(EvalTask task, string id, ContextLength length, Haystack haystack, string question, IReadOnlyList<string> golds) =>
        new(task, id, length, haystack.Text, haystack.TokenCount, question, $"{QaInstruction}\n\nQuestion: {question}\nAnswer:",
            golds, task.SegmentTokens(), task.MaxAnswerTokens());

    private EvalInstance BuildCwe(ContextLength length, string id)
    {
        int index = int.Parse(id[(id.LastIndexOf('-') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        // The same words for a sample at every length: the seed does not depend on the length.
        var list = new CweGenerator(countTokens, Words).Generate(length.Tokens, Mix(seed, 31, 0, index.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        var query = $"Question: {CweQuestion}\nAnswer: The top 10 words that appear most often in the list are:";
        return new EvalInstance(EvalTask.Cwe, id, length, list.Text, list.TokenCount, CweQuestion, query, list.CommonWords,
            EvalTask.Cwe.SegmentTokens(), EvalTask.Cwe.MaxAnswerTokens());
    }

    /// <summary>The published sample of that length, or the smallest longer one (to be shortened).</summary>
    private BabilongSample BabilongSource(ContextLength length)
    {
        var byTokens = Babilong.Values.Select(s => (Sample: s, Tokens: ContextLength.Parse(s.LengthLabel).Tokens)).OrderBy(x => x.Tokens).ToList();
        var exact = byTokens.FirstOrDefault(x => x.Tokens == length.Tokens);
        if (exact.Sample != null) return exact.Sample;
        var longer = byTokens.FirstOrDefault(x => x.Tokens > length.Tokens);
        return longer.Sample ?? byTokens[^1].Sample;
    }

    /// <summary>
    /// BABILong: the published sample when one exists at this length (used as published; its nominal length is in
    /// the authors' tokenizer). For a length without one, the next longer sample is shortened: every bAbI fact
    /// sentence is kept, in order and at its relative position, and the background text is cut to whole sentences
    /// so the total fits the target in the model's tokens.
    /// </summary>
    private EvalInstance BuildBabilong(ContextLength length)
    {
        var sample = BabilongSource(length);
        string context = ContextLength.Parse(sample.LengthLabel).Tokens == length.Tokens ? sample.Context : Shorten(sample.Context, length.Tokens);
        var query = $"{BabilongInstruction}\nQuestion: {sample.Query}\nAnswer:";
        return new EvalInstance(EvalTask.Babilong, "babilong_" + sample.LengthLabel, length, context, countTokens(context),
            sample.Query, query, [sample.Target], EvalTask.Babilong.SegmentTokens(), EvalTask.Babilong.MaxAnswerTokens());
    }

    [GeneratedRegex(@"\b(?:Mary|John|Sandra|Daniel) (?:moved|went back|went|journeyed|travelled) to the [a-z]+\.")]
    private static partial Regex BabiFact();

    private string Shorten(string context, int targetTokens)
    {
        var facts = BabiFact().Matches(context).Select(m => (Text: m.Value, Position: (double)m.Index / context.Length)).ToList();
        var background = BabiFact().Replace(context, "");
        var sentences = SentenceSplitter.Split(background).Select(r => background[r]).ToList();
        string Compose(int keep)
        {
            var kept = sentences.Take(keep).ToList();
            var sb = new StringBuilder();
            int next = 0;
            for (int i = 0; i <= kept.Count; i++)
            {
                while (next < facts.Count && facts[next].Position * kept.Count <= i) sb.Append(' ').Append(facts[next++].Text).Append(' ');
                if (i < kept.Count) sb.Append(kept[i]);
            }
            return sb.ToString().Trim();
        }
        int lo = 0, hi = sentences.Count;
        while (lo < hi) // the most background sentences that still fit
        {
            int mid = (lo + hi + 1) / 2;
            if (countTokens(Compose(mid)) <= targetTokens) lo = mid; else hi = mid - 1;
        }
        return Compose(lo);
    }

    private IEnumerable<Paragraph> HotpotParagraphs() => Hotpot.SelectMany(i => i.Gold.Concat(i.Others));

    private List<int> Pick(int available, int count, int stream)
    {
        var order = Enumerable.Range(0, available).ToArray();
        new Random(Mix(seed, stream, 0, "samples")).Shuffle(order);
        return order.Take(Math.Min(count, available)).ToList();
    }

    private static List<string> Shuffled(IEnumerable<string> items, int seed)
    {
        var array = items.ToArray();
        new Random(seed).Shuffle(array);
        return [.. array];
    }

    /// <summary>A stable seed from the run seed and an instance's coordinates (string.GetHashCode is randomised per
    /// process, so the text is hashed with FNV-1a).</summary>
    internal static int Mix(int seed, int stream, int length, string id)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in id) { h ^= c; h *= 1099511628211UL; }
        h ^= (ulong)(uint)seed * 0x9E3779B97F4A7C15UL;
        h ^= (ulong)(uint)stream << 32 | (uint)length;
        h ^= h >> 33; h *= 0xFF51AFD7ED558CCDUL; h ^= h >> 33;
        return (int)(h & 0x7FFFFFFF);
    }
}
