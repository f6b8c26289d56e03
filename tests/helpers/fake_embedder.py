"""A small deterministic model with the members of ``fashion_vl.inference.Embedder`` the search code uses.

An image's vector follows its mean colour; a text's follows the colour words in it ("red", "blue",
...), so a text query for "red" ranks red images first, and an image query ranks images of the same
colour first. A hash of the pixels (or of the text) adds a small deterministic offset so that no two
items tie. Vectors are L2-normalised float32 on CPU, ``[N, D]`` or ``[N, Q, D]``, as the contract says.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fashion_vl.data.images import ImageLoadError, read_image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "green": (40, 140, 60),
    "blue": (50, 110, 210),
    "yellow": (240, 210, 50),
    "black": (28, 28, 30),
    "white": (240, 240, 236),
}


class UnsupportedCapability(ValueError):
    pass


class FakeEmbedder:
    def __init__(
        self,
        embed_dim: int = 16,
        vectors_per_image: int = 1,
        capabilities: Sequence[str] = ("image", "text", "composed"),
        name: str = "fake-embedder",
        delay_s: float = 0.0,
        crash_after_calls: int | None = None,
    ) -> None:
        self.name = name
        self.embed_dim = embed_dim
        self.vectors_per_image = vectors_per_image
        self.capabilities = frozenset(capabilities)
        self.device = torch.device("cpu")
        self._colour = np.random.default_rng(0).standard_normal((3, embed_dim)).astype(np.float32)
        self.delay_s = delay_s
        self.crash_after_calls = crash_after_calls
        self.image_calls = 0
        self.images_embedded = 0
        self.outfit_calls: list[tuple[list, list]] = []  # (item categories, blank categories) per call

    # --- helpers ---------------------------------------------------------------------------------
    def _noise(self, key: bytes, scale: float) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return scale * np.random.default_rng(seed).standard_normal(self.embed_dim).astype(np.float32)

    def _colour_vector(self, rgb: np.ndarray) -> np.ndarray:  # rgb in [0, 1]
        return (rgb - 0.5) @ self._colour

    @staticmethod
    def _pixels(image: Any) -> torch.Tensor:
        if isinstance(image, str | os.PathLike):
            return read_image(Path(image))
        if isinstance(image, Image.Image):
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
            return image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).to(torch.uint8)
        raise ImageLoadError(repr(image)[:40], "not an image")

    def _image_vectors(self, image: Any) -> np.ndarray:  # [Q, D]
        pixels = self._pixels(image)
        rgb = pixels.float().mean(dim=(1, 2)).numpy() / 255.0
        base = self._colour_vector(rgb) + self._noise(pixels.numpy().tobytes(), 0.1)
        q = self.vectors_per_image
        if q == 1:
            vectors = base[None]
        else:
            vectors = np.stack(
                [base + self._noise(pixels.numpy().tobytes() + bytes([i]), 0.5) for i in range(q)]
            )
        return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)

    def _text_vector(self, text: str) -> np.ndarray:
        named = [np.array(rgb) / 255.0 for word, rgb in COLOURS.items() if word in text.lower()]
        rgb = np.mean(named, axis=0) if named else np.full(3, 0.5)
        v = self._colour_vector(rgb) + self._noise(text.encode(), 0.1)
        return v / np.linalg.norm(v)

    @staticmethod
    def _out(array: np.ndarray, to_numpy: bool) -> torch.Tensor | np.ndarray:
        array = np.ascontiguousarray(array, dtype=np.float32)
        return array if to_numpy else torch.from_numpy(array)

    def _normalise(self, v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    # --- the contract ----------------------------------------------------------------------------
    def encode_images(self, images, *, batch_size=64, progress=None, to_numpy=False):
        self.image_calls += 1
        if self.crash_after_calls is not None and self.image_calls > self.crash_after_calls:
            raise RuntimeError(f"injected crash on encode_images call {self.image_calls}")
        if self.delay_s:
            time.sleep(self.delay_s)
        vectors = np.stack([self._image_vectors(im) for im in images])  # [N, Q, D]
        self.images_embedded += len(images)
        return self._out(vectors[:, 0] if self.vectors_per_image == 1 else vectors, to_numpy)

    def encode_texts(self, texts, *, batch_size=256, progress=None, to_numpy=False):
        return self._out(np.stack([self._text_vector(t) for t in texts]), to_numpy)

    def image_query(self, images, *, batch_size=64, progress=None, to_numpy=False):
        return self._out(
            self._normalise(np.stack([self._image_vectors(im).mean(0) for im in images])), to_numpy
        )

    def encode_composed(
        self, reference_images, modification_texts, *, batch_size=64, progress=None, to_numpy=False
    ):
        if "composed" not in self.capabilities:
            raise UnsupportedCapability(f"{self.name} has no 'composed' capability")
        refs = np.stack([self._image_vectors(im).mean(0) for im in reference_images])
        texts = np.stack([self._text_vector(t) for t in modification_texts])
        return self._out(self._normalise(0.3 * refs + texts), to_numpy)

    def encode_outfits(
        self, outfits, item_categories, blank_categories, *, batch_size=64, progress=None, to_numpy=False
    ):
        if "outfit" not in self.capabilities:
            raise UnsupportedCapability(f"{self.name} has no 'outfit' capability")
        if not len(outfits) == len(item_categories) == len(blank_categories):
            raise ValueError("one category list and one blank category per outfit")
        self.outfit_calls.append((list(item_categories), list(blank_categories)))
        means = [np.stack([self._image_vectors(im).mean(0) for im in outfit]).mean(0) for outfit in outfits]
        return self._out(self._normalise(np.stack(means)), to_numpy)


def write_colour_catalogue(folder: Path, per_colour: int = 3, size: int = 24) -> Path:
    """Square images of the fake's colours (slightly different shades) and a CSV catalogue of them:
    ``<colour>-<i>`` ids, texts like ``red item 0``, outfit category ``i``. Returns the CSV path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,image,text,colour,outfit_category"]
    for colour, rgb in COLOURS.items():
        for i in range(per_colour):
            shade = tuple(min(255, c + 6 * i) for c in rgb)
            Image.new("RGB", (size, size), shade).save(folder / f"{colour}-{i}.png")
            lines.append(f"{colour}-{i},{colour}-{i}.png,{colour} item {i},{colour},{i}")
    path = folder / "catalogue.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_colour_index(folder: Path, embedder: FakeEmbedder | None = None, per_colour: int = 3) -> Path:
    """An index folder of :func:`write_colour_catalogue`'s items built with ``embedder``."""
    from fashion_vl.search.build import build_index
    from fashion_vl.search.catalogue import read_catalogue

    csv = write_colour_catalogue(folder / "catalogue", per_colour=per_colour)
    out = folder / "index"
    build_index(embedder or FakeEmbedder(), read_catalogue(csv), out, shard_size=8)
    return out
