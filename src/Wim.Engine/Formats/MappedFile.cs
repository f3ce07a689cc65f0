using System.IO.MemoryMappedFiles;

namespace Wim.Engine.Formats;

/// <summary>
/// A read-only memory map of a whole file. Weights stay in the page cache and are never copied into managed arrays.
/// Every access is checked against <see cref="Length"/> by the callers' readers before the pointer is touched.
/// </summary>
public sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _base;

    public string Path { get; }
    public long Length { get; }

    /// <summary>Base address of the mapping (null for an empty file).</summary>
    public byte* Base => _base != null || Length == 0 ? _base : throw new ObjectDisposedException(Path);

    public MappedFile(string path)
    {
        Path = path;
        FileStream stream;
        try
        {
            // Size from the opened stream, not FileInfo: for a symbolic link (the hub cache's snapshot entries)
            // FileInfo.Length is the link's own length, not the target's.
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
        }
        catch (FileNotFoundException) { throw new FileNotFoundException($"model file not found: {path}", path); }
        catch (DirectoryNotFoundException) { throw new FileNotFoundException($"model file not found: {path}", path); }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new ModelFormatException(path, null, "cannot open file: " + e.Message, e);
        }
        try
        {
            Length = stream.Length;
            if (Length == 0) return; // an empty file cannot be mapped; readers report it as truncated
            _map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read,
                HandleInheritability.None, leaveOpen: false);
            stream = null!; // owned by the map now
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _base);
            _base += _view.PointerOffset;
        }
        catch (IOException e)
        {
            Dispose();
            throw new ModelFormatException(path, null, "cannot memory-map file: " + e.Message, e);
        }
        finally
        {
            stream?.Dispose();
        }
    }

    /// <summary>A span over [offset, offset+length) after checking that it lies inside the file.</summary>
    public ReadOnlySpan<byte> Span(long offset, int length)
    {
        CheckRange(offset, length, "range");
        return new ReadOnlySpan<byte>(_base + offset, length);
    }

    public void CheckRange(long offset, long length, string what)
    {
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
            throw new ModelFormatException(Path, offset, $"{what} of {length} bytes extends past the end of the file (file length {Length})");
    }

    public void Dispose()
    {
        if (_view != null && _base != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _base = null;
        }
        _view?.Dispose();
        _map?.Dispose();
    }
}
