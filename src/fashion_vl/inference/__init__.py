"""Inference objects: a trained, exported or converted model with its own preprocessing.

``fashion_vl.load(source)`` gives a :class:`Embedder` (``encode_images``, ``encode_texts``, and what
the checkpoint can do beyond: ``encode_composed``, ``classify``, ``encode_outfits``, ``caption``,
``generate``, ``try_on``); ``save_pretrained`` / ``from_pretrained`` write and read Hugging Face style
folders. See ``docs/inference.md``.
"""

from fashion_vl.inference.base import CAPABILITIES, Embedder, UnsupportedCapability
from fashion_vl.inference.clip import ClipEmbedder
from fashion_vl.inference.fashionvil import FashionViLEmbedder
from fashion_vl.inference.loading import MissingConfigError, load
from fashion_vl.inference.unifashion import UniFashionEmbedder

__all__ = [
    "CAPABILITIES",
    "ClipEmbedder",
    "Embedder",
    "FashionViLEmbedder",
    "MissingConfigError",
    "UniFashionEmbedder",
    "UnsupportedCapability",
    "load",
]
