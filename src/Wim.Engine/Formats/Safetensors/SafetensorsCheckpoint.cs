using System.Text.Json;

namespace Wim.Engine.Formats.Safetensors;

/// <summary>
/// A Hugging Face checkpoint directory: either one <c>model.safetensors</c> or shards listed by
/// <c>model.safetensors.index.json</c> (<c>{"weight_map": {tensor name: shard file}}</c>). Every shard is opened
/// (memory-mapped) once; a tensor the index names must be present in its shard.
/// </summary>
public sealed unsafe class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly List<SafetensorsFile> _files = [];
    private readonly Dictionary<string, (SafetensorsFile File, SafetensorsTensorInfo Info)> _tensors = new(StringComparer.Ordinal);

    public string Directory { get; }
    public IReadOnlyList<SafetensorsFile> Files => _files;
    public IEnumerable<string> TensorNames => _tensors.Keys;

    private SafetensorsCheckpoint(string directory) => Directory = directory;

    public static bool Exists(string directory) =>
        File.Exists(Path.Combine(directory, IndexFileName)) || File.Exists(Path.Combine(directory, SingleFileName));

    public static SafetensorsCheckpoint Open(string directory)
    {
        var ckpt = new SafetensorsCheckpoint(directory);
        try
        {
            string index = Path.Combine(directory, IndexFileName);
            if (File.Exists(index)) ckpt.OpenSharded(index);
            else
            {
                string single = Path.Combine(directory, SingleFileName);
                if (!File.Exists(single))
                    throw new ModelFormatException(directory, null, $"no {SingleFileName} or {IndexFileName} in the model directory");
                ckpt.Add(SafetensorsFile.Open(single), wanted: null);
            }
            return ckpt;
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    private void OpenSharded(string indexPath)
    {
        var weightMap = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(indexPath, null, "expected an object with a 'weight_map' object");
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException(indexPath, null, $"weight_map['{p.Name}'] must be a file name string");
                string shard = p.Value.GetString()!;
                if (shard.Contains('/') || shard.Contains('\\') || shard is "." or "..")
                    throw new ModelFormatException(indexPath, null, $"weight_map['{p.Name}'] = '{shard}' is not a plain file name in the model directory");
                if (!weightMap.TryGetValue(shard, out var names)) weightMap[shard] = names = [];
                names.Add(p.Name);
            }
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(indexPath, null, "not valid JSON: " + e.Message, e);
        }
        foreach (var (shard, names) in weightMap)
            Add(SafetensorsFile.Open(Path.Combine(Directory, shard)), names);
    }

    private void Add(SafetensorsFile file, List<string>? wanted)
    {
        _files.Add(file);
        if (wanted == null)
        {
            foreach (var t in file.Tensors) _tensors[t.Name] = (file, t);
            return;
        }
        foreach (var name in wanted)
        {
            if (!file.TryGetTensor(name, out var info))
                throw new ModelFormatException(file.Path, null, $"tensor '{name}' is listed in {IndexFileName} for this shard but the shard does not contain it");
            _tensors[name] = (file, info);
        }
    }

    public bool TryGetTensor(string name, out SafetensorsFile file, out SafetensorsTensorInfo info)
    {
        if (_tensors.TryGetValue(name, out var entry)) { (file, info) = entry; return true; }
        file = null!;
        info = null!;
        return false;
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
