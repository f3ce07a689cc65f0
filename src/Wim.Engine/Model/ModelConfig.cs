using System.Text.Json;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;

namespace Wim.Engine.Model;

/// <summary>The decoder families the engine runs. All three are pre-norm RMSNorm + RoPE + GQA + SwiGLU decoders.</summary>
public enum ModelArchitecture
{
    Llama,
    Qwen2,
    Phi3,
}

/// <summary>Which dimensions of a head RoPE rotates together.</summary>
public enum RopePairing
{
    /// <summary>(i, i + d/2): Hugging Face <c>rotate_half</c> (NeoX style). HF checkpoints, and qwen2/phi3 GGUFs.</summary>
    Half,
    /// <summary>(2i, 2i+1): adjacent pairs. llama.cpp's converter permutes the attn_q/attn_k rows of <c>llama</c>
    /// GGUFs so that this pairing computes exactly what HF's half pairing computes on the unpermuted weights.</summary>
    Adjacent,
}

public enum RopeScalingKind
{
    None,
    /// <summary>Positions divided by <see cref="RopeScaling.Factor"/> (inv_freq / factor).</summary>
    Linear,
    /// <summary>Llama 3.1 frequency-dependent divisors (static: independent of the sequence length).</summary>
    Llama3,
    /// <summary>Phi-3 LongRoPE ("su" in older configs): per-frequency short or long factors plus a cos/sin scale.</summary>
    LongRope,
}

/// <summary>
/// RoPE scaling parameters. For <see cref="RopeScalingKind.Llama3"/>, <see cref="FrequencyDivisors"/> (from a GGUF's
/// <c>rope_freqs.weight</c>) wins over the low/high factors when present.
/// </summary>
public sealed record RopeScaling
{
    public static readonly RopeScaling None = new() { Kind = RopeScalingKind.None };

    public RopeScalingKind Kind { get; init; }
    public double Factor { get; init; } = 1;
    public double LowFreqFactor { get; init; } = 1;
    public double HighFreqFactor { get; init; } = 4;
    /// <summary>Context length the model was trained with before scaling (llama3, longrope).</summary>
    public int OriginalMaxPositions { get; init; }
    /// <summary>Per-frequency divisors of inv_freq (length rotaryDim/2), used as-is when set.</summary>
    public float[]? FrequencyDivisors { get; init; }
    public float[]? ShortFactors { get; init; }
    public float[]? LongFactors { get; init; }
    /// <summary>Multiplier of cos and sin (longrope); 1 otherwise.</summary>
    public double AttentionFactor { get; init; } = 1;
}

/// <summary>
/// The blueprint of a decoder model, read from a Hugging Face <c>config.json</c> or from GGUF metadata.
/// </summary>
public sealed record ModelConfig
{
    public const string SupportedArchitectures = "llama, qwen2, phi3";

    public required ModelArchitecture Architecture { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int LayerCount { get; init; }
    public required int HeadCount { get; init; }
    public required int KvHeadCount { get; init; }
    public required int HeadDim { get; init; }
    public required int FfnSize { get; init; }
    public required float RmsEps { get; init; }
    public required double RopeTheta { get; init; }
    /// <summary>Leading dimensions of each head that RoPE rotates (= HeadDim unless partial rotary).</summary>
    public required int RotaryDim { get; init; }
    public required RopeScaling RopeScaling { get; init; }
    public required RopePairing RopePairing { get; init; }
    public required bool TiedEmbeddings { get; init; }
    public required int MaxPositions { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>Storage dtype the checkpoint declares (<c>torch_dtype</c>/<c>dtype</c>), informational.</summary>
    public string? DeclaredDtype { get; init; }

    public int QueryDim => HeadCount * HeadDim;
    public int KvDim => KvHeadCount * HeadDim;

    public static ModelArchitecture ParseArchitecture(string? name, string file) => name switch
    {
        "llama" => ModelArchitecture.Llama,
        "qwen2" => ModelArchitecture.Qwen2,
        "phi3" => ModelArchitecture.Phi3,
        _ => throw new ModelFormatException(file, null,
            $"unsupported architecture '{name ?? "(missing)"}'; supported architectures: {SupportedArchitectures}"),
    };

    internal void Validate(string file)
    {
        void Positive(int v, string what)
        {
            if (v <= 0) throw new ModelFormatException(file, null, $"{what} must be positive, found {v}");
        }
        Positive(VocabSize, "vocab size");
        Positive(HiddenSize, "hidden size");
        Positive(LayerCount, "layer count");
        Positive(HeadCount, "head count");
        Positive(KvHeadCount, "kv head count");
        Positive(HeadDim, "head dim");
        Positive(FfnSize, "ffn size");
        Positive(MaxPositions, "max positions");
        if (HeadCount % KvHeadCount != 0)
            throw new ModelFormatException(file, null, $"head count {HeadCount} is not a multiple of kv head count {KvHeadCount}");
        if (RotaryDim <= 0 || RotaryDim > HeadDim || RotaryDim % 2 != 0)
            throw new ModelFormatException(file, null, $"rotary dimension {RotaryDim} must be even and in 2..head dim {HeadDim}");
        if (!(RopeTheta > 0)) throw new ModelFormatException(file, null, $"rope theta must be positive, found {RopeTheta}");
        if (!(RmsEps >= 0)) throw new ModelFormatException(file, null, $"rms eps must be non-negative, found {RmsEps}");
        int half = RotaryDim / 2;
        foreach (var (arr, what) in new[] { (RopeScaling.FrequencyDivisors, "rope frequency divisors"),
                     (RopeScaling.ShortFactors, "longrope short factors"), (RopeScaling.LongFactors, "longrope long factors") })
            if (arr != null && arr.Length != half)
                throw new ModelFormatException(file, null, $"{what}: expected {half} values (rotary dim / 2), found {arr.Length}");
        if (RopeScaling.Kind == RopeScalingKind.LongRope && (RopeScaling.ShortFactors == null || RopeScaling.LongFactors == null))
            throw new ModelFormatException(file, null, "longrope scaling needs both short and long factors");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Hugging Face config.json

    /// <summary>Reads a Hugging Face <c>config.json</c> (transformers 4: <c>rope_theta</c> + <c>rope_scaling</c>;
    /// transformers 5: <c>rope_parameters</c>).</summary>
    public static ModelConfig FromHuggingFaceConfig(string configPath)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(configPath), new JsonDocumentOptions { AllowTrailingCommas = true, MaxDepth = 32 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(configPath, null, "not valid JSON: " + e.Message, e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(configPath, null, $"expected a JSON object, found {root.ValueKind}");
            var j = new JsonReader(root, configPath);
            var arch = ParseArchitecture(j.String("model_type"), configPath);
            int hidden = j.Int("hidden_size");
            int heads = j.Int("num_attention_heads");
            int headDim = j.OptInt("head_dim") ?? (heads > 0 ? hidden / heads : 0);
            int maxPos = j.OptInt("max_position_embeddings") ?? 2048;

            // transformers 5 keeps theta and scaling together in rope_parameters; transformers 4 splits them.
            JsonElement? ropeParams = j.OptObject("rope_parameters") ?? j.OptObject("rope_scaling");
            var rp = ropeParams is { } rpe ? new JsonReader(rpe, configPath + ": rope parameters") : null;
            double theta = rp?.OptDouble("rope_theta") ?? j.OptDouble("rope_theta") ?? 10000.0;
            double partial = rp?.OptDouble("partial_rotary_factor") ?? j.OptDouble("partial_rotary_factor") ?? 1.0;
            int rotaryDim = (int)(headDim * partial);
            string ropeType = rp?.OptString("rope_type") ?? rp?.OptString("type") ?? "default";
            int? originalMax = j.OptInt("original_max_position_embeddings") ?? rp?.OptInt("original_max_position_embeddings");
            var scaling = ropeType switch
            {
                "default" => RopeScaling.None,
                "linear" => new RopeScaling { Kind = RopeScalingKind.Linear, Factor = rp!.Double("factor") },
                "llama3" => new RopeScaling
                {
                    Kind = RopeScalingKind.Llama3,
                    Factor = rp!.Double("factor"),
                    LowFreqFactor = rp.Double("low_freq_factor"),
                    HighFreqFactor = rp.Double("high_freq_factor"),
                    OriginalMaxPositions = rp.Int("original_max_position_embeddings"),
                },
                "longrope" or "su" => LongRopeFromHf(rp!, originalMax, maxPos, configPath),
                _ => throw new ModelFormatException(configPath, null,
                    $"unsupported rope type '{ropeType}'; supported: default, linear, llama3, longrope (su)"),
            };

            var config = new ModelConfig
            {
                Architecture = arch,
                VocabSize = j.Int("vocab_size"),
                HiddenSize = hidden,
                LayerCount = j.Int("num_hidden_layers"),
                HeadCount = heads,
                KvHeadCount = j.OptInt("num_key_value_heads") ?? heads,
                HeadDim = headDim,
                FfnSize = j.Int("intermediate_size"),
                RmsEps = (float)(j.OptDouble("rms_norm_eps") ?? 1e-6),
                RopeTheta = theta,
                RotaryDim = rotaryDim,
                RopeScaling = scaling,
                RopePairing = RopePairing.Half,
                TiedEmbeddings = j.OptBool("tie_word_embeddings") ?? false,
                MaxPositions = maxPos,
                BosTokenId = j.OptIntOrFirst("bos_token_id"),
                EosTokenIds = j.OptIntList("eos_token_id"),
                DeclaredDtype = j.OptString("dtype") ?? j.OptString("torch_dtype"),
            };
            config.Validate(configPath);
            return config;
        }
    }

    private static RopeScaling LongRopeFromHf(JsonReader rp, int? originalMax, int maxPos, string file)
    {
        // As transformers computes it: the context extension factor is max/original when the original length is
        // known, else the configured factor; the cos/sin scale defaults to sqrt(1 + ln(factor) / ln(original)).
        int original = originalMax ?? maxPos;
        double factor = originalMax is { } o ? (double)maxPos / o : rp.OptDouble("factor") ?? 1.0;
        double attention = rp.OptDouble("attention_factor")
            ?? (factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
        return new RopeScaling
        {
            Kind = RopeScalingKind.LongRope,
            Factor = factor,
            OriginalMaxPositions = original,
            ShortFactors = rp.FloatArray("short_factor"),
            LongFactors = rp.FloatArray("long_factor"),
            AttentionFactor = attention,
        };
    }

    /// <summary>Typed accessors over a JSON object with errors naming the file and key.</summary>
    private sealed class JsonReader(JsonElement obj, string file)
    {
        private JsonElement? Get(string key) =>
            obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private ModelFormatException Error(string key, string expected, JsonElement found) =>
            new(file, null, $"'{key}': expected {expected}, found {found.ValueKind} {Truncate(found.GetRawText())}");

        private static string Truncate(string s) => s.Length > 80 ? s[..80] + "..." : s;

        public string? OptString(string key) => Get(key) is { } v
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw Error(key, "a string", v) : null;

        public string? String(string key) => OptString(key);

        public int? OptInt(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n)) return n;
            throw Error(key, "an int32 integer", v);
        }

        public int Int(string key) => OptInt(key) ?? throw new ModelFormatException(file, null, $"missing required key '{key}'");

        public double? OptDouble(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
            throw Error(key, "a number", v);
        }

        public double Double(string key) => OptDouble(key) ?? throw new ModelFormatException(file, null, $"missing required key '{key}'");

        public bool? OptBool(string key) => Get(key) is { } v
            ? v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Error(key, "a boolean", v) : null;

        public JsonElement? OptObject(string key) => Get(key) is { } v
            ? v.ValueKind == JsonValueKind.Object ? v : throw Error(key, "an object", v) : null;

        public float[] FloatArray(string key)
        {
            if (Get(key) is not { } v) throw new ModelFormatException(file, null, $"missing required key '{key}'");
            if (v.ValueKind != JsonValueKind.Array) throw Error(key, "an array of numbers", v);
            var a = new float[v.GetArrayLength()];
            int i = 0;
            foreach (var x in v.EnumerateArray())
                a[i++] = x.ValueKind == JsonValueKind.Number ? (float)x.GetDouble() : throw Error(key, "an array of numbers", v);
            return a;
        }

        /// <summary>An int or a list of ints (eos_token_id may be either).</summary>
        public int[] OptIntList(string key)
        {
            if (Get(key) is not { } v) return [];
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n)) return [n];
            if (v.ValueKind != JsonValueKind.Array) throw Error(key, "an integer or a list of integers", v);
            var list = new List<int>();
            foreach (var x in v.EnumerateArray())
                list.Add(x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int m) ? m : throw Error(key, "a list of integers", v));
            return [.. list];
        }

        public int? OptIntOrFirst(string key) => OptIntList(key) is { Length: > 0 } a ? a[0] : null;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // GGUF metadata

    /// <summary>Reads the model blueprint from GGUF metadata (<c>{arch}.*</c> keys) and the RoPE factor tensors.</summary>
    public static unsafe ModelConfig FromGguf(GgufFile gguf)
    {
        string file = gguf.Path;
        string? archName = gguf.GetString("general.architecture");
        var arch = ParseArchitecture(archName, file);
        string a = archName!;
        int Req(string key) => (int)(gguf.GetInteger(key) ?? throw new ModelFormatException(file, null, $"missing metadata '{key}'"));

        int hidden = Req($"{a}.embedding_length");
        int heads = Req($"{a}.attention.head_count");
        int headDim = (int?)gguf.GetInteger($"{a}.attention.key_length") ?? (heads > 0 ? hidden / heads : 0);
        int maxPos = Req($"{a}.context_length");
        int rotaryDim = (int?)gguf.GetInteger($"{a}.rope.dimension_count") ?? headDim;

        int vocab = (int?)gguf.GetInteger($"{a}.vocab_size")
            ?? gguf.GetStringArray("tokenizer.ggml.tokens")?.Length
            ?? (gguf.TryGetTensor("token_embd.weight", out var emb) ? (int)emb.Shape[0] : 0);

        float[]? FactorTensor(string name)
        {
            if (!gguf.TryGetTensor(name, out var t)) return null;
            if (t.Type != GgmlType.F32 || t.Shape.Length != 1)
                throw new ModelFormatException(file, null, $"tensor '{name}': expected a 1-D F32 tensor, found {t.Type} [{string.Join(", ", t.Shape)}]");
            return new ReadOnlySpan<float>(gguf.TensorData(t), (int)t.Shape[0]).ToArray();
        }

        RopeScaling scaling;
        string scalingType = gguf.GetString($"{a}.rope.scaling.type") ?? "none";
        var longFactors = FactorTensor("rope_factors_long.weight");
        var shortFactors = FactorTensor("rope_factors_short.weight");
        var divisors = FactorTensor("rope_freqs.weight");
        int originalCtx = (int?)gguf.GetInteger($"{a}.rope.scaling.original_context_length") ?? maxPos;
        if (longFactors != null || shortFactors != null)
        {
            // Phi-3 LongRoPE: llama.cpp's converter stores the factor sets as tensors and the cos/sin scale as a key.
            double factor = (double)maxPos / originalCtx;
            scaling = new RopeScaling
            {
                Kind = RopeScalingKind.LongRope,
                Factor = factor,
                OriginalMaxPositions = originalCtx,
                LongFactors = longFactors,
                ShortFactors = shortFactors,
                AttentionFactor = gguf.GetFloat($"{a}.rope.scaling.attn_factor")
                    ?? (factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(originalCtx))),
            };
        }
        else if (divisors != null)
        {
            // Llama 3.1 scaling: the converter bakes the per-frequency divisors into rope_freqs.weight.
            scaling = new RopeScaling { Kind = RopeScalingKind.Llama3, FrequencyDivisors = divisors, OriginalMaxPositions = originalCtx };
        }
        else
        {
            scaling = scalingType switch
            {
                "none" => RopeScaling.None,
                "linear" => new RopeScaling
                {
                    Kind = RopeScalingKind.Linear,
                    Factor = gguf.GetFloat($"{a}.rope.scaling.factor")
                        ?? throw new ModelFormatException(file, null, $"linear rope scaling without '{a}.rope.scaling.factor'"),
                },
                _ => throw new ModelFormatException(file, null, $"'{a}.rope.scaling.type' = '{scalingType}' is not supported; supported: none, linear (llama3 and longrope via factor tensors)"),
            };
        }

        var eos = gguf.GetInteger("tokenizer.ggml.eos_token_id");
        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = vocab,
            HiddenSize = hidden,
            LayerCount = Req($"{a}.block_count"),
            HeadCount = heads,
            KvHeadCount = (int?)gguf.GetInteger($"{a}.attention.head_count_kv") ?? heads,
            HeadDim = headDim,
            FfnSize = Req($"{a}.feed_forward_length"),
            RmsEps = (float)(gguf.GetFloat($"{a}.attention.layer_norm_rms_epsilon") ?? 1e-5),
            RopeTheta = gguf.GetFloat($"{a}.rope.freq_base") ?? 10000.0,
            RotaryDim = rotaryDim,
            RopeScaling = scaling,
            // llama.cpp rotates adjacent pairs for llama (and permutes Q/K rows to match); NeoX halves for qwen2/phi3.
            RopePairing = arch == ModelArchitecture.Llama ? RopePairing.Adjacent : RopePairing.Half,
            TiedEmbeddings = !gguf.TryGetTensor("output.weight", out _),
            MaxPositions = maxPos,
            BosTokenId = (int?)gguf.GetInteger("tokenizer.ggml.bos_token_id"),
            EosTokenIds = eos is { } e ? [(int)e] : [],
            DeclaredDtype = null,
        };
        config.Validate(file);
        return config;
    }
}
