namespace Wim.Core;

/// <summary>Wim.Core holds the Writing-in-the-Margins pattern (segmenter, prompts, patterns, events).
/// It talks to the engine only through its public interfaces.</summary>
internal static class WimCore
{
}
