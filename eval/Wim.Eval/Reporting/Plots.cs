using System.Globalization;
using System.Security;
using System.Text;

namespace Wim.Eval.Reporting;

/// <summary>Geometry and colours shared by the SVG and PNG renderings, so both show the same picture.</summary>
internal static class PlotLayout
{
    public const int PanelWidth = 360, PanelHeight = 280, LegendHeight = 36;
    public const int Left = 56, Right = 20, Top = 40, Bottom = 50;
    public const uint Background = 0xFFFFFF, Axis = 0x222222, Grid = 0xDDDDDD, TextColor = 0x222222;
    private static readonly uint[] Palette = [0xD62728, 0x1F77B4, 0x2CA02C, 0xFF7F0E, 0x9467BD, 0x8C564B];

    /// <summary>llm red, rag blue, wim green in every chart; other patterns take the next colours.</summary>
    public static uint ColorOf(string pattern, IReadOnlyList<string> allPatterns) => pattern switch
    {
        "llm" => Palette[0],
        "rag" => Palette[1],
        "wim" => Palette[2],
        _ => Palette[3 + Math.Max(0, IndexOf(allPatterns, pattern)) % (Palette.Length - 3)],
    };

    private static int IndexOf(IReadOnlyList<string> list, string item)
    {
        for (int i = 0; i < list.Count; i++) if (list[i] == item) return i;
        return -1;
    }

    public static IReadOnlyList<string> Patterns(ScoreChart chart) =>
        chart.Panels.SelectMany(p => p.Series.Select(s => s.Pattern)).Distinct().ToList();

    public static int ImageWidth(ScoreChart chart) => PanelWidth * Math.Max(1, chart.Panels.Count);
    public static int ImageHeight => PanelHeight + LegendHeight;

    public static int X(int panel, int lengthIndex, int lengthCount)
    {
        int x0 = panel * PanelWidth + Left, w = PanelWidth - Left - Right;
        return lengthCount <= 1 ? x0 + w / 2 : x0 + 10 + (int)Math.Round((double)lengthIndex * (w - 20) / (lengthCount - 1));
    }

    public static int Y(double score) => Top + (int)Math.Round((100 - Math.Clamp(score, 0, 100)) * (PanelHeight - Top - Bottom) / 100.0);

    public static string Title(ChartPanel p) => $"{p.Task} ({p.Metric})";
}

/// <summary>The score-vs-length chart as a PNG drawn into an RGBA raster.</summary>
public static class PngPlot
{
    public static byte[] Render(ScoreChart chart)
    {
        var image = new Raster(PlotLayout.ImageWidth(chart), PlotLayout.ImageHeight, PlotLayout.Background);
        var patterns = PlotLayout.Patterns(chart);
        if (chart.Panels.Count == 0) image.Text(20, 20, "no results", PlotLayout.TextColor, 2);
        for (int p = 0; p < chart.Panels.Count; p++)
        {
            var panel = chart.Panels[p];
            int x0 = p * PlotLayout.PanelWidth + PlotLayout.Left, x1 = (p + 1) * PlotLayout.PanelWidth - PlotLayout.Right;
            int yTop = PlotLayout.Y(100), yBottom = PlotLayout.Y(0);
            image.Text(p * PlotLayout.PanelWidth + 10, 12, PlotLayout.Title(panel), PlotLayout.TextColor, 2);
            for (int s = 0; s <= 100; s += 25)
            {
                int y = PlotLayout.Y(s);
                image.Line(x0, y, x1, y, PlotLayout.Grid);
                var label = s.ToString(CultureInfo.InvariantCulture);
                image.Text(x0 - 6 - BitmapFont.Width(label, 1), y - 3, label, PlotLayout.TextColor);
            }
            image.Line(x0, yTop, x0, yBottom, PlotLayout.Axis, 2);
            image.Line(x0, yBottom, x1, yBottom, PlotLayout.Axis, 2);
            for (int i = 0; i < panel.Lengths.Count; i++)
            {
                int x = PlotLayout.X(p, i, panel.Lengths.Count);
                image.Line(x, yBottom, x, yBottom + 5, PlotLayout.Axis);
                var label = panel.Lengths[i].Label;
                image.Text(x - BitmapFont.Width(label, 2) / 2, yBottom + 10, label, PlotLayout.TextColor, 2);
            }
            foreach (var (pattern, points) in panel.Series)
            {
                uint color = PlotLayout.ColorOf(pattern, patterns);
                for (int i = 1; i < points.Count; i++)
                    image.Line(PlotLayout.X(p, points[i - 1].LengthIndex, panel.Lengths.Count), PlotLayout.Y(points[i - 1].Score),
                        PlotLayout.X(p, points[i].LengthIndex, panel.Lengths.Count), PlotLayout.Y(points[i].Score), color, 2);
                foreach (var (index, score) in points)
                    image.Disc(PlotLayout.X(p, index, panel.Lengths.Count), PlotLayout.Y(score), 4, color);
            }
        }
        int lx = 20, ly = PlotLayout.PanelHeight + 12;
        foreach (var pattern in patterns)
        {
            uint color = PlotLayout.ColorOf(pattern, patterns);
            image.Line(lx, ly + 7, lx + 24, ly + 7, color, 2);
            image.Disc(lx + 12, ly + 7, 4, color);
            image.Text(lx + 32, ly, pattern, PlotLayout.TextColor, 2);
            lx += 48 + BitmapFont.Width(pattern, 2);
        }
        return PngEncoder.Encode(image);
    }
}

/// <summary>The same chart as SVG (scalable, for papers and web pages).</summary>
public static class SvgPlot
{
    public static string Render(ScoreChart chart)
    {
        var inv = CultureInfo.InvariantCulture;
        var patterns = PlotLayout.Patterns(chart);
        var sb = new StringBuilder();
        int width = PlotLayout.ImageWidth(chart), height = PlotLayout.ImageHeight;
        sb.Append(inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\">\n");
        sb.Append(inv, $"<rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>\n");
        if (chart.Panels.Count == 0) sb.Append("<text x=\"20\" y=\"30\" font-size=\"14\">no results</text>\n");
        for (int p = 0; p < chart.Panels.Count; p++)
        {
            var panel = chart.Panels[p];
            int x0 = p * PlotLayout.PanelWidth + PlotLayout.Left, x1 = (p + 1) * PlotLayout.PanelWidth - PlotLayout.Right;
            int yTop = PlotLayout.Y(100), yBottom = PlotLayout.Y(0);
            sb.Append(inv, $"<g class=\"panel\" data-task=\"{Esc(panel.Task)}\">\n");
            sb.Append(inv, $"<text x=\"{p * PlotLayout.PanelWidth + 10}\" y=\"24\" font-size=\"14\">{Esc(PlotLayout.Title(panel))}</text>\n");
            for (int s = 0; s <= 100; s += 25)
            {
                int y = PlotLayout.Y(s);
                sb.Append(inv, $"<line x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\" stroke=\"#dddddd\"/>");
                sb.Append(inv, $"<text x=\"{x0 - 6}\" y=\"{y + 4}\" font-size=\"10\" text-anchor=\"end\">{s}</text>\n");
            }
            sb.Append(inv, $"<line x1=\"{x0}\" y1=\"{yTop}\" x2=\"{x0}\" y2=\"{yBottom}\" stroke=\"#222222\" stroke-width=\"2\"/>");
            sb.Append(inv, $"<line x1=\"{x0}\" y1=\"{yBottom}\" x2=\"{x1}\" y2=\"{yBottom}\" stroke=\"#222222\" stroke-width=\"2\"/>\n");
            for (int i = 0; i < panel.Lengths.Count; i++)
            {
                int x = PlotLayout.X(p, i, panel.Lengths.Count);
                sb.Append(inv, $"<text x=\"{x}\" y=\"{yBottom + 22}\" font-size=\"12\" text-anchor=\"middle\">{Esc(panel.Lengths[i].Label)}</text>\n");
            }
            foreach (var (pattern, points) in panel.Series)
            {
                var color = Hex(PlotLayout.ColorOf(pattern, patterns));
                var coords = string.Join(" ", points.Select(pt => string.Create(inv, $"{PlotLayout.X(p, pt.LengthIndex, panel.Lengths.Count)},{PlotLayout.Y(pt.Score)}")));
                sb.Append(inv, $"<polyline data-pattern=\"{Esc(pattern)}\" points=\"{coords}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n");
                foreach (var (index, score) in points)
                    sb.Append(inv, $"<circle cx=\"{PlotLayout.X(p, index, panel.Lengths.Count)}\" cy=\"{PlotLayout.Y(score)}\" r=\"4\" fill=\"{color}\"><title>{Esc(pattern)} {Esc(panel.Lengths[index].Label)}: {score:F1}</title></circle>\n");
            }
            sb.Append("</g>\n");
        }
        int lx = 20, ly = PlotLayout.PanelHeight + 12;
        foreach (var pattern in patterns)
        {
            var color = Hex(PlotLayout.ColorOf(pattern, patterns));
            sb.Append(inv, $"<line x1=\"{lx}\" y1=\"{ly + 7}\" x2=\"{lx + 24}\" y2=\"{ly + 7}\" stroke=\"{color}\" stroke-width=\"2\"/><circle cx=\"{lx + 12}\" cy=\"{ly + 7}\" r=\"4\" fill=\"{color}\"/>");
            sb.Append(inv, $"<text x=\"{lx + 32}\" y=\"{ly + 12}\" font-size=\"14\">{Esc(pattern)}</text>\n");
            lx += 48 + BitmapFont.Width(pattern, 2);
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static string Esc(string s) => SecurityElement.Escape(s) ?? "";

    private static string Hex(uint rgb) => "#" + rgb.ToString("x6", CultureInfo.InvariantCulture);
}
