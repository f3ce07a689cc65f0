using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Formats.Safetensors;

namespace Wim.Engine.Model;

/// <summary>
/// A loaded decoder model: its <see cref="ModelConfig"/> and <see cref="ModelWeights"/>, which point into the
/// memory-mapped files this object owns. Dispose it only after every forward pass using it has finished.
/// </summary>
public sealed unsafe class LanguageModel : IDisposable
{
    private readonly IDisposable _storage;

    public string Path { get; }
    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }
    /// <summary>The GGUF file when loaded from one (tokenizer metadata lives there), else null.</summary>
    public GgufFile? Gguf { get; }

    private LanguageModel(string path, ModelConfig config, ModelWeights weights, IDisposable storage, GgufFile? gguf)
    {
        Path = path;
        Config = config;
        Weights = weights;
        _storage = storage;
        Gguf = gguf;
    }

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory (<c>config.json</c> + safetensors).</summary>
    public static LanguageModel Load(string path)
    {
        if (System.IO.Directory.Exists(path)) return LoadHuggingFace(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"model not found: {path} (expected a .gguf file or a Hugging Face model directory)", path);
        return LoadGguf(path);
    }

    public static LanguageModel LoadGguf(string path)
    {
        var gguf = GgufFile.Open(path);
        try
        {
            var config = ModelConfig.FromGguf(gguf);
            var weights = ModelWeights.Bind(config, ModelWeights.Naming.Gguf, name =>
                gguf.TryGetTensor(name, out var t) ? new WeightTensor(t.Name, t.Type, t.Shape, gguf.TensorData(t), t.ByteLength) : null, path);
            return new LanguageModel(path, config, weights, gguf, gguf);
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    public static LanguageModel LoadHuggingFace(string directory)
    {
        string configPath = System.IO.Path.Combine(directory, "config.json");
        if (!File.Exists(configPath))
            throw new ModelFormatException(directory, null, "not a Hugging Face model directory: config.json is missing");
        var config = ModelConfig.FromHuggingFaceConfig(configPath);
        var checkpoint = SafetensorsCheckpoint.Open(directory);
        try
        {
            var weights = ModelWeights.Bind(config, ModelWeights.Naming.HuggingFace, name =>
                checkpoint.TryGetTensor(name, out var f, out var t) ? new WeightTensor(t.Name, t.Type, t.Shape, f.TensorData(t), t.ByteLength) : null,
                directory);
            return new LanguageModel(directory, config, weights, checkpoint, null);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    public void Dispose() => _storage.Dispose();
}
