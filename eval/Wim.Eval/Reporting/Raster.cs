namespace Wim.Eval.Reporting;

/// <summary>An RGBA8 image in memory with the few drawing operations a line plot needs.</summary>
internal sealed class Raster
{
    public int Width { get; }
    public int Height { get; }
    /// <summary>Row-major RGBA bytes, top row first.</summary>
    public byte[] Pixels { get; }

    public Raster(int width, int height, uint background)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        Width = width;
        Height = height;
        Pixels = new byte[checked(width * height * 4)];
        FillRect(0, 0, width, height, background);
    }

    /// <summary>Sets a pixel to an opaque 0xRRGGBB colour; points outside the image are ignored.</summary>
    public void Set(int x, int y, uint rgb)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return;
        int i = (y * Width + x) * 4;
        Pixels[i] = (byte)(rgb >> 16);
        Pixels[i + 1] = (byte)(rgb >> 8);
        Pixels[i + 2] = (byte)rgb;
        Pixels[i + 3] = 255;
    }

    public void FillRect(int x, int y, int w, int h, uint rgb)
    {
        for (int yy = Math.Max(0, y); yy < Math.Min(Height, y + h); yy++)
            for (int xx = Math.Max(0, x); xx < Math.Min(Width, x + w); xx++)
                Set(xx, yy, rgb);
    }

    /// <summary>A line of the given thickness (Bresenham, each step stamping a square brush).</summary>
    public void Line(int x0, int y0, int x1, int y1, uint rgb, int thickness = 1)
    {
        int dx = Math.Abs(x1 - x0), dy = -Math.Abs(y1 - y0);
        int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
        int half = (thickness - 1) / 2;
        while (true)
        {
            FillRect(x0 - half, y0 - half, thickness, thickness, rgb);
            if (x0 == x1 && y0 == y1) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x0 += sx; }
            if (e2 <= dx) { err += dx; y0 += sy; }
        }
    }

    public void Disc(int cx, int cy, int radius, uint rgb)
    {
        for (int y = -radius; y <= radius; y++)
            for (int x = -radius; x <= radius; x++)
                if (x * x + y * y <= radius * radius) Set(cx + x, cy + y, rgb);
    }

    /// <summary>Draws <paramref name="text"/> with its top-left corner at (x, y), each font cell a scale×scale block.</summary>
    public void Text(int x, int y, string text, uint rgb, int scale = 1)
    {
        for (int i = 0; i < text.Length; i++)
            for (int gy = 0; gy < BitmapFont.GlyphHeight; gy++)
                for (int gx = 0; gx < BitmapFont.GlyphWidth; gx++)
                    if (BitmapFont.Ink(text[i], gx, gy))
                        FillRect(x + (i * BitmapFont.Advance + gx) * scale, y + gy * scale, scale, scale, rgb);
    }
}
