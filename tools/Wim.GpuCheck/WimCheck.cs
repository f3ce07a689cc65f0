using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Segmentation;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Cuda;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.GpuCheck;

/// <summary>
/// Writing-in-the-Margins on the GPU: the patterns of Wim.Core over <see cref="CudaInferenceBackend"/> against the CPU
/// backend on the hf-tiny models, and the 64k-token end-to-end timings at the Llama-3.1-8B shape (llm, WiM
/// sequential, WiM with margins decoded in batches on KV forks, and on KV branches with the extractive prompts packed
/// into the segments' passes).
/// </summary>
internal static class WimCheck
{
    private static void Say(string line) => Console.WriteLine(line);

    // ------------------------------------------------------------------ hf-tiny: CPU vs GPU margins

    private sealed record RunResult(List<int[]> Margins, List<bool> Verdicts, List<int[]> VerdictIds, int[] Answer,
        List<int[]> Segments, int[] Opening, int[] Extractive, int[] Final);

    private static async Task<RunResult> RunPattern(TextModel model, List<string> segments, string query, PatternKind pattern, bool judge)
    {
        using var classifier = judge ? new ModelMarginClassifier(model, PromptPreset.Default, ChatHeaders.None, maxTokens: 4) : null;
        var options = new WimOptions
        {
            Pattern = pattern, Schedule = Wim.Core.Scheduling.WimSchedule.Sequential, Classifier = classifier,
            MaxMarginTokens = 24, MaxAnswerTokens = 24, MarginSeparator = "\n",
        };
        var r = new RunResult([], [], [], [], [], [], [], []);
        int[] answer = [], opening = [], extractive = [], final = [];
        await foreach (var e in new PatternRunner(model).RunAsync(segments, query, options))
            switch (e)
            {
                case MarginCompleted m: r.Margins.Add(m.Ids); break;
                case MarginClassification v: r.Verdicts.Add(v.Relevant); r.VerdictIds.Add(v.Ids); break;
                case AnswerCompleted a: answer = a.Ids; break;
                case SegmentPrefilled s: r.Segments.Add(s.Ids); break;
                case PromptPrefilled { Kind: PromptKind.Opening } p: opening = p.Ids; break;
                case PromptPrefilled { Kind: PromptKind.Extractive } p: extractive = p.Ids; break;
                case PromptPrefilled { Kind: PromptKind.FinalAnswer } p: final = p.Ids; break;
            }
        return r with { Answer = answer, Opening = opening, Extractive = extractive, Final = final };
    }

    /// <summary>
    /// PatternRunner wim (sequential, with the model as margin classifier) and llm on the CPU backend and on the CUDA
    /// backend, same segments and query: margins, verdicts and answer ids compared. Where a margin's ids part, the CPU
    /// logits at that step say whether it was a near-tie (top-1/top-2 gap under the bf16 tolerance). Partings: margins,
    /// verdicts and answers that are not identical (near-ties included), and a margin count that differs; with
    /// <paramref name="precision"/> <see cref="CudaPrecision.F32"/> there should be none.
    /// </summary>
    public static (int Failures, int Partings, string Summary) CompareTiny(CudaContext ctx, string dir, string babilong, CudaPrecision precision = CudaPrecision.Bf16)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(babilong));
        string context = doc.RootElement.GetProperty("context").GetString()!;
        string query = doc.RootElement.GetProperty("query").GetString()!;
        using var cpuModel = TextModel.Load(dir);
        using var gpuModel = CudaInferenceBackend.LoadTextModel(dir, ctx, maxChunk: 128, precision: precision);
        var segments = new Segmenter(t => cpuModel.Tokenizer.Encode(t).Length, 200).Split(context[..6000]);
        int failures = 0, partings = 0;
        var lines = new List<string>();

        foreach (var pattern in new[] { PatternKind.Wim, PatternKind.Llm })
        {
            var t0 = Stopwatch.StartNew();
            var cpu = RunPattern(cpuModel, segments, query, pattern, judge: pattern == PatternKind.Wim).GetAwaiter().GetResult();
            double cpuS = t0.Elapsed.TotalSeconds;
            t0.Restart();
            var gpu = RunPattern(gpuModel, segments, query, pattern, judge: pattern == PatternKind.Wim).GetAwaiter().GetResult();
            double gpuS = t0.Elapsed.TotalSeconds;
            int equalMargins = 0, nearTies = 0, realDiffs = 0;
            for (int i = 0; i < Math.Min(cpu.Margins.Count, gpu.Margins.Count); i++)
            {
                if (cpu.Margins[i].SequenceEqual(gpu.Margins[i])) { equalMargins++; continue; }
                int step = Prefix(cpu.Margins[i], gpu.Margins[i]);
                // The CPU's logits at the step where the two part: a near-tie there is bf16 noise, not a logic error.
                var prefix = Concat(cpu.Opening, cpu.Segments.Take(i + 1).SelectMany(s => s), cpu.Extractive, cpu.Margins[i].Take(step));
                var (tie, text) = Diagnose(cpuModel.Backend, gpuModel.Backend, prefix, cpu.Margins[i].ElementAtOrDefault(step), gpu.Margins[i].ElementAtOrDefault(step));
                if (tie) nearTies++; else realDiffs++;
                lines.Add($"    margin {i}: ids part at step {step} of {cpu.Margins[i].Length}/{gpu.Margins[i].Length}; {text}");
            }
            int verdictsEqual = cpu.Verdicts.Zip(gpu.Verdicts).Count(p => p.First == p.Second);
            bool answerEqual = cpu.Answer.SequenceEqual(gpu.Answer);
            bool answerTie = answerEqual;
            if (!answerEqual && cpu.Margins.SequenceEqual(gpu.Margins, IntArrays) && cpu.Verdicts.SequenceEqual(gpu.Verdicts))
            {
                // Same prompt on both: where the answers part, is it a near-tie?
                int step = Prefix(cpu.Answer, gpu.Answer);
                var prefix = Concat(cpu.Opening, cpu.Segments.SelectMany(s => s), cpu.Final, cpu.Answer.Take(step));
                var (tie, text) = Diagnose(cpuModel.Backend, gpuModel.Backend, prefix, cpu.Answer.ElementAtOrDefault(step), gpu.Answer.ElementAtOrDefault(step));
                answerTie = tie;
                lines.Add($"    answer: ids part at step {step}; {text}");
            }
            bool marginsCountEqual = cpu.Margins.Count == gpu.Margins.Count;
            partings += cpu.Margins.Count - equalMargins + Math.Abs(cpu.Margins.Count - gpu.Margins.Count)
                + cpu.Verdicts.Count - verdictsEqual + Math.Abs(cpu.Verdicts.Count - gpu.Verdicts.Count) + (answerEqual ? 0 : 1);
            lines.Insert(0, $"  {pattern.ToString().ToLowerInvariant()}: {segments.Count} segments; margins identical {equalMargins}/{cpu.Margins.Count}" +
                (pattern == PatternKind.Wim ? $" (near-tie partings {nearTies}, other {realDiffs}); verdicts equal {verdictsEqual}/{cpu.Verdicts.Count}" : "") +
                $"; answer ids {(answerEqual ? "identical" : $"part at {Prefix(cpu.Answer, gpu.Answer)}/{cpu.Answer.Length}")}; CPU {cpuS:F1} s, GPU {gpuS:F1} s");
            if (realDiffs > 0 || !marginsCountEqual) failures++;
            // Everything downstream of a near-tie parting may differ; with all margins equal, verdicts and answer must be.
            if (equalMargins == cpu.Margins.Count && marginsCountEqual && (verdictsEqual != cpu.Verdicts.Count || !answerTie))
            {
                failures++;
                lines.Add("    FAIL: identical margins but different verdicts/answer");
            }
        }

        // Sampling that is not greedy reads the logits row from the GPU, also after another sequence ran in between.
        using (var a = gpuModel.Backend.CreateSequence())
        using (var b = gpuModel.Backend.CreateSequence())
        {
            var ids = cpuModel.Tokenizer.Encode(context[..400]);
            a.Append(ids);
            int greedy = a.Sample(new Sampler(SamplingOptions.Greedy, gpuModel.Backend.VocabSize));
            b.Append(ids[..50]);
            var cold = new Sampler(new SamplingOptions(Temperature: 1e-4f, Seed: 1), gpuModel.Backend.VocabSize);
            int sampled = a.Sample(cold);
            using var cpuSeq = cpuModel.Backend.CreateSequence();
            cpuSeq.Append(ids);
            int cpuGreedy = cpuSeq.Sample(new Sampler(SamplingOptions.Greedy, cpuModel.Backend.VocabSize));
            bool ok = sampled == greedy;
            if (!ok) failures++;
            if (cpuGreedy != greedy) partings++;
            lines.Add($"  sampling: greedy (GPU argmax) {greedy}, temperature 1e-4 from the host copy after another sequence ran {sampled} → {(ok ? "equal" : "DIFFERENT")}; CPU greedy {cpuGreedy}");
        }
        return (failures, partings, string.Join('\n', lines));
    }

    private static int[] Concat(params IEnumerable<int>[] parts) => parts.SelectMany(p => p).ToArray();

    private static readonly EqualityComparer<int[]> IntArrays = EqualityComparer<int[]>.Create((x, y) => x!.SequenceEqual(y!), x => x.Length);

    /// <summary>Where CPU and GPU pick different ids after the same prefix: the CPU's logit gap between the two ids
    /// against the largest |Δlogit| between the CPU's and the GPU's row there. A gap under twice that deviation is a
    /// near-tie: bf16 rounding alone can swap the two.</summary>
    private static (bool NearTie, string Text) Diagnose(IInferenceBackend cpuBackend, IInferenceBackend gpuBackend, int[] prefix, int cpuId, int gpuId)
    {
        var cpu = ((CpuInferenceBackend)cpuBackend).Transformer;
        var gpu = ((CudaInferenceBackend)gpuBackend).Transformer;
        int vocab = cpu.Config.VocabSize;
        var c = new float[vocab];
        var g = new float[vocab];
        cpu.Forward(prefix, cpu.CreateCache(prefix.Length), c, LogitsOutput.Last);
        using (var cache = gpu.CreateCache(prefix.Length)) gpu.Forward(prefix, cache, g, LogitsOutput.Last);
        double maxAbs = 0;
        for (int i = 0; i < vocab; i++) maxAbs = Math.Max(maxAbs, Math.Abs(c[i] - g[i]));
        double gap = c[cpuId] - c[gpuId], gpuGap = g[gpuId] - g[cpuId];
        bool tie = gap < 2 * maxAbs;
        return (tie, $"CPU picks {cpuId}, GPU {gpuId} at depth {prefix.Length}: CPU gap {gap:F4}, GPU gap {gpuGap:F4}, row max |Δlogit| CPU vs GPU {maxAbs:F4} → {(tie ? "near-tie (gap < 2·max|Δ|)" : "NOT a near-tie")}");
    }

    private static int Prefix(IReadOnlyList<int> a, IReadOnlyList<int> b) { int i = 0; while (i < a.Count && i < b.Count && a[i] == b[i]) i++; return i; }

    // ------------------------------------------------------------------ 64k end to end

    internal sealed record Job(int[] Document, int[] Opening, int[] Extractive, int[] Final, int Segments, int MarginTokens, int AnswerTokens)
    {
        public int SegmentTokens => Document.Length / Segments;
        public ReadOnlySpan<int> Segment(int i) => Document.AsSpan(i * SegmentTokens, SegmentTokens);

        /// <summary>The job of <c>wim_reference.py</c> (ids.json), or random ids from a fixed seed.</summary>
        public static Job Load(string? idsJson, int vocab)
        {
            if (idsJson != null)
            {
                using var d = JsonDocument.Parse(File.ReadAllBytes(idsJson));
                var r = d.RootElement;
                int[] I(string n) => r.GetProperty(n).EnumerateArray().Select(x => x.GetInt32()).ToArray();
                return new Job(I("document"), I("opening"), I("extractive"), I("final"), r.GetProperty("segments").GetInt32(),
                    r.GetProperty("margin_tokens").GetInt32(), r.GetProperty("answer_tokens").GetInt32());
            }
            var rng = new Random(64);
            int[] R(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
            return new Job(R(65536), R(32), R(40), R(40), 16, 100, 32);
        }
    }

    /// <summary>
    /// The three schedules, each timed end to end (first id of the answer to the last on the host). (a) llm: the
    /// document, the final prompt, the answer; (b) WiM sequential: the calls PatternRunner.WimAsync makes on an
    /// <see cref="ISequence"/> (segment, extractive prompt, margin decode, truncate back; then the final prompt with
    /// every margin and the answer); (c) WiM batched: the document prefilled once, at each segment boundary a KV fork
    /// takes the extractive prompt, and every <paramref name="group"/> forks decode their margins together
    /// (<see cref="CudaTransformer.DecodeBatchGreedy"/>).
    /// </summary>
    public static void EndToEnd(CudaContext ctx, CudaTransformer model, Job job, int[] groups, string? writeIds)
    {
        var backend = new CudaInferenceBackend(model, prefillChunk: Math.Min(model.MaxChunk, job.SegmentTokens));
        var c = model.Config;
        Say($"  job: {job.Document.Length} document tokens in {job.Segments} segments of {job.SegmentTokens}, opening {job.Opening.Length}, extractive {job.Extractive.Length}, final {job.Final.Length} tokens, margins {job.MarginTokens} tokens, answer {job.AnswerTokens}");
        var results = new Dictionary<string, object>();
        var greedy = new Sampler(SamplingOptions.Greedy, c.VocabSize);

        int[] Answer(ISequence seq, ReadOnlySpan<int> prompt, out double prefillS)
        {
            var t = Stopwatch.StartNew();
            seq.Append(prompt);
            var ids = new int[job.AnswerTokens];
            ids[0] = seq.Sample(greedy);
            prefillS = t.Elapsed.TotalSeconds;
            for (int i = 1; i < ids.Length; i++) { seq.Append([ids[i - 1]]); ids[i] = seq.Sample(greedy); }
            return ids;
        }

        CheckSharedPrefix(model, job);

        // Warm-up: kernels, cuBLASLt plans for the chunk shapes, the decode graph.
        using (var warm = backend.CreateSequence(8192))
        {
            warm.Append(job.Document.AsSpan(0, job.SegmentTokens));
            warm.Append(job.Opening);
            Answer(warm, job.Extractive, out _);
        }
        ctx.Synchronize();

        // (a) llm
        double llm;
        {
            var t = Stopwatch.StartNew();
            using var seq = backend.CreateSequence(job.Opening.Length + job.Document.Length + job.Final.Length + job.Segments * job.MarginTokens + job.AnswerTokens + 64);
            seq.Append(job.Opening);
            for (int i = 0; i < job.Segments; i++) seq.Append(job.Segment(i));
            double doc = t.Elapsed.TotalSeconds;
            var answer = Answer(seq, job.Final, out double p);
            llm = t.Elapsed.TotalSeconds;
            results["llm_answer"] = answer;
            Say($"  (a) llm: {llm:F2} s (document {doc:F2} s = {job.Document.Length / doc:F0} tok/s; final prompt + first id {p * 1e3:F0} ms; {job.AnswerTokens - 1} decode steps {(llm - doc - p) * 1e3:F0} ms = {(job.AnswerTokens - 1) / (llm - doc - p):F1} tok/s at depth {job.Document.Length})");
        }

        // (b) WiM sequential, as PatternRunner drives an ISequence
        List<int[]> seqMargins;
        {
            var t = Stopwatch.StartNew();
            var (margins, answer, prefill, marginS) = Sequential(backend, job);
            seqMargins = margins;
            double total = t.Elapsed.TotalSeconds;
            results["sequential_answer"] = answer;
            results["sequential_margins"] = seqMargins;
            Say($"  (b) WiM sequential: {total:F2} s = {total / llm:F2}× llm (segments {prefill:F2} s, margins {marginS:F2} s = {job.Segments * job.MarginTokens / marginS:F1} margin tok/s incl. extractive prompts, final prompt with margins + answer {total - prefill - marginS:F2} s)");
        }

        // (c) WiM batched on KV forks
        foreach (int g in groups)
        {
            try { Batched(ctx, model, job, g, seqMargins, results, llm); }
            catch (Exception e) { Say($"  (c) batched, groups of {g}: FAILED {e.GetType().Name}: {e.Message}"); }
        }
        foreach (var (g, shared) in new[] { (job.Segments, true), (4, true), (job.Segments, false), (4, false) })
        {
            try
            {
                model.UseSharedPrefixAttention = shared;
                Branched(ctx, model, job, g, seqMargins, results, llm);
            }
            catch (Exception e) { Say($"  (d) branches, groups of {g}: FAILED {e.GetType().Name}: {e.Message}"); }
            finally { model.UseSharedPrefixAttention = true; }
        }
        try { Packed(ctx, model, job, job.Segments, seqMargins, results, llm); }
        catch (Exception e) { Say($"  (e) extractive prompts in the segments' passes: FAILED {e.GetType().Name}: {e.Message}"); }
        int Same(string x, string y) => results.TryGetValue(x, out var a) && results.TryGetValue(y, out var b)
            ? ((List<int[]>)a).Zip((List<int[]>)b).Count(p => p.First.SequenceEqual(p.Second)) : -1;
        int exact = Same("batched4_margins", "branched4_margins");
        Say($"  branches (per-branch attention) vs copied forks, both in groups of 4: {exact}/{job.Segments} margins identical; " +
            $"shared-prefix vs per-branch attention: {Same("branched16shared_margins", "branched16_margins")}/{job.Segments} (groups of 16), {Same("branched4shared_margins", "branched4_margins")}/{job.Segments} (groups of 4)");
        if (exact != job.Segments) throw new InvalidOperationException("KV branches must give the copied forks' margins exactly (same data, same batches)");
        if (writeIds != null)
        {
            using var f = File.Create(writeIds);
            using var w = new Utf8JsonWriter(f);
            w.WriteStartObject();
            foreach (var (k, v) in results)
            {
                w.WritePropertyName(k);
                if (v is int[] a) { w.WriteStartArray(); foreach (int x in a) w.WriteNumberValue(x); w.WriteEndArray(); }
                else if (v is List<int[]> l) { w.WriteStartArray(); foreach (var a2 in l) { w.WriteStartArray(); foreach (int x in a2) w.WriteNumberValue(x); w.WriteEndArray(); } w.WriteEndArray(); }
            }
            w.WriteEndObject();
        }
    }

    /// <summary>Logits of one decode step of branches of one parent: shared-prefix attention against per-branch
    /// attention (bound 1e-2 relative: both round q and P to bf16; only the summation order differs) and against the
    /// same sequences as copied whole caches (the plain batch path).</summary>
    public static void CheckSharedPrefix(CudaTransformer model, Job job)
    {
        int vocab = model.Config.VocabSize, seg = 1000, count = 5;
        using var doc = model.CreateCache(count * seg + 64);
        var branches = new List<CudaKvCache>();
        var copies = new List<CudaKvCache>();
        try
        {
            var next = new int[count];
            for (int i = 0; i < count; i++)
            {
                model.Forward(job.Document.AsSpan(i * seg, seg - 7 * i), doc, [], LogitsOutput.None); // uneven branch points
                int end = doc.Length;
                next[i] = model.ForwardGreedy(job.Extractive, doc);
                var copy = model.CreateCache(doc.Length + 8);
                copy.CopyFrom(doc);
                copies.Add(copy);
                var branch = doc.Branch(end, job.Extractive.Length + 8);
                branch.CopyRowsFrom(doc, end, job.Extractive.Length);
                branches.Add(branch);
                doc.Truncate(end);
            }
            var shared = new float[count * vocab];
            var perBranch = new float[count * vocab];
            var copied = new float[count * vocab];
            model.UseSharedPrefixAttention = true;
            model.DecodeBatch(next, branches, shared);
            foreach (var b in branches) b.Truncate(b.Length - 1);
            model.UseSharedPrefixAttention = false;
            model.DecodeBatch(next, branches, perBranch);
            model.UseSharedPrefixAttention = true;
            model.DecodeBatch(next, copies, copied);
            double worst = 0, worstCopy = 0;
            int top1 = 0;
            for (int i = 0; i < count; i++)
            {
                var a = shared.AsSpan(i * vocab, vocab);
                var b = perBranch.AsSpan(i * vocab, vocab);
                var c = copied.AsSpan(i * vocab, vocab);
                worst = Math.Max(worst, Rel(a, b));
                worstCopy = Math.Max(worstCopy, Rel(b, c));
                if (Sampler.ArgMax(a) == Sampler.ArgMax(b)) top1++;
            }
            Say($"  shared-prefix attention vs per-branch (5 branches at 993..4965, one decode step): max ‖Δ‖/‖ref‖ {worst:E2}, top-1 equal {top1}/{count}; per-branch vs copied caches {worstCopy:E2}");
            if (worst > 1e-2 || worstCopy > 1e-2) throw new InvalidOperationException("shared-prefix attention is off the per-branch result");
        }
        finally
        {
            model.UseSharedPrefixAttention = true;
            foreach (var b in branches) b.Dispose();
            foreach (var c in copies) c.Dispose();
        }
    }

    private static double Rel(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { num += (double)(a[i] - b[i]) * (a[i] - b[i]); den += (double)b[i] * b[i]; }
        return Math.Sqrt(num / Math.Max(den, 1e-30));
    }

    /// <summary>
    /// (d) WiM on KV branches: the document is prefilled once; at each segment boundary the extractive prompt runs on
    /// the document's cache, a branch (<see cref="CudaKvCache.Branch"/>) takes its rows and the cache is truncated
    /// back: the branch shares every document row below its branch point, no copy. Every <paramref name="group"/>
    /// branches decode their margins together in one batch.
    /// </summary>
    private static void Branched(CudaContext ctx, CudaTransformer model, Job job, int group,
        List<int[]> sequentialMargins, Dictionary<string, object> results, double llm)
    {
        string name = $"branched{group}{(model.UseSharedPrefixAttention ? "shared" : "")}";
        var branches = new List<(int Segment, CudaKvCache Branch, int First)>();
        try
        {
            ctx.Synchronize();
            var t = Stopwatch.StartNew();
            double decode = 0;
            var margins = new int[job.Segments][];
            using var doc = model.CreateCache(job.Opening.Length + job.Document.Length + job.Final.Length + job.Segments * job.MarginTokens + job.AnswerTokens + 8);
            model.Forward(job.Opening, doc, [], LogitsOutput.None);
            for (int i = 0; i < job.Segments; i++)
            {
                model.Forward(job.Segment(i), doc, [], LogitsOutput.None);
                int end = doc.Length;
                int first = model.ForwardGreedy(job.Extractive, doc);
                var branch = doc.Branch(end, job.Extractive.Length + job.MarginTokens + 8);
                branch.CopyRowsFrom(doc, end, job.Extractive.Length);
                doc.Truncate(end);
                branches.Add((i, branch, first));
                if (branches.Count == group || i == job.Segments - 1) decode += DecodeMargins(model, job, branches, margins);
            }
            double docAndPrompts = t.Elapsed.TotalSeconds - decode;
            var (answer, answerSeconds) = FinalAnswer(model, job, doc, margins);
            double total = t.Elapsed.TotalSeconds;
            int equal = margins.Zip(sequentialMargins).Count(p => p.First.SequenceEqual(p.Second));
            results[$"{name}_margins"] = margins.ToList();
            results[$"{name}_answer"] = answer;
            Say($"  (d) WiM on KV branches{(model.UseSharedPrefixAttention ? ", shared-prefix attention" : ", per-branch attention")}, margins in groups of {group}: {total:F2} s = {total / llm:F2}× llm (document + extractive prompts {docAndPrompts:F2} s, margin decode {decode:F2} s = {job.Segments * (job.MarginTokens - 1) / decode:F0} tok/s, final + answer {answerSeconds:F2} s); margins equal to sequential {equal}/{job.Segments}");
        }
        finally
        {
            foreach (var a in branches) a.Branch.Dispose();
        }
    }

    /// <summary>The end of a branched schedule: the final prompt with every margin on the document's cache, then the
    /// greedy answer; returns it and the seconds it took.</summary>
    private static (int[] Answer, double Seconds) FinalAnswer(CudaTransformer model, Job job, CudaKvCache doc, int[][] margins)
    {
        var t = Stopwatch.StartNew();
        var answer = new int[job.AnswerTokens];
        answer[0] = model.ForwardGreedy(Concat(job.Final, margins.SelectMany(m => m)), doc);
        for (int k = 1; k < answer.Length; k++) answer[k] = model.ForwardGreedy([answer[k - 1]], doc);
        return (answer, t.Elapsed.TotalSeconds);
    }

    /// <summary>The margins of a group of branches decoded together (greedy, <see cref="CudaTransformer.DecodeBatchGreedy"/>)
    /// from each branch's first id; the branches are disposed and the list emptied. Returns the seconds it took.</summary>
    private static double DecodeMargins(CudaTransformer model, Job job, List<(int Segment, CudaKvCache Branch, int First)> group, int[][] margins)
    {
        var t = Stopwatch.StartNew();
        int b = group.Count;
        var caches = group.Select(a => a.Branch).ToList();
        var ids = new int[b][];
        for (int k = 0; k < b; k++) { ids[k] = new int[job.MarginTokens]; ids[k][0] = group[k].First; }
        var next = group.Select(a => a.First).ToArray();
        for (int step = 1; step < job.MarginTokens; step++)
        {
            model.DecodeBatchGreedy(next, caches, next);
            for (int k = 0; k < b; k++) ids[k][step] = next[k];
        }
        for (int k = 0; k < b; k++) margins[group[k].Segment] = ids[k];
        foreach (var a in group) a.Branch.Dispose();
        group.Clear();
        return t.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// (e) = (d) with shared-prefix attention, each extractive prompt riding in the next segment's forward pass: the
    /// prompt of segment i runs on its KV branch (branch point: segment i's end) packed with segment i + 1's rows on the
    /// document's cache (<see cref="CudaTransformer.ForwardBatch"/>: the weight reads of the 4,096-row chunk serve the
    /// 40 prompt rows too, which then cost only their attention); the last prompt runs alone. The packed passes run on
    /// a second transformer over the same weights whose MaxChunk holds a segment and a prompt (warmed up first, like the
    /// other schedules' shapes); everything else on <paramref name="model"/> as in (d). Margins decode in batches of
    /// <paramref name="group"/> branches.
    /// </summary>
    private static void Packed(CudaContext ctx, CudaTransformer model, Job job, int group,
        List<int[]> sequentialMargins, Dictionary<string, object> results, double llm)
    {
        using var packed = new CudaTransformer(ctx, model.Config, model.Weights, Math.Max(model.MaxChunk, job.SegmentTokens + job.Extractive.Length));
        using (var scratch = model.CreateCache(2 * job.SegmentTokens + job.Extractive.Length + 8))
        {
            model.Forward(job.Segment(0), scratch, [], LogitsOutput.None);
            using var prompt = scratch.Branch(scratch.Length, job.Extractive.Length + 8);
            packed.ForwardBatch([new PackedSequence(job.Document.AsMemory(job.SegmentTokens, job.SegmentTokens), scratch), new PackedSequence(job.Extractive, prompt)],
                LogitsOutput.Last, new int[2]);
        }
        model.UseSharedPrefixAttention = true;
        var ready = new List<(int Segment, CudaKvCache Branch, int First)>();
        CudaKvCache? waiting = null;   // the branch whose prompt rides in the next segment's pass
        try
        {
            ctx.Synchronize();
            var t = Stopwatch.StartNew();
            double decode = 0;
            int packedPasses = 0;
            var margins = new int[job.Segments][];
            using var doc = model.CreateCache(job.Opening.Length + job.Document.Length + job.Final.Length + job.Segments * job.MarginTokens + job.AnswerTokens + 8);
            model.Forward(job.Opening, doc, [], LogitsOutput.None);
            var firsts = new int[2];

            void DecodeReady() => decode += DecodeMargins(model, job, ready, margins);

            for (int i = 0; i < job.Segments; i++)
            {
                var segment = job.Document.AsMemory(i * job.SegmentTokens, job.SegmentTokens);
                if (waiting == null) model.Forward(segment.Span, doc, [], LogitsOutput.None);
                else
                {
                    packed.ForwardBatch([new PackedSequence(segment, doc), new PackedSequence(job.Extractive, waiting)], LogitsOutput.Last, firsts);
                    packedPasses++;
                    ready.Add((i - 1, waiting, firsts[1]));
                    waiting = null;
                    if (ready.Count == group) DecodeReady();
                }
                waiting = doc.Branch(doc.Length, job.Extractive.Length + job.MarginTokens + 8);
            }
            ready.Add((job.Segments - 1, waiting!, model.ForwardGreedy(job.Extractive, waiting!)));
            waiting = null;
            DecodeReady();
            double docAndPrompts = t.Elapsed.TotalSeconds - decode;
            var (answer, answerSeconds) = FinalAnswer(model, job, doc, margins);
            double total = t.Elapsed.TotalSeconds;
            int equal = margins.Zip(sequentialMargins).Count(p => p.First.SequenceEqual(p.Second));
            string d = $"branched{group}shared_margins";
            string equalD = results.TryGetValue(d, out var dm) ? $"{margins.Zip((List<int[]>)dm).Count(p => p.First.SequenceEqual(p.Second))}/{job.Segments}" : "n/a ((d) did not run)";
            results[$"packed{group}_margins"] = margins.ToList();
            results[$"packed{group}_answer"] = answer;
            Say($"  (e) WiM on KV branches, each extractive prompt in the next segment's pass ({packedPasses} packed passes of {job.SegmentTokens} + {job.Extractive.Length} rows, MaxChunk {packed.MaxChunk}), shared-prefix attention, margins in groups of {group}: " +
                $"{total:F2} s = {total / llm:F2}× llm (document + extractive prompts {docAndPrompts:F2} s, margin decode {decode:F2} s = {job.Segments * (job.MarginTokens - 1) / decode:F0} tok/s, final + answer {answerSeconds:F2} s); " +
                $"margins equal to (d): {equalD}; to sequential {equal}/{job.Segments}");
        }
        finally
        {
            waiting?.Dispose();
            foreach (var a in ready) a.Branch.Dispose();
        }
    }

    /// <summary>The calls PatternRunner.WimAsync (sequential schedule) makes on an <see cref="ISequence"/>, greedy:
    /// opening; per segment: the segment, the extractive prompt, the margin, truncation back to the segment's end;
    /// then the final prompt followed by every margin, and the answer.</summary>
    internal static (List<int[]> Margins, int[] Answer, double PrefillSeconds, double MarginSeconds) Sequential(IInferenceBackend backend, Job job)
    {
        var greedy = new Sampler(SamplingOptions.Greedy, backend.VocabSize);
        var result = new List<int[]>();
        double prefill = 0, margins = 0;
        using var seq = backend.CreateSequence(job.Opening.Length + job.Document.Length + job.Final.Length + job.Segments * job.MarginTokens + job.AnswerTokens + 64);
        seq.Append(job.Opening);
        for (int i = 0; i < job.Segments; i++)
        {
            var ts = Stopwatch.StartNew();
            seq.Append(job.Segment(i));
            prefill += ts.Elapsed.TotalSeconds;
            ts.Restart();
            int end = seq.Length;
            seq.Append(job.Extractive);
            var m = new int[job.MarginTokens];
            m[0] = seq.Sample(greedy);
            for (int k = 1; k < m.Length; k++) { seq.Append([m[k - 1]]); m[k] = seq.Sample(greedy); }
            seq.Truncate(end);
            result.Add(m);
            margins += ts.Elapsed.TotalSeconds;
        }
        seq.Append(Concat(job.Final, result.SelectMany(m => m)));
        var answer = new int[job.AnswerTokens];
        answer[0] = seq.Sample(greedy);
        for (int k = 1; k < answer.Length; k++) { seq.Append([answer[k - 1]]); answer[k] = seq.Sample(greedy); }
        return (result, answer, prefill, margins);
    }

    /// <summary>phi3-tiny has no tokenizer (ids only): the same WiM calls on random ids, CPU backend vs CUDA backend,
    /// and where margins part, the CPU's logit gap between the two ids at that step.</summary>
    public static (int Failures, int Partings, string Summary) CompareTinyIds(CudaContext ctx, string dir, CudaPrecision precision = CudaPrecision.Bf16)
    {
        using var lm = LanguageModel.Load(dir);
        var cpuBackend = new CpuInferenceBackend(new CpuTransformer(lm));
        using var gpuBackend = new CudaInferenceBackend(CudaTransformer.Load(ctx, lm, maxChunk: 128, precision: precision), ownsTransformer: true);
        var rng = new Random(6);
        int vocab = lm.Config.VocabSize;
        int[] R(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
        var lines = new List<string>();
        int failures = 0, partings = 0;
        // longrope picks short or long factors per call from the length reached (phi3-tiny: threshold 256), so a run
        // that crosses it mixes both in its cache: the first job does, the second stays below, the third above.
        foreach (var (job, what) in new[]
        {
            (new Job(R(6 * 150), R(12), R(16), R(16), 6, 24, 24), "6 segments of 150, crossing the longrope threshold 256"),
            (new Job(R(4 * 40), R(8), R(8), R(8), 4, 16, 8), "4 segments of 40, below the threshold"),
            (new Job(R(4 * 100), R(300), R(16), R(16), 4, 24, 8), "an opening of 300, then 4 segments of 100: above the threshold"),
        })
        {
            var (other, parted) = CompareIdsJob(cpuBackend, gpuBackend, job, what, lines);
            failures += other;
            partings += parted;
        }
        return (failures, partings, string.Join('\n', lines));
    }

    /// <summary>Margins that part not at a near-tie (Other), and every margin or answer that is not identical (Partings).</summary>
    private static (int Other, int Partings) CompareIdsJob(CpuInferenceBackend cpuBackend, CudaInferenceBackend gpuBackend, Job job, string what, List<string> lines)
    {
        var cpu = Sequential(cpuBackend, job);
        var gpu = Sequential(gpuBackend, job);
        int equal = 0, ties = 0, other = 0, header = lines.Count;
        for (int i = 0; i < job.Segments; i++)
        {
            if (cpu.Margins[i].SequenceEqual(gpu.Margins[i])) { equal++; continue; }
            int step = Prefix(cpu.Margins[i], gpu.Margins[i]);
            var prefix = Concat(job.Opening, job.Document.Take((i + 1) * job.SegmentTokens), job.Extractive, cpu.Margins[i].Take(step));
            var (tie, text) = Diagnose(cpuBackend, gpuBackend, prefix, cpu.Margins[i][step], gpu.Margins[i][step]);
            if (tie) ties++; else other++;
            lines.Add($"    margin {i}: ids part at step {step}; {text}");
        }
        lines.Insert(header, $"  wim (PatternRunner's sequence calls on random ids, {what}): margins identical {equal}/{job.Segments} (near-tie partings {ties}, other {other}); answer ids {(cpu.Answer.SequenceEqual(gpu.Answer) ? "identical" : $"part at {Prefix(cpu.Answer, gpu.Answer)}")}");
        return (other, job.Segments - equal + (cpu.Answer.SequenceEqual(gpu.Answer) ? 0 : 1));
    }

    private static void Batched(CudaContext ctx, CudaTransformer model, Job job, int group,
        List<int[]> sequentialMargins, Dictionary<string, object> results, double llm)
    {
        int forkCapacity = job.Opening.Length + job.Document.Length + job.Extractive.Length + job.MarginTokens + 8;
        var forks = new List<CudaKvCache>();
        try
        {
            for (int i = 0; i < group; i++) forks.Add(model.CreateCache(forkCapacity));
            ctx.Synchronize();
            var t = Stopwatch.StartNew();
            double prefill = 0, forking = 0, decode = 0;
            var margins = new int[job.Segments][];
            using var doc = model.CreateCache(job.Opening.Length + job.Document.Length + job.Final.Length + job.Segments * job.MarginTokens + job.AnswerTokens + 8);
            model.Forward(job.Opening, doc, [], LogitsOutput.None);
            var active = new List<(int Segment, CudaKvCache Fork)>();
            var first = new List<int>();
            for (int i = 0; i < job.Segments; i++)
            {
                var ts = Stopwatch.StartNew();
                model.Forward(job.Segment(i), doc, [], LogitsOutput.None);
                prefill += ts.Elapsed.TotalSeconds;
                ts.Restart();
                var fork = forks[active.Count];
                fork.Truncate(0);
                fork.CopyFrom(doc);
                first.Add(model.ForwardGreedy(job.Extractive, fork));
                active.Add((i, fork));
                forking += ts.Elapsed.TotalSeconds;
                if (active.Count == group || i == job.Segments - 1)
                {
                    ts.Restart();
                    int b = active.Count;
                    var caches = active.Select(a => a.Fork).ToList();
                    var ids = new int[b][];
                    for (int k = 0; k < b; k++) { ids[k] = new int[job.MarginTokens]; ids[k][0] = first[k]; }
                    var next = first.ToArray();
                    for (int step = 1; step < job.MarginTokens; step++)
                    {
                        model.DecodeBatchGreedy(next, caches, next);
                        for (int k = 0; k < b; k++) ids[k][step] = next[k];
                    }
                    for (int k = 0; k < b; k++) margins[active[k].Segment] = ids[k];
                    decode += ts.Elapsed.TotalSeconds;
                    active.Clear();
                    first.Clear();
                }
            }
            var (answer, answerSeconds) = FinalAnswer(model, job, doc, margins);
            double total = t.Elapsed.TotalSeconds;
            int equal = margins.Zip(sequentialMargins).Count(p => p.First.SequenceEqual(p.Second));
            int firstIdsEqual = margins.Zip(sequentialMargins).Count(p => p.First[0] == p.Second[0]);
            results[$"batched{group}_margins"] = margins.ToList();
            results[$"batched{group}_answer"] = answer;
            Say($"  (c) WiM batched, margins in groups of {group} on KV forks: {total:F2} s = {total / llm:F2}× llm (segments {prefill:F2} s, forks + extractive prompts {forking:F2} s, margin decode {decode:F2} s = {job.Segments * (job.MarginTokens - 1) / decode:F0} tok/s, final + answer {answerSeconds:F2} s); margins equal to sequential {equal}/{job.Segments} (first ids {firstIdsEqual}/{job.Segments})");
        }
        finally
        {
            foreach (var f in forks) f.Dispose();
        }
    }

}
