"""Accumulating embeddings over an evaluation epoch, synchronised across ranks by torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.dist import world_size
from fashion_vl.metrics.retrieval import full_gallery_recall, sample100_recall

PROTOCOLS = ("full", "sample100")


def unique_rows(keys: Tensor) -> Tensor:
    """Indices of the first occurrence of each key (duplicates appear when a sampler pads shards)."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return torch.sort(order[first]).values


class CrossModalGalleryRecall(Metric):
    """Image<->text recall@K over everything seen in an epoch, under one or both protocols.

    ``update`` takes image embeddings with their product ids, a unique key per image and their
    sub-category, and text embeddings with their product ids and sub-category. ``compute`` gathers all
    ranks' rows (torchmetrics pads uneven shards), drops duplicate keys and returns
    ``{"<protocol>/<metric>": value}`` for each protocol:

    - ``full``: the whole gallery (:func:`~fashion_vl.metrics.retrieval.full_gallery_recall`);
    - ``sample100``: 1 positive + 100 same-sub-category negatives, 1000 queries, 5 seeded rounds
      (:func:`~fashion_vl.metrics.retrieval.sample100_recall`).

    ``ranking``: ``pessimistic`` (ours: ties count against the query; sample-100 ranks among its
    candidates only) or ``mmf`` (FashionViL's MMF metrics: ``torch.topk`` with ties in its order,
    sample-100 non-candidates scored -1). ``sample100_fill``: the negatives a small sub-category lacks
    come from other sub-categories ``random`` (ours) or in ``topk`` order among tied keys (the
    reference). ``per_rank``: under DDP, compute on each rank's own rows and average the figures
    across ranks, as MMF's evaluation loop does (each rank ranks against its own sub-gallery); ours
    (false) ranks against the whole gathered gallery. The ``fidelity=reference`` preset sets
    ``mmf``, ``topk`` and ``per_rank: true``.
    """

    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        protocols: Sequence[str] = ("full",),
        chunk_size: int = 1024,
        seed: int = 0,
        ranking: str = "pessimistic",
        sample100_fill: str = "random",
        per_rank: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**({"sync_on_compute": False} if per_rank else {}) | kwargs)
        if ranking not in ("pessimistic", "mmf"):
            raise ValueError(f"ranking must be 'pessimistic' or 'mmf', not {ranking!r}")
        if sample100_fill not in ("random", "topk"):
            raise ValueError(f"sample100_fill must be 'random' or 'topk', not {sample100_fill!r}")
        self.ranking = ranking
        self.sample100_fill = sample100_fill
        self.per_rank = per_rank
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown retrieval protocols {sorted(unknown)}; choose from {PROTOCOLS}")
        self.ks = tuple(ks)
        self.protocols = tuple(protocols)
        self.chunk_size = chunk_size
        self.seed = seed
        for name in (
            "image_emb",
            "image_ids",
            "image_keys",
            "image_groups",
            "text_emb",
            "text_ids",
            "text_groups",
        ):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_emb: Tensor,
        image_ids: Tensor,
        image_keys: Tensor,
        text_emb: Tensor,
        text_ids: Tensor,
        image_groups: Tensor | None = None,
        text_groups: Tensor | None = None,
    ) -> None:
        self.image_emb.append(image_emb.detach().float())
        self.image_ids.append(image_ids.detach())
        self.image_keys.append(image_keys.detach())
        self.image_groups.append(
            image_groups.detach() if image_groups is not None else torch.zeros_like(image_ids)
        )
        self.text_emb.append(text_emb.detach().float())
        self.text_ids.append(text_ids.detach())
        self.text_groups.append(
            text_groups.detach() if text_groups is not None else torch.zeros_like(text_ids)
        )

    def compute(self) -> dict[str, float]:
        keep_i = unique_rows(dim_zero_cat(self.image_keys))
        text_ids = dim_zero_cat(self.text_ids)
        keep_t = unique_rows(text_ids)
        image = (dim_zero_cat(self.image_emb)[keep_i], dim_zero_cat(self.image_ids)[keep_i])
        text = (dim_zero_cat(self.text_emb)[keep_t], text_ids[keep_t])
        out: dict[str, float] = {}
        if "full" in self.protocols:
            values = full_gallery_recall(*image, *text, ks=self.ks, chunk_size=self.chunk_size,
                                         ranking=self.ranking)  # fmt: skip
            out.update({f"full/{k}": v for k, v in values.items()})
        if "sample100" in self.protocols:
            values = sample100_recall(
                image[0], image[1], dim_zero_cat(self.image_groups)[keep_i],
                text[0], text[1], dim_zero_cat(self.text_groups)[keep_t],
                ks=self.ks, seed=self.seed, fill=self.sample100_fill, ranking=self.ranking,
            )  # fmt: skip
            out.update({f"sample100/{k}": v for k, v in values.items()})
        if self.per_rank and world_size() > 1:  # MMF: every rank's own figures, averaged
            values = torch.tensor(list(out.values()), dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(values)
            out = dict(zip(out, (values / world_size()).tolist(), strict=True))
        return out
