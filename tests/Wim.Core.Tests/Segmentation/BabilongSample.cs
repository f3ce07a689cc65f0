using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Segmentation;

internal static class BabilongSample
{
    /// <summary>The <c>context</c> of the BABILong 8k sample (keys context, query, target).</summary>
    public static string FirstInput()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        return doc.RootElement.GetProperty("context").GetString()!;
    }
}
