"""Fashion-IQ-Cap (UniFashion's LLaVA captions of FashionIQ images, ``docs/reference.md`` UniFashion §5):
``FashionIQ-Cap/next_llava.<split>.<category>.caption.json``, a JSON list of
``{"image": "<asin>", "caption": "...", "text_guidance": "..."}``.

Captions are whitespace-normalised (the released ones start with a newline); empty ones are skipped and,
with ``drop_degenerate``, so are looping ones (:func:`is_degenerate`, the rule
``fvl-data prepare fashioniq_cap`` applies). An image with several captions keeps its first.
Split ``test`` reads the val files, as FashionIQ's does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fashion_vl.data.formats._json import get_field, load_entries
from fashion_vl.data.formats.fashioniq import FASHIONIQ_CATEGORIES

DEFAULT_MAX_REPEAT_SHARE = 0.4
DEFAULT_NGRAM = 3
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def normalize_space(text: str) -> str:
    """``text`` stripped, every run of whitespace inside replaced by one space."""
    return " ".join(text.split())


def repeat_share(text: str, n: int = DEFAULT_NGRAM) -> float:
    """Share of the word n-grams of ``text`` that repeat an n-gram seen earlier in it, in [0, 1).

    Words are lower-cased runs of letters and digits (``v-neck`` and ``it's`` are one word),
    punctuation is ignored. A text with fewer than ``n`` words has share 0.
    """
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_degenerate(
    text: str, max_repeat_share: float = DEFAULT_MAX_REPEAT_SHARE, n: int = DEFAULT_NGRAM
) -> bool:
    """Whether ``text`` loops: more than ``max_repeat_share`` of its word n-grams are repeats."""
    return repeat_share(text, n) > max_repeat_share


def fashioniq_cap_path(data_dir: str | Path, category: str, split: str) -> Path:
    split = "val" if split == "test" else split
    return Path(data_dir) / "FashionIQ-Cap" / f"next_llava.{split}.{category}.caption.json"


@dataclass
class CaptionCounts:
    """What :func:`read_fashioniq_cap` kept and skipped."""

    kept: int = 0
    empty: int = 0
    degenerate: int = 0
    duplicate_images: int = 0


def read_fashioniq_cap(
    data_dir: str | Path,
    category: str,
    split: str,
    drop_degenerate: bool = True,
    max_repeat_share: float = DEFAULT_MAX_REPEAT_SHARE,
) -> tuple[dict[str, str], CaptionCounts]:
    """Captions by FashionIQ asin for one category and split, and the counts of what was skipped.

    Every entry must have string fields ``image``, ``caption`` and ``text_guidance``; a missing or
    mistyped one is a :class:`~fashion_vl.data.formats.DataFormatError` naming file, entry and field.
    """
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {FASHIONIQ_CATEGORIES}, not '{category}'")
    data_dir = Path(data_dir).expanduser()
    path = fashioniq_cap_path(data_dir, category, split)
    entries = load_entries(path, dataset="FashionIQ", data_dir=data_dir)
    captions: dict[str, str] = {}
    counts = CaptionCounts()
    for i, entry in enumerate(entries):
        asin = get_field(entry, "image", "str", path, i)
        caption = normalize_space(get_field(entry, "caption", "str", path, i))
        get_field(entry, "text_guidance", "str", path, i)
        if not caption:
            counts.empty += 1
        elif drop_degenerate and is_degenerate(caption, max_repeat_share):
            counts.degenerate += 1
        elif asin in captions:
            counts.duplicate_images += 1
        else:
            captions[asin] = caption
    counts.kept = len(captions)
    return captions, counts
