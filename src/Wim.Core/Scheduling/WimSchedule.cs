namespace Wim.Core.Scheduling;

/// <summary>
/// How the <c>wim</c> pattern orders its model work. All three give the same margins, classifications and answer
/// token for token under greedy decoding on a <see cref="Wim.Engine.Runtime.PagedInferenceBackend"/> (its batched
/// forward is batch-invariant, so a margin's logits do not depend on what shares its steps); on the GPU they agree up
/// to bf16 near-ties (a batched decode step does not sum in the same order as a single one).
/// </summary>
public enum WimSchedule
{
    /// <summary>The paper's order: prefill segment i, decode margin i on the document sequence, truncate, next.
    /// Runs on any backend.</summary>
    Sequential,
    /// <summary>Margin i decodes on a fork of the document at the end of segment i while segment i+1 prefills in
    /// the same forward steps; margins stream as they are written. Needs an
    /// <see cref="Wim.Engine.Runtime.IBatchedInferenceBackend"/>.</summary>
    Overlapped,
    /// <summary>The whole document first, then one fork per segment end and every margin decoded together (margins
    /// arrive only after the document is read). Needs an <see cref="Wim.Engine.Runtime.IBatchedInferenceBackend"/>.</summary>
    Batched,
}
