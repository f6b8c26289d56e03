"""Recall@K for retrieval, computed as best-positive ranks in memory-bounded chunks.

Tie rule (pessimistic): a gallery item that is not a positive and scores *equal to or above* the
query's best positive is ranked before it. So a degenerate model whose embeddings are all equal gets
R@K = 0, never 100, and the result does not depend on sort stability or device. Published numbers
were produced with ``torch.topk`` (arbitrary order among ties); with continuous scores the two agree.

A query may have several positives (a product with several images): it counts as a hit at K when
any positive ranks within the top K. Percentages (0-100) throughout.

Embeddings are ``[N, D]`` (dot-product scores) or, on one side, multi-vector ``[N, Q, D]``: an item
with Q vectors scores its best vector (BLIP-2's image queries, :func:`similarity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def similarity(a: Tensor, b: Tensor) -> Tensor:
    """Scores ``[A, B]`` between the rows of ``a`` and ``b``: dot products, or for a multi-vector side
    (``[N, Q, D]``) the maximum over its Q vectors."""
    if a.dim() == 2 and b.dim() == 2:
        return a @ b.T
    if a.dim() == 3 and b.dim() == 2:
        return torch.einsum("aqd,bd->abq", a, b).amax(dim=-1)
    if a.dim() == 2 and b.dim() == 3:
        return torch.einsum("ad,bqd->abq", a, b).amax(dim=-1)
    raise ValueError(
        f"cannot score {tuple(a.shape)} against {tuple(b.shape)}: one side at most is multi-vector"
    )


def _vectors_per_item(x: Tensor) -> int:
    return x.shape[1] if x.dim() == 3 else 1


def candidate_scores(queries: Tensor, gallery: Tensor, candidates: Tensor, chunk_size: int = 64) -> Tensor:
    """Scores ``[n, c]`` of each query row against its own candidates: the ``gallery`` rows indexed by
    ``candidates [n, c]``, gathered ``chunk_size`` queries at a time to bound memory."""
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size].float()
        g = gallery[candidates[start : start + chunk_size]].float()
        if q.dim() == 2 and g.dim() == 3:
            out.append(torch.einsum("nd,ncd->nc", q, g))
        elif q.dim() == 3 and g.dim() == 3:
            out.append(torch.einsum("nqd,ncd->ncq", q, g).amax(dim=-1))
        elif q.dim() == 2 and g.dim() == 4:
            out.append(torch.einsum("nd,ncqd->ncq", q, g).amax(dim=-1))
        else:
            raise ValueError(f"cannot score {tuple(q.shape)} queries against {tuple(g.shape)} candidates")
    return torch.cat(out) if out else queries.new_zeros((0, candidates.shape[1]))


def best_positive_ranks(
    queries: Tensor,
    gallery: Tensor,
    query_ids: Tensor,
    gallery_ids: Tensor,
    *,
    query_groups: Tensor | None = None,
    gallery_groups: Tensor | None = None,
    exclude: Tensor | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """1-based rank of each query's best-scoring positive under dot-product similarity.

    Args:
        queries: ``[Q, D]`` query embeddings; gallery: ``[G, D]`` (either may be multi-vector,
            ``[N, V, D]``: see :func:`similarity`).
        query_ids, gallery_ids: ``[Q]``, ``[G]``; a gallery item is a positive when the ids are equal.
        query_groups, gallery_groups: optional ``[Q]``, ``[G]``; gallery items of another group than
            the query's are left out of its ranking (Polyvore OCIR ranks within the blank's category).
        exclude: optional ``[Q]`` gallery index left out of each query's ranking, -1 for none
            (composed retrieval on Fashion200k never ranks the query's own image).
        chunk_size: queries scored at once, bounding memory to ``chunk_size x G`` scores (divided by the
            vectors per item for multi-vector embeddings).

    Returns:
        ``[Q]`` long ranks; ``G + 1`` for a query without any positive in its gallery (always a miss).
    """
    if queries.shape[-1] != gallery.shape[-1]:
        raise ValueError(f"embedding sizes differ: queries {queries.shape[-1]}, gallery {gallery.shape[-1]}")
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("give both query_groups and gallery_groups, or neither")
    gallery_ids = gallery_ids.to(queries.device)
    miss = gallery.shape[0] + 1
    ranks = []
    chunk_size = max(1, chunk_size // max(_vectors_per_item(queries), _vectors_per_item(gallery)))
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        scores = similarity(q, gallery).float()  # [c, G]
        if torch.isnan(scores).any():
            raise ValueError("NaN similarity scores: the embeddings contain NaN")
        positive = query_ids[start : start + chunk_size, None].to(q.device) == gallery_ids[None]
        eligible = torch.ones_like(positive)
        if query_groups is not None:
            eligible = query_groups[start : start + chunk_size, None].to(q.device) == gallery_groups[None].to(
                q.device
            )
        if exclude is not None:
            rows = exclude[start : start + chunk_size].to(q.device)
            hit = rows >= 0
            eligible[hit.nonzero().squeeze(1), rows[hit]] = False
        positive &= eligible
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        above = ((scores >= best) & eligible & ~positive).sum(dim=1)
        ranks.append(torch.where(positive.any(dim=1), above + 1, torch.full_like(above, miss)))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long, device=queries.device)


def topk_ranks(
    queries: Tensor, gallery: Tensor, query_ids: Tensor, gallery_ids: Tensor, k: int, chunk_size: int = 1024
) -> Tensor:
    """FashionViL's (MMF's ``RecallAtK_general``) ranking: the 1-based position of the first positive
    among ``torch.topk(scores, k)`` (ties in topk's order), ``k + 1`` when none is there."""
    out = []
    gallery_ids = gallery_ids.to(queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        scores = similarity(queries[start : start + chunk_size], gallery).float()
        out.append(
            _first_hit(scores, query_ids[start : start + chunk_size].to(queries.device), gallery_ids, k)
        )
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=queries.device)


def _first_hit(scores: Tensor, query_ids: Tensor, gallery_ids: Tensor, k: int) -> Tensor:
    k = min(k, scores.shape[1])
    matches = gallery_ids[scores.topk(k, dim=1).indices] == query_ids[:, None]
    first = matches.float().argmax(dim=1) + 1
    return torch.where(matches.any(dim=1), first, torch.full_like(first, k + 1))


def recall_from_ranks(ranks: Tensor, ks: Sequence[int], weights: Tensor | None = None) -> dict[int, float]:
    """R@K in percent from best-positive ranks; ``weights`` (``[Q]``, summing to 1) for class balance."""
    if ranks.numel() == 0:
        raise ValueError("no queries to evaluate")
    if weights is None:
        weights = torch.full(ranks.shape, 1.0 / ranks.numel(), device=ranks.device)
    return {k: float(100.0 * (weights * (ranks <= k).to(weights.dtype)).sum()) for k in ks}


def full_gallery_recall(
    image_emb: Tensor,
    image_ids: Tensor,
    text_emb: Tensor,
    text_ids: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    ranking: str = "pessimistic",
) -> dict[str, float]:
    """Cross-modal recall over the whole gallery, both directions (the reference's ``r@k_general``).

    Every image queries all texts and every text queries all images; positives share the product id,
    so a product's several images are all positives for its text. Keys ``i2t_r@K``, ``t2i_r@K``,
    ``rsum`` (sum of the six recalls) and ``mean`` (their mean). ``ranking``: ``pessimistic``
    (:func:`best_positive_ranks`) or ``mmf`` (:func:`topk_ranks`: ties in ``torch.topk``'s order).
    """
    out: dict[str, float] = {}
    if ranking == "mmf":
        i2t = topk_ranks(image_emb, text_emb, image_ids, text_ids, max(ks), chunk_size)
        t2i = topk_ranks(text_emb, image_emb, text_ids, image_ids, max(ks), chunk_size)
    else:
        i2t = best_positive_ranks(image_emb, text_emb, image_ids, text_ids, chunk_size=chunk_size)
        t2i = best_positive_ranks(text_emb, image_emb, text_ids, image_ids, chunk_size=chunk_size)
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k, value in recall_from_ranks(ranks, ks).items():
            out[f"{direction}_r@{k}"] = value
    values = [v for key, v in out.items() if "_r@" in key]
    out["rsum"] = float(sum(values))
    out["mean"] = out["rsum"] / len(values)
    return out


def sample100_ranks(
    queries: Tensor,
    gallery: Tensor,
    query_ids: Tensor,
    gallery_ids: Tensor,
    query_groups: Tensor,
    gallery_groups: Tensor,
    *,
    num_queries: int = 1000,
    num_negatives: int = 100,
    generator: torch.Generator,
    fill: str = "random",
    ranking: str = "pessimistic",
    top: int = 10,
) -> Tensor:
    """One round of the sample-100 protocol (KaleidoBERT's, the reference's ``r@k_kaleido``).

    ``num_queries`` random queries; each is ranked against 1 positive drawn among the gallery items
    with its id and ``num_negatives`` drawn among items of the same group (sub-category) and another
    id. Where a group has too few, the remaining negatives come from other groups at random (the
    reference sets other groups' keys to -1, so its ``topk`` takes them in its fixed order among ties:
    the same items for every query of the group, every round). Ranks are taken among exactly these
    candidates (pessimistic ties); the reference instead sets non-candidates to -1, which can let an excluded item
    outrank the candidates when similarities fall below -1.

    A gallery too small for ``num_negatives`` negatives per query gives each query as many as it has.

    FashionViL's computation (MMF's ``RecallAtK_kaleido._get_rk``; the ``fidelity=reference`` preset):
    ``fill="topk"`` takes the missing negatives from other groups in ``torch.topk``'s order among their
    tied -1 keys; ``ranking="mmf"`` ranks over the whole gallery with non-candidates scored -1 and
    reads the first positive among ``torch.topk(top)`` (ranks past ``top`` are ``top + 1``).

    Returns ``[num_queries]`` 1-based ranks of the positive among its ``1 + num_negatives`` candidates.
    """
    device = queries.device
    q = torch.randperm(queries.shape[0], generator=generator)[:num_queries].to(device)
    q_ids, q_groups = query_ids[q].to(device), query_groups[q].to(device)
    g_ids, g_groups = gallery_ids.to(device), gallery_groups.to(device)
    same_id = q_ids[:, None] == g_ids[None]
    if not same_id.any(dim=1).all():
        raise ValueError("sample-100: a query has no positive in the gallery")
    keys = torch.rand(same_id.shape, generator=generator).to(device)
    positive = keys.masked_fill(~same_id, -1.0).argmax(dim=1)  # a random positive
    # negatives: same group first (keys in [1, 2)), then other groups ([0, 1)), never the same id
    keys = torch.rand(same_id.shape, generator=generator).to(device)
    same_group = q_groups[:, None] == g_groups[None]
    if fill == "topk":  # the reference: other groups at -1, the query's own product at -100
        keys = keys.masked_fill(~same_group, -1.0).masked_fill(same_id, -100.0)
    else:
        keys = (keys + same_group.float()).masked_fill(same_id, -1.0)
    available = int((~same_id).sum(dim=1).min())
    negatives = keys.topk(min(num_negatives, available), dim=1).indices
    candidates = torch.cat([positive[:, None], negatives], dim=1)  # [q, 1 + n]
    if ranking == "mmf":
        ranks = []
        for start in range(0, len(q), 256):
            rows = slice(start, start + 256)
            scores = similarity(queries[q[rows]], gallery).float()
            chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, candidates[rows], True)
            ranks.append(_first_hit(scores.masked_fill(~chosen, -1.0), q_ids[rows], g_ids, top))
        return torch.cat(ranks)
    scores = candidate_scores(queries[q], gallery, candidates)
    if torch.isnan(scores).any():
        raise ValueError("NaN similarity scores: the embeddings contain NaN")
    return (scores[:, 1:] >= scores[:, :1]).sum(dim=1) + 1


def sample100_recall(
    image_emb: Tensor,
    image_ids: Tensor,
    image_groups: Tensor,
    text_emb: Tensor,
    text_ids: Tensor,
    text_groups: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    *,
    num_queries: int = 1000,
    num_negatives: int = 100,
    repeats: int = 5,
    seed: int = 0,
    fill: str = "random",
    ranking: str = "pessimistic",
) -> dict[str, float]:
    """Cross-modal sample-100 recall in both directions, averaged over ``repeats`` seeded rounds.

    Keys as :func:`full_gallery_recall`: ``i2t_r@K``, ``t2i_r@K``, ``rsum`` (the papers' SumR), ``mean``.
    ``fill``, ``ranking``: see :func:`sample100_ranks`.
    """
    g = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    for _ in range(repeats):
        for direction, args in (
            ("i2t", (image_emb, text_emb, image_ids, text_ids, image_groups, text_groups)),
            ("t2i", (text_emb, image_emb, text_ids, image_ids, text_groups, image_groups)),
        ):
            ranks = sample100_ranks(*args, num_queries=num_queries, num_negatives=num_negatives, generator=g,
                                    fill=fill, ranking=ranking, top=max(ks))  # fmt: skip
            for k, value in recall_from_ranks(ranks, ks).items():
                totals[f"{direction}_r@{k}"] = totals.get(f"{direction}_r@{k}", 0.0) + value / repeats
    totals["rsum"] = float(sum(totals.values()))
    totals["mean"] = totals["rsum"] / (2 * len(ks))
    return totals
