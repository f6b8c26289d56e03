"""Procedural fashion data in the real datasets' on-disk formats.

Every product is drawn from attributes (category, sub-category, colour, pattern, material, sleeves,
length, neckline, fit) that decide both its pictures and its texts, so models can learn from it and
the tests of learning mean something. :func:`generate` writes FashionGen, BigFACAD, Fashion200k,
Polyvore Outfits (items and OCIR) and FashionIQ (with Fashion-IQ-Cap captions) exactly as the readers
in :mod:`fashion_vl.data.formats` expect, plus a WordPiece tokenizer trained on the texts.
"""

from fashion_vl.data.synth.generate import SIZES, generate

__all__ = ["SIZES", "generate"]
