"""Do generated captions name the product's colour and category? A check for captions of data whose
product texts draw their colours and category names from known word lists: the caller gives them (for
the synthetic data, :func:`fashion_vl.data.synth.taxonomy.caption_vocabulary`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def _mentions(text: str, words: Iterable[str]) -> set[str]:
    """The ``words`` that occur in ``text`` as whole words (case-insensitive; a hyphen joins words, so
    ``shirt`` is not found in ``t-shirt``)."""
    text = re.sub(r"\s*-\s*", "-", text.lower())  # a WordPiece decode spaces hyphens: "a - line"
    return {w for w in words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)}


def product_attributes(
    text: str, colours: Iterable[str], categories: Iterable[str]
) -> tuple[set[str], set[str]]:
    """The ``colours`` and ``categories`` (names, e.g. sub-categories) that a product text names; a name
    inside a longer one that is also named (``dress`` in ``shift dress``) is dropped."""
    named = _mentions(text, categories)
    named = {c for c in named if not any(c != o and c in o for o in named)}
    return _mentions(text, colours), named


@dataclass(frozen=True)
class AttributeShares:
    """Shares (0-1) of the captions that name the product's colour, its category (the full sub-category
    name), its category's head noun (``dress`` for ``shift dress``), and both colour and category; ``n``
    counts the captions whose product names a colour and a category (the others are left out)."""

    colour: float
    category: float
    category_noun: float
    colour_and_category: float
    n: int


def caption_attribute_shares(
    captions: Sequence[str],
    product_texts: Sequence[str],
    colours: Iterable[str],
    categories: Iterable[str],
) -> AttributeShares:
    """How often ``captions[i]`` names a colour and a category that ``product_texts[i]`` (the product's
    own title or description) names, among the words ``colours`` and ``categories``. Products whose
    text names no colour or no category are skipped."""
    if len(captions) != len(product_texts):
        raise ValueError(f"{len(captions)} captions but {len(product_texts)} product texts")
    colour_words, category_words = tuple(colours), tuple(categories)
    colour = category = noun = both = n = 0
    for caption, text in zip(captions, product_texts, strict=True):
        colours, categories = product_attributes(text, colour_words, category_words)
        if not colours or not categories:
            continue
        n += 1
        has_colour = bool(_mentions(caption, colours))
        has_category = bool(_mentions(caption, categories))
        colour += has_colour
        category += has_category
        noun += bool(_mentions(caption, {c.split()[-1].split("-")[-1] for c in categories}) or has_category)
        both += has_colour and has_category
    if n == 0:
        return AttributeShares(0.0, 0.0, 0.0, 0.0, 0)
    return AttributeShares(colour / n, category / n, noun / n, both / n, n)
