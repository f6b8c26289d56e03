"""Drawing a garment: silhouette by kind, fill by colour/pattern/material, details, then the view.

Shapes are polygons in unit coordinates (y down) drawn at twice the output size and downsampled, so
edges are anti-aliased. A *view* moves, scales, flips, rotates or crops the garment and changes the
background, like the several shots of one product in a catalogue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fashion_vl.data.synth.taxonomy import COLOURS, Garment

Point = tuple[float, float]
BACKGROUNDS = ((250, 250, 250), (238, 238, 236), (246, 241, 230), (232, 238, 244))


@dataclass(frozen=True)
class View:
    """How one picture of a product is taken."""

    background: tuple[int, int, int] = (250, 250, 250)
    scale: float = 1.0
    shift: Point = (0.0, 0.0)
    angle: float = 0.0
    flip: bool = False
    back: bool = False  # seen from the back: no neckline, buttons or lapels
    zoom: float = 1.0  # >1 crops into the centre (a detail shot)


def sample_view(rng: random.Random, index: int) -> View:
    """View 0 is the plain front shot; later views vary pose, crop and background."""
    if index == 0:
        return View()
    return View(
        background=rng.choice(BACKGROUNDS),
        scale=rng.uniform(0.8, 1.05),
        shift=(rng.uniform(-0.07, 0.07), rng.uniform(-0.05, 0.05)),
        angle=rng.uniform(-8, 8),
        flip=rng.random() < 0.5,
        back=rng.random() < 0.3,
        zoom=rng.choice((1.0, 1.0, 1.3)),
    )


def jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """Darker (<1) or lighter (>1) version of a colour."""
    if factor < 1:
        return tuple(int(c * factor) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in rgb)  # type: ignore[return-value]


def _mirror(points: list[Point]) -> list[Point]:
    return [(1.0 - x, y) for x, y in points]


def _sleeves(sleeve: str) -> list[list[Point]]:
    if sleeve == "short sleeve":
        left = [(0.31, 0.22), (0.17, 0.40), (0.25, 0.45), (0.33, 0.34)]
    elif sleeve == "long sleeve":
        left = [(0.31, 0.22), (0.12, 0.66), (0.20, 0.69), (0.33, 0.37)]
    else:
        return []
    return [left, _mirror(left)]


def silhouette(g: Garment) -> list[list[Point]]:
    """Polygons whose union is the garment's shape."""
    kind, sub = g.sub.kind, g.sub.name
    if kind in ("top", "jacket"):
        hem = 0.90 if sub == "coat" else (0.74 if kind == "jacket" else 0.72)
        wide = 0.31 if g.sleeve != "sleeveless" else 0.35
        torso = [(wide, 0.22), (1 - wide, 0.22), (0.67, hem), (0.33, hem)]
        return [torso, *_sleeves(g.sleeve)]
    if kind == "dress":
        hem = {"mini": 0.66, "midi": 0.80, "maxi": 0.95}[g.length]
        flare = 0.24 if sub == "a-line dress" else 0.34
        bodice = [(0.35 if g.sleeve == "sleeveless" else 0.32, 0.22), (0.65 if g.sleeve == "sleeveless" else 0.68, 0.22),
                  (0.62, 0.46), (0.38, 0.46)]  # fmt: skip
        skirt = [(0.38, 0.45), (0.62, 0.45), (1 - flare, hem), (flare, hem)]
        return [bodice, skirt, *_sleeves(g.sleeve)]
    if kind == "skirt":
        hem = {"mini": 0.52, "midi": 0.70, "maxi": 0.88}[g.length]
        flare = 0.25 if sub == "a-line skirt" else 0.35
        return [[(0.37, 0.26), (0.63, 0.26), (1 - flare, hem), (flare, hem)]]
    if kind in ("pants", "shorts"):
        hem = 0.50 if kind == "shorts" else 0.92
        half = {"slim": 0.075, "straight": 0.10, "wide-leg": 0.15}[g.fit]
        left = [(0.35, 0.20), (0.50, 0.20), (0.50, 0.40), (0.43 + half * 0.4, hem), (0.43 - half * 1.6, hem)]
        return [left, _mirror(left)]
    if kind == "sneakers":
        return [[(0.20, 0.58), (0.45, 0.50), (0.62, 0.56), (0.80, 0.62), (0.82, 0.72), (0.18, 0.72)]]
    if kind == "boots":
        return [[(0.34, 0.22), (0.56, 0.22), (0.57, 0.56), (0.80, 0.64), (0.80, 0.74), (0.33, 0.74)]]
    if kind == "heels":
        return [[(0.24, 0.52), (0.34, 0.58), (0.72, 0.62), (0.80, 0.69), (0.32, 0.68), (0.30, 0.80),
                 (0.26, 0.80)]]  # fmt: skip
    if kind == "tote":
        return [[(0.27, 0.40), (0.73, 0.40), (0.77, 0.82), (0.23, 0.82)]]
    if kind == "clutch":
        return [[(0.22, 0.46), (0.78, 0.46), (0.78, 0.68), (0.22, 0.68)]]
    if kind == "backpack":
        return [[(0.32, 0.26), (0.68, 0.26), (0.71, 0.84), (0.29, 0.84)]]
    raise ValueError(f"no silhouette for kind {kind!r}")


def _px(points: list[Point], size: int) -> list[tuple[float, float]]:
    return [(x * size, y * size) for x, y in points]


def _pattern_layer(g: Garment, base: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    layer = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(layer)
    accent = COLOURS[g.accent]
    step = size * 0.07
    if g.pattern == "striped":
        y = 0.0
        while y < size:
            draw.rectangle([0, y, size, y + step * 0.4], fill=accent)
            y += step
    elif g.pattern == "checked":
        check = Image.new("RGB", (size, size), base)
        cdraw = ImageDraw.Draw(check)
        for i in range(int(size / step) + 1):
            cdraw.rectangle([0, i * step, size, i * step + step * 0.35], fill=accent)
            cdraw.rectangle([i * step, 0, i * step + step * 0.35, size], fill=accent)
        layer = Image.blend(layer, check, 0.75)
    elif g.pattern == "dotted":
        r = size * 0.014
        for i in range(int(size / step) + 1):
            for j in range(int(size / step) + 1):
                cx, cy = (i + 0.5 * (j % 2)) * step, j * step
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=accent)
    elif g.pattern == "floral":
        r = size * 0.012
        for _ in range(int((size / step) ** 2 * 0.8)):
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
                draw.ellipse(
                    [
                        cx + dx * r * 1.3 - r,
                        cy + dy * r * 1.3 - r,
                        cx + dx * r * 1.3 + r,
                        cy + dy * r * 1.3 + r,
                    ],
                    fill=accent,
                )
            draw.ellipse([cx - r * 0.7, cy - r * 0.7, cx + r * 0.7, cy + r * 0.7], fill=(240, 200, 60))
    return _texture(layer, g.material, size, rng)


def _texture(layer: Image.Image, material: str, size: int, rng: random.Random) -> Image.Image:
    if material in ("wool", "cashmere", "suede"):
        # seeded numpy noise (PIL's effect_noise draws from C's unseeded rand())
        sigma = 9 if material == "wool" else 5
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, (size, size, 1))
        pixels = np.asarray(layer, dtype=np.float32) + noise
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if material == "denim":
        draw = ImageDraw.Draw(layer)
        light = shade(layer.getpixel((0, 0)), 1.18)
        for k in range(-size, size, max(3, size // 40)):
            draw.line([(k, 0), (k + size, size)], fill=light, width=1)
        return layer
    if material in ("leather", "silk"):
        gloss = Image.linear_gradient("L").resize((size, size)).rotate(rng.choice((30, 60)), fillcolor=0)
        return Image.composite(
            Image.new("RGB", layer.size, shade(layer.getpixel((size // 2, size // 2)), 1.25)),
            layer,
            gloss.point(lambda v: v // 4),
        )
    return layer


def _details(
    draw: ImageDraw.ImageDraw, g: Garment, base: tuple[int, int, int], size: int, back: bool
) -> None:
    dark, light = shade(base, 0.6), shade(base, 1.35)
    kind = g.sub.kind
    if kind in ("top", "jacket", "dress") and not back:
        if g.neckline == "crewneck":
            draw.ellipse(_px([(0.43, 0.18), (0.57, 0.27)], size), fill=dark)
        elif g.neckline == "v-neck":
            draw.polygon(_px([(0.42, 0.215), (0.58, 0.215), (0.50, 0.35)], size), fill=dark)
        elif g.neckline == "collar":
            draw.polygon(_px([(0.41, 0.20), (0.50, 0.23), (0.45, 0.30)], size), fill=light)
            draw.polygon(_px([(0.59, 0.20), (0.50, 0.23), (0.55, 0.30)], size), fill=light)
        elif g.neckline == "turtleneck":
            draw.rectangle(_px([(0.41, 0.13), (0.59, 0.23)], size), fill=shade(base, 0.85))
    if kind == "jacket" and not back:
        hem = 0.90 if g.sub.name == "coat" else 0.74
        draw.line(_px([(0.50, 0.24), (0.50, hem)], size), fill=dark, width=max(1, size // 90))
        for y in (0.42, 0.52, 0.62):
            draw.ellipse(_px([(0.515, y), (0.54, y + 0.025)], size), fill=dark)
        if g.sub.name == "blazer":
            draw.polygon(_px([(0.44, 0.22), (0.50, 0.42), (0.40, 0.30)], size), fill=dark)
            draw.polygon(_px([(0.56, 0.22), (0.50, 0.42), (0.60, 0.30)], size), fill=dark)
    if kind in ("pants", "shorts"):
        draw.rectangle(_px([(0.35, 0.20), (0.65, 0.235)], size), fill=dark)
    if kind == "skirt":
        draw.rectangle(_px([(0.37, 0.26), (0.63, 0.29)], size), fill=dark)
    if kind == "sneakers":
        draw.rectangle(_px([(0.18, 0.69), (0.82, 0.74)], size), fill=(245, 245, 245))
        for x in (0.42, 0.47, 0.52):
            draw.line(
                _px([(x, 0.54), (x + 0.03, 0.60)], size), fill=(245, 245, 245), width=max(1, size // 100)
            )
    if kind == "boots":
        draw.rectangle(_px([(0.33, 0.71), (0.80, 0.75)], size), fill=(35, 30, 28))
    if kind == "tote":
        draw.arc(_px([(0.35, 0.24), (0.50, 0.52)], size), 180, 360, fill=dark, width=max(2, size // 60))
        draw.arc(_px([(0.50, 0.24), (0.65, 0.52)], size), 180, 360, fill=dark, width=max(2, size // 60))
    if kind == "clutch":
        draw.polygon(_px([(0.22, 0.46), (0.78, 0.46), (0.50, 0.60)], size), fill=dark)
    if kind == "backpack":
        draw.rectangle(_px([(0.37, 0.56), (0.63, 0.78)], size), fill=dark)
        draw.arc(_px([(0.42, 0.16), (0.58, 0.34)], size), 180, 360, fill=dark, width=max(2, size // 60))


def _mask_extras(draw: ImageDraw.ImageDraw, g: Garment, size: int) -> None:
    """Parts outside the main silhouette: bag handles and straps, a turtleneck's collar."""
    width = max(2, size // 60)
    if g.sub.kind == "tote":
        draw.arc(_px([(0.35, 0.24), (0.50, 0.52)], size), 180, 360, fill=255, width=width)
        draw.arc(_px([(0.50, 0.24), (0.65, 0.52)], size), 180, 360, fill=255, width=width)
    elif g.sub.kind == "backpack":
        draw.arc(_px([(0.42, 0.16), (0.58, 0.34)], size), 180, 360, fill=255, width=width)
    elif g.neckline == "turtleneck":
        draw.rectangle(_px([(0.41, 0.13), (0.59, 0.23)], size), fill=255)


def render(g: Garment, view: View, size: int, seed: int) -> Image.Image:
    """Draw garment ``g`` as seen in ``view`` on a ``size``x``size`` RGB picture."""
    rng = random.Random(seed)
    big = size * 2  # drawn at twice the size, then reduced: anti-aliased edges
    base = jitter(COLOURS[g.colour], rng)
    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    for poly in silhouette(g):
        mdraw.polygon(_px(poly, big), fill=255)
    _mask_extras(mdraw, g, big)
    garment = _pattern_layer(g, base, big, rng)
    _details(ImageDraw.Draw(garment), g, base, big, view.back)
    outline = mask.filter(ImageFilter.FIND_EDGES)
    garment = Image.composite(Image.new("RGB", garment.size, shade(base, 0.5)), garment, outline)
    layer = Image.merge("RGBA", (*garment.split(), mask))
    if view.flip:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if view.angle:
        layer = layer.rotate(view.angle, resample=Image.Resampling.BILINEAR)
    if view.scale != 1.0:
        scaled = int(big * view.scale)
        layer = layer.resize((scaled, scaled), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (big, big), view.background)
    offset = (
        int((big - layer.width) / 2 + view.shift[0] * big),
        int((big - layer.height) / 2 + view.shift[1] * big),
    )
    canvas.paste(layer, offset, layer)
    if view.zoom > 1.0:
        crop = big / view.zoom
        left = (big - crop) / 2
        canvas = canvas.crop((left, left * 0.8, left + crop, left * 0.8 + crop))
        return canvas.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return canvas.reduce(2)
