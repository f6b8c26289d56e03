"""Drawing a results grid with PIL: one row per query, its top-K results, the correct ones outlined."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TILE = 128
PAD = 6
CORRECT = (30, 170, 60)
WRONG = (220, 220, 220)


@dataclass
class Row:
    """A query (images and/or a text) and its ranked results."""

    query_images: Sequence[Image.Image]
    query_text: str | None
    results: Sequence[Image.Image]
    correct: Sequence[bool]


def _text_tile(text: str, width: int) -> Image.Image:
    tile = Image.new("RGB", (width, TILE), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    lines = textwrap.wrap(text, width=max(10, width // 7))[:9]
    draw.multiline_text((4, 4), "\n".join(lines), fill=(20, 20, 20), font=font, spacing=2)
    return tile


def _fit(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((TILE, TILE))


def draw_grid(rows: Sequence[Row], title: str = "") -> Image.Image:
    """One row per query: its image(s) and text, a gap, then its results left to right (rank 1 first);
    correct results get a green frame."""
    n_query = max((len(r.query_images) + (1 if r.query_text else 0)) for r in rows)
    n_results = max(len(r.results) for r in rows)
    header = 20 if title else 0
    width = PAD + n_query * (TILE + PAD) + 2 * PAD + n_results * (TILE + PAD)
    canvas = Image.new("RGB", (width, header + PAD + len(rows) * (TILE + PAD)), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, 4), title, fill=(0, 0, 0), font=ImageFont.load_default())
    for r, row in enumerate(rows):
        y = header + PAD + r * (TILE + PAD)
        x = PAD
        for image in row.query_images:
            canvas.paste(_fit(image), (x, y))
            x += TILE + PAD
        if row.query_text:
            canvas.paste(_text_tile(row.query_text, TILE), (x, y))
        x = PAD + n_query * (TILE + PAD) + 2 * PAD
        for image, ok in zip(row.results, row.correct):
            canvas.paste(_fit(image), (x, y))
            draw.rectangle(
                [x - 3, y - 3, x + TILE + 2, y + TILE + 2],
                outline=CORRECT if ok else WRONG,
                width=4 if ok else 1,
            )
            x += TILE + PAD
    return canvas


def draw_labelled_grid(
    columns: Sequence[str], rows: Sequence[Sequence[Image.Image | str]], title: str = ""
) -> Image.Image:
    """A table of pictures: a header line naming each column, then one row per item; a cell is an
    image or a text (drawn as a text tile). For generation results: condition, sketch, mask, output."""
    header = 20 if title else 0
    label = 16
    width = PAD + len(columns) * (TILE + PAD)
    height = header + label + PAD + len(rows) * (TILE + PAD)
    canvas = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text((PAD, 4), title, fill=(0, 0, 0), font=font)
    for c, name in enumerate(columns):
        draw.text((PAD + c * (TILE + PAD), header + 2), name, fill=(60, 60, 60), font=font)
    for r, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {r} has {len(row)} cells for {len(columns)} columns")
        y = header + label + PAD + r * (TILE + PAD)
        for c, cell in enumerate(row):
            tile = _text_tile(cell, TILE) if isinstance(cell, str) else _fit(cell)
            canvas.paste(tile, (PAD + c * (TILE + PAD), y))
    return canvas
