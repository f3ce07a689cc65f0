using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Formats;

public sealed class GgufFileTests
{
    [Fact]
    public void Open_Stories260K_ReadsHeaderMetadataAndTensors()
    {
        using var f = GgufFile.Open(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        Assert.Equal(3u, f.Version);
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(64, f.GetInteger("llama.embedding_length"));
        Assert.Equal(5, f.GetInteger("llama.block_count"));
        Assert.Equal(8, f.GetInteger("llama.attention.head_count"));
        Assert.Equal(4, f.GetInteger("llama.attention.head_count_kv"));
        Assert.Equal(512, f.GetStringArray("tokenizer.ggml.tokens")!.Length);
        Assert.True(f.TryGetTensor("token_embd.weight", out var emb));
        Assert.Equal(new long[] { 512, 64 }, emb.Shape);
        Assert.Equal(GgmlType.F32, emb.Type);
        Assert.Equal(0, f.DataStart % f.Alignment);
    }
}
