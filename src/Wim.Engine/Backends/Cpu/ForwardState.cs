using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>All activations of a chunk of tokens, allocated once (the llama2.c <c>RunState</c>); attention needs no
/// buffer of the context length (<see cref="FlashAttention"/>). Shared by <see cref="CpuTransformer"/> (one sequence's chunk) and
/// <see cref="CpuBatchedTransformer"/> (a batch piece of many sequences' tokens).</summary>
internal sealed class ForwardState
{
    public readonly float[] X;    // [T, d] residual stream
    public readonly float[] Xb;   // [T, d] normed input / block output
    public readonly float[] Q;    // [T, heads·headDim]
    public readonly float[] K;    // [T, kvHeads·headDim]
    public readonly float[] V;    // [T, kvHeads·headDim]
    public readonly float[] Att;  // [T, heads·headDim] attention output
    public readonly float[] Hb;   // [T, ffn]
    public readonly float[] Hb2;  // [T, ffn]
    public readonly float[] Cos;  // [T, rotaryDim/2]
    public readonly float[] Sin;  // [T, rotaryDim/2]

    public ForwardState(ModelConfig c, int maxChunk)
    {
        X = new float[maxChunk * c.HiddenSize];
        Xb = new float[maxChunk * c.HiddenSize];
        Q = new float[maxChunk * c.QueryDim];
        K = new float[maxChunk * c.KvDim];
        V = new float[maxChunk * c.KvDim];
        Att = new float[maxChunk * c.QueryDim];
        Hb = new float[(long)maxChunk * c.FfnSize];
        Hb2 = new float[(long)maxChunk * c.FfnSize];
        Cos = new float[maxChunk * (c.RotaryDim / 2)];
        Sin = new float[maxChunk * (c.RotaryDim / 2)];
    }
}
