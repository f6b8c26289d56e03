"""Opening an index folder and answering queries: text, image, image + modification text (composed),
and outfit completion, each a query vector scored against the items by the index."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashion_vl.search.build import FORMAT_VERSION
from fashion_vl.search.catalogue import OUTFIT_CATEGORY
from fashion_vl.search.embedder import EmbedderLike, search_kinds
from fashion_vl.search.item_table import ItemTable
from fashion_vl.search.layout import IndexLayout
from fashion_vl.search.vector_index import VectorIndex, read_faiss

log = logging.getLogger(__name__)


class SearchError(ValueError):
    """A query the index or the model cannot answer (unsupported kind, unknown item id, empty text)."""


@dataclass(frozen=True)
class Hit:
    rank: int
    row: int
    id: str
    score: float
    text: str
    image: str
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CatalogueIndex:
    """An index folder opened for search: its info, vectors (memory-mapped), FAISS index and items."""

    def __init__(self, root: Path, info: dict[str, Any], vectors: VectorIndex, items: ItemTable) -> None:
        self.root, self.info, self.vectors, self.items = root, info, vectors, items

    @classmethod
    def open(
        cls, root: str | Path, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> CatalogueIndex:
        layout = IndexLayout(Path(root).expanduser())
        if not layout.info.is_file():
            hint = (
                "an unfinished build: run the same `fvl-index build` again to resume it"
                if layout.manifest.is_file()
                else "build one with `fvl-index build`"
            )
            raise FileNotFoundError(f"{layout.root} is not an index folder (no index.json): {hint}")
        info = json.loads(layout.info.read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{layout.info}: index format {info.get('format_version')}, this version reads {FORMAT_VERSION}; rebuild it"
            )
        params = {k: v for k, v in info["index"].items() if k != "spec"}
        vectors = VectorIndex(read_faiss(layout.faiss), np.load(layout.vectors, mmap_mode="r"), params)
        vectors.set_search_params(nprobe=nprobe, ef_search=ef_search)
        items = ItemTable(layout.items)
        if len(items) != vectors.num_items:
            raise ValueError(
                f"{layout.items} has {len(items)} items but {layout.vectors} {vectors.num_items}; rebuild"
            )
        return cls(layout.root, info, vectors, items)

    def __len__(self) -> int:
        return self.vectors.num_items

    @property
    def model_source(self) -> str:
        return self.info["model"]["source"]

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The top ``k`` items for one query vector ``[D]``."""
        scores, rows = self.vectors.search(np.asarray(query, dtype=np.float32)[None], k)
        return self._hits([(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0])

    def search_rows(self, query: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        """The top ``k`` of the items at ``rows`` for one query vector, scored exactly (``max_q``) against
        the stored vectors; ties go to the lower row."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return []
        scores = (self.vectors.vectors[rows] @ np.asarray(query, dtype=np.float32)).max(axis=1)
        best = np.argsort(-scores, kind="stable")[:k]
        return self._hits([(float(scores[i]), int(rows[i])) for i in best])

    @cached_property
    def outfit_categories(self) -> dict[int, np.ndarray]:
        """Outfit category id -> the rows of the items of that category (``meta.outfit_category``),
        read from the item table once."""
        by_category: dict[int, list[int]] = {}
        for row, value in self.items.meta_values(OUTFIT_CATEGORY):
            if isinstance(value, int) and not isinstance(value, bool):
                by_category.setdefault(value, []).append(row)
        return {c: np.asarray(rows, dtype=np.int64) for c, rows in sorted(by_category.items())}

    def _hits(self, found: list[tuple[float, int]]) -> list[Hit]:
        items = self.items.by_rows([r for _, r in found])
        return [
            Hit(rank, item["row"], item["id"], score, item["text"], item["image"], item["meta"])
            for rank, ((score, _), item) in enumerate(zip(found, items), start=1)
        ]


class Searcher:
    """Queries against ``index`` with ``embedder`` (the model the index was built with).

    Model calls are serialised by a lock, so one searcher can serve a threaded web server.
    """

    def __init__(self, index: CatalogueIndex, embedder: EmbedderLike) -> None:
        model = index.info["model"]
        if (int(embedder.embed_dim), int(embedder.vectors_per_image)) != (
            model["embed_dim"],
            model["vectors_per_image"],
        ):
            raise ValueError(
                f"the model {embedder.name!r} makes {embedder.vectors_per_image} x {embedder.embed_dim}-d vectors "
                f"but {index.root} was built with {model['vectors_per_image']} x {model['embed_dim']}-d "
                f"({model['name']!r})"
            )
        if embedder.name != model["name"]:
            log.warning("%s was built with %r; querying it with %r", index.root, model["name"], embedder.name)
        self.index, self.embedder = index, embedder
        self._lock = threading.Lock()

    @property
    def kinds(self) -> list[str]:
        return search_kinds(self.embedder)

    def _require(self, kind: str) -> None:
        if kind not in self.kinds:
            raise SearchError(
                f"the model {self.embedder.name!r} cannot do {kind} search (it can do: {', '.join(self.kinds) or 'none'})"
            )

    def _query(self, fn: str, *args: Any) -> np.ndarray:
        with self._lock, torch.inference_mode():
            out = getattr(self.embedder, fn)(*args, progress=False)
        array = (
            out.detach().float().cpu().numpy()
            if isinstance(out, torch.Tensor)
            else np.asarray(out, np.float32)
        )
        return array.reshape(-1, array.shape[-1])[0]

    def by_text(self, text: str, k: int = 10) -> list[Hit]:
        self._require("text")
        if not text.strip():
            raise SearchError("the query text is empty")
        return self.index.search(self._query("encode_texts", [text]), k)

    def by_image(self, image: Any, k: int = 10) -> list[Hit]:
        """``image``: a PIL image, a path or a ``uint8 [3, H, W]`` tensor."""
        self._require("image")
        return self.index.search(self._query("image_query", [image]), k)

    def by_composed(self, image: Any, text: str, k: int = 10) -> list[Hit]:
        """The reference ``image`` changed as ``text`` says."""
        self._require("composed")
        if not text.strip():
            raise SearchError("the modification text is empty")
        return self.index.search(self._query("encode_composed", [image], [text]), k)

    def by_outfit(self, item_ids: Sequence[str], category: int, k: int = 10) -> list[Hit]:
        """Items of ``category`` that complete the outfit made of the catalogue items ``item_ids``.

        Outfit completion is category-conditioned (CSA-Net embeds each item of the partial outfit for
        the category of the missing one, and ranks candidates of that category): every item's
        ``meta.outfit_category`` (its category id, Polyvore's 0..152 for a Polyvore-trained model) is
        given to the model's ``encode_outfits(outfits, item_categories, blank_categories)``, and the
        query is scored exactly against the items of ``category``, the outfit's own left out."""
        self._require("outfit")
        if not hasattr(self.embedder, "encode_outfits"):
            raise SearchError(f"the model {self.embedder.name!r} lists 'outfit' but has no encode_outfits")
        if not item_ids:
            raise SearchError("an outfit query needs at least one catalogue item id")
        rows = []
        for item_id in item_ids:
            row = self.index.items.row_of(str(item_id))
            if row is None:
                raise SearchError(f"unknown item id {item_id!r} (not in {self.index.root})")
            rows.append(row)
        items = self.index.items.by_rows(rows)
        categories = []
        for item in items:
            value = item["meta"].get(OUTFIT_CATEGORY)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SearchError(
                    f"item {item['id']!r} has no {OUTFIT_CATEGORY} (the catalogue must give every item's "
                    "category for outfit completion)"
                )
            categories.append(value)
        candidates = self.index.outfit_categories.get(int(category))
        if candidates is None:
            known = ", ".join(map(str, self.index.outfit_categories)) or "none"
            raise SearchError(
                f"no catalogue item has {OUTFIT_CATEGORY} {category} (the catalogue has: {known})"
            )
        query = self._query(
            "encode_outfits", [[item["image"] for item in items]], [categories], [int(category)]
        )
        return self.index.search_rows(query, np.setdiff1d(candidates, rows), k)
