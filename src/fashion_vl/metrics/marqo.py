"""Marqo's retrieval protocol (marqo-ai/marqo-FashionCLIP@fcd6464, ``eval.py``, ``utils/metrics.py``):
queries ranked against a gallery of products, every gallery item that shares the query's label relevant.

Marqo's three query types, over the datasets we read (see ``docs/compare.md``):

- ``text``: text-to-image: a product's text against every image; its images are relevant;
- ``category``: category-to-product: the category's name against every product document (Marqo's
  document is ``0.9 x image + 0.1 x text`` embedding); every document of the category is relevant;
- ``subcategory``: sub-category-to-product, the same with the sub-category's name.

Metrics, as BEIR computes them for Marqo (per query, then averaged over queries, in percent here where
Marqo reports fractions): ``recall@K`` = relevant items in the top K / relevant items; ``precision@K`` =
relevant items in the top K / K; ``mrr`` = 1 / rank of the first relevant item (Marqo cuts the list at its
retrieval depth; here the whole gallery is ranked). Ties are counted against the query, as everywhere in
:mod:`fashion_vl.metrics.retrieval`: an irrelevant item scoring equal to a relevant one ranks first.
A query with no relevant item in the gallery is left out (a category without products).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.metrics.gallery import unique_rows
from fashion_vl.metrics.retrieval import similarity

QUERY_TYPES = ("text", "category", "subcategory")


def relevance_ranking(
    queries: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 10),
    chunk_size: int = 256,
) -> dict[str, Tensor]:
    """Per-query ``hits@K`` (relevant items in the top K), ``relevant`` (their number) and ``first`` (the
    1-based rank of the best relevant item), under pessimistic ties; queries without a relevant item
    are dropped. ``queries [Q, D]``, ``gallery [G, D]`` (either may be multi-vector, see
    :func:`~fashion_vl.metrics.retrieval.similarity`)."""
    hits: dict[int, list[Tensor]] = {k: [] for k in ks}
    relevant_counts, firsts = [], []
    gallery_labels = gallery_labels.to(queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        scores = similarity(queries[start : start + chunk_size], gallery).float()  # [c, G]
        if torch.isnan(scores).any():
            raise ValueError("NaN similarity scores: the embeddings contain NaN")
        relevant = query_labels[start : start + chunk_size, None].to(scores.device) == gallery_labels[None]
        keep = relevant.any(dim=1)
        scores, relevant = scores[keep], relevant[keep]
        # irrelevant items first, then (stably) by score: among equal scores the irrelevant ones rank higher
        by_relevance = torch.sort(relevant.to(torch.int8), dim=1, stable=True).indices
        by_score = torch.sort(scores.gather(1, by_relevance), dim=1, descending=True, stable=True).indices
        ranked = relevant.gather(1, by_relevance.gather(1, by_score))  # [c, G] relevance in rank order
        for k in ks:
            hits[k].append(ranked[:, :k].sum(dim=1))
        relevant_counts.append(relevant.sum(dim=1))
        firsts.append(ranked.float().argmax(dim=1) + 1)  # the first relevant position
    out = {f"hits@{k}": torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in hits.items()}
    out["relevant"] = torch.cat(relevant_counts) if relevant_counts else torch.zeros(0, dtype=torch.long)
    out["first"] = torch.cat(firsts) if firsts else torch.zeros(0, dtype=torch.long)
    return out


def relevance_metrics(
    queries: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 10),
    chunk_size: int = 256,
) -> dict[str, float]:
    """``recall@K``, ``precision@K``, ``mrr`` (percent, means over the queries with a relevant item) and
    ``queries`` (how many those are)."""
    r = relevance_ranking(queries, gallery, query_labels, gallery_labels, ks, chunk_size)
    n = r["relevant"].numel()
    if n == 0:
        raise ValueError("no query has a relevant item in the gallery")
    out: dict[str, float] = {}
    for k in ks:
        hits = r[f"hits@{k}"].double()
        out[f"recall@{k}"] = float(100.0 * (hits / r["relevant"].double()).mean())
        out[f"precision@{k}"] = float(100.0 * (hits / k).mean())
    out["mrr"] = float(100.0 * (1.0 / r["first"].double()).mean())
    out["queries"] = float(n)
    return out


class RelevanceRetrieval(Metric):
    """Queries against a gallery where an item is relevant when its label equals the query's (Marqo's
    query types, see the module docstring); rows are deduplicated by key (samplers pad uneven shards).

    ``update_queries(emb, labels, keys)``, ``update_gallery(emb, labels, keys)``; ``compute()`` returns
    :func:`relevance_metrics`.
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 10), chunk_size: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        for name in ("query_emb", "query_label", "query_key", "gallery_emb", "gallery_label", "gallery_key"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, part: str, emb: Tensor, labels: Tensor, keys: Tensor) -> None:
        """One entry point (torchmetrics tracks updates through ``update``); prefer the two wrappers."""
        if part not in ("query", "gallery"):
            raise ValueError(f"part must be 'query' or 'gallery', not {part!r}")
        getattr(self, f"{part}_emb").append(emb.detach().float())
        getattr(self, f"{part}_label").append(labels.detach())
        getattr(self, f"{part}_key").append(keys.detach())

    def update_queries(self, emb: Tensor, labels: Tensor, keys: Tensor) -> None:
        self.update("query", emb, labels, keys)

    def update_gallery(self, emb: Tensor, labels: Tensor, keys: Tensor) -> None:
        self.update("gallery", emb, labels, keys)

    def compute(self) -> dict[str, float]:
        seen = [self.query_emb, self.gallery_emb]
        if not all(s.numel() if isinstance(s, Tensor) else s for s in seen):
            raise ValueError("relevance retrieval: no queries or no gallery items were seen")
        q = unique_rows(dim_zero_cat(self.query_key))
        g = unique_rows(dim_zero_cat(self.gallery_key))
        return relevance_metrics(
            dim_zero_cat(self.query_emb)[q],
            dim_zero_cat(self.gallery_emb)[g],
            dim_zero_cat(self.query_label)[q],
            dim_zero_cat(self.gallery_label)[g],
            self.ks,
            self.chunk_size,
        )
