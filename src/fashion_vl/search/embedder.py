"""What the search code needs of a model: the members of ``fashion_vl.inference.Embedder`` it calls.

The search package codes against this protocol, not the class, so an index can be built and served
with any object that has these members (the tests use a small deterministic one). Real models come
from ``fashion_vl.load(source)``, imported only when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

# what each search kind needs among the model's capabilities
SEARCH_CAPABILITIES = {"text": "text", "image": "image", "composed": "composed", "outfit": "outfit"}


@runtime_checkable
class EmbedderLike(Protocol):
    name: str
    embed_dim: int
    vectors_per_image: int
    capabilities: frozenset[str]

    def encode_images(self, images: Sequence[Any], **kw: Any) -> Any: ...  # [N, D] or [N, Q, D]

    def encode_texts(self, texts: Sequence[str], **kw: Any) -> Any: ...  # [N, D]

    def encode_composed(
        self, reference_images: Sequence[Any], modification_texts: Sequence[str], **kw: Any
    ) -> Any: ...

    def image_query(self, images: Sequence[Any], **kw: Any) -> Any: ...  # [N, D]

    # models with the "outfit" capability (CSA-Net): a query per partial outfit, from its items' images
    # and outfit categories and the category of the missing item
    def encode_outfits(
        self,
        outfits: Sequence[Sequence[Any]],
        item_categories: Sequence[Sequence[int]],
        blank_categories: Sequence[int],
        **kw: Any,
    ) -> Any: ...  # [N, D]


def check_embedder(embedder: Any) -> None:
    """A clear error when ``embedder`` lacks a member the search code uses."""
    missing = [
        m
        for m in ("name", "embed_dim", "vectors_per_image", "capabilities", "encode_images", "encode_texts")
        if not hasattr(embedder, m)
    ]
    if missing:
        raise TypeError(f"{type(embedder).__name__} is not an Embedder: it has no {', '.join(missing)}")


def search_kinds(embedder: EmbedderLike) -> list[str]:
    """The search kinds this model can serve, in a fixed order."""
    return [kind for kind, cap in SEARCH_CAPABILITIES.items() if cap in embedder.capabilities]


def load_embedder(source: str, device: str | None = None) -> EmbedderLike:
    """``fashion_vl.load(source, device=device)``: a checkpoint, a ``save_pretrained`` folder, a
    converted authors' checkpoint or an open_clip model. Imported here so the search package loads
    without the models."""
    import fashion_vl

    embedder = fashion_vl.load(source, device=device)
    check_embedder(embedder)
    return embedder
