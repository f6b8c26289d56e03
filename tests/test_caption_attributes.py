"""Shares of generated captions that name the product's colour and category."""

from __future__ import annotations

import pytest

from fashion_vl.data.synth.taxonomy import caption_vocabulary
from fashion_vl.metrics.caption_attributes import caption_attribute_shares, product_attributes

WORDS = caption_vocabulary()  # the synthetic data's colours and sub-category names


def test_product_attributes_use_the_given_words_and_keep_the_longest_category() -> None:
    assert product_attributes("Navy wool shift dress", *WORDS) == ({"navy"}, {"shift dress"})
    assert product_attributes("Striped cotton t-shirt in red", *WORDS) == ({"red"}, {"t-shirt"})
    assert product_attributes("A lovely garment", *WORDS) == (set(), set())
    assert product_attributes("long sleeve cotton a - line skirt", *WORDS) == (
        set(),
        {"a-line skirt"},
    )  # decoded
    # the vocabulary is the caller's: other words, other findings
    assert product_attributes("Navy wool shift dress", ["wool"], ["dress"]) == ({"wool"}, {"dress"})


def test_caption_attribute_shares() -> None:
    products = ["Navy wool shift dress", "Red cotton t-shirt", "Black leather boots", "A lovely garment"]
    captions = [
        "a navy shift dress in wool",  # colour and category
        "a red shirt",  # colour; "shirt" is not "t-shirt", but is its head noun
        "grey boots",  # category only
        "navy dress",  # product names neither: left out
    ]
    shares = caption_attribute_shares(captions, products, *WORDS)
    assert shares.n == 3
    assert shares.colour == pytest.approx(2 / 3)
    assert shares.category == pytest.approx(2 / 3)
    assert shares.category_noun == pytest.approx(1.0)
    assert shares.colour_and_category == pytest.approx(1 / 3)
    assert caption_attribute_shares([], [], *WORDS).n == 0
    with pytest.raises(ValueError, match="2 captions but 1"):
        caption_attribute_shares(["a", "b"], ["c"], *WORDS)
