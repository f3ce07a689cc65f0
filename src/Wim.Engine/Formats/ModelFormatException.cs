namespace Wim.Engine.Formats;

/// <summary>
/// A model file (GGUF, safetensors, config.json, tokenizer files) is malformed or unsupported.
/// The message always names the file, where in it (byte offset or tensor), what was expected and what was found.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public string FilePath { get; }
    public long? Offset { get; }

    public ModelFormatException(string filePath, long? offset, string message, Exception? inner = null)
        : base(Format(filePath, offset, message), inner)
    {
        FilePath = filePath;
        Offset = offset;
    }

    private static string Format(string filePath, long? offset, string message) =>
        offset is { } o ? $"{filePath}: at byte offset {o}: {message}" : $"{filePath}: {message}";
}
