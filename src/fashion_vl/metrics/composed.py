"""Composed retrieval (reference image + text -> target image): FashionIQ, Fashion200k, Polyvore OCIR.

Queries carry the key their positives share (a FashionIQ ``target_id``, a Fashion200k target title,
an OCIR blank id), a group (FashionIQ category, OCIR blank category) within which they are ranked,
and optionally a gallery key never ranked for them (the query's own image). Gallery rows with the same
dedupe key are counted once (the first seen), as the reference builds its gallery from unique ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.dist import world_size
from fashion_vl.metrics.gallery import unique_rows
from fashion_vl.metrics.retrieval import best_positive_ranks, recall_from_ranks, similarity


def _seen(state: list[Tensor] | Tensor) -> bool:
    """Whether a ``cat`` state holds rows: a list of updates, or one tensor once synced across ranks."""
    return bool(state.numel()) if isinstance(state, Tensor) else bool(state)


class ComposedGalleryRecall(Metric):
    """Recall@K of composed queries against a deduplicated gallery, per group and averaged.

    Args:
        ks: the K of recall@K (FashionIQ 10, 50; Fashion200k 1, 10, 50; OCIR 10, 30, 50).
        group_names: group id -> name used in the keys (FashionIQ ``{0: "dress", ...}``); when given,
            recall is reported per group (``dress_r@10``) and as the mean over groups (``mean_r@10``),
            each group ranked against its own gallery. Without names, one pooled figure per K (``r@10``).
        class_balanced: weight each query by 1 / (queries of its group), then divide by the number of
            groups (Polyvore OCIR); ranking is still restricted to the query's group.
        drop_last_batch: 0 scores every query (ours); ``m > 0`` scores only the first ``m * (n // m)``
            queries of each group in update order, as a loader with ``batch_size=m, drop_last=True`` per
            group does (UniFashion's FashionIQ evaluation: 4; the ``fidelity=reference`` preset), and
            ``compute`` reports how many were left out as ``dropped_queries``.
        ranking: ``pessimistic`` (ours): only the query's group is ranked and a tie counts against the
            query; ``mmf`` (FashionViL's ``RecallAtK_comp`` / ``RecallAtK_ocir``): other groups' items
            stay in the gallery scored -1 (they outrank the positive where in-group scores fall below -1)
            and each K is read from its own ``torch.topk`` (ties in its order). Exclusions stay excluded.
        per_rank: under DDP, compute on each rank's own rows and average the figures across ranks, as
            MMF's evaluation loop does (FashionViL's ``fidelity=reference``); ours ranks every query
            against the whole gathered gallery.

    ``compute`` also returns ``avg``, the mean of every reported recall (the reference's ``avg``).
    """

    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (10, 50),
        group_names: Mapping[int, str] | None = None,
        class_balanced: bool = False,
        chunk_size: int = 1024,
        drop_last_batch: int = 0,
        ranking: str = "pessimistic",
        per_rank: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**({"sync_on_compute": False} if per_rank else {}) | kwargs)
        self.per_rank = per_rank
        if ranking not in ("pessimistic", "mmf"):
            raise ValueError(f"ranking must be 'pessimistic' or 'mmf', not {ranking!r}")
        self.drop_last_batch = int(drop_last_batch)
        self.ranking = ranking
        self.ks = tuple(ks)
        self.group_names = {int(k): v for k, v in group_names.items()} if group_names else None
        self.class_balanced = class_balanced
        self.chunk_size = chunk_size
        for name in ("query_emb", "query_positive", "query_group", "query_exclude",
                     "gallery_emb", "gallery_key", "gallery_positive", "gallery_group"):  # fmt: skip
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, part: str, emb: Tensor, *fields: Tensor | None) -> None:
        """``update("query", emb, positive, group, exclude_key=None)`` or
        ``update("gallery", emb, key, positive, group)``; prefer the two named wrappers below.

        (One entry point, because torchmetrics tracks updates, and invalidates its cached result,
        through ``update`` only.)
        """
        if part == "query":
            positive, group, exclude_key = (*fields, None)[:3]
            self.query_emb.append(emb.detach().float())
            self.query_positive.append(positive.detach())
            self.query_group.append(group.detach())
            self.query_exclude.append(
                exclude_key.detach() if exclude_key is not None else torch.full_like(positive, -1)
            )
        elif part == "gallery":
            key, positive, group = fields
            self.gallery_emb.append(emb.detach().float())
            self.gallery_key.append(key.detach())
            self.gallery_positive.append(positive.detach())
            self.gallery_group.append(group.detach())
        else:
            raise ValueError(f"part must be 'query' or 'gallery', not {part!r}")

    def update_queries(
        self, emb: Tensor, positive: Tensor, group: Tensor, exclude_key: Tensor | None = None
    ) -> None:
        self.update("query", emb, positive, group, exclude_key)

    def update_gallery(self, emb: Tensor, key: Tensor, positive: Tensor, group: Tensor) -> None:
        self.update("gallery", emb, key, positive, group)

    def _prepared(self) -> dict[str, Tensor]:
        """The epoch's queries and deduplicated gallery; ``keep`` maps gallery rows to update order."""
        if not (_seen(self.query_emb) and _seen(self.gallery_emb)):
            raise ValueError("composed retrieval: no queries or no gallery items were seen")
        keep = unique_rows(dim_zero_cat(self.gallery_key))
        g_key = dim_zero_cat(self.gallery_key)[keep]
        q_exclude_key = dim_zero_cat(self.query_exclude)
        # gallery index of each query's excluded key (-1: none)
        order = torch.argsort(g_key)
        found = torch.searchsorted(g_key[order], q_exclude_key.clamp_min(0))
        found = found.clamp_max(len(order) - 1)
        exclude = torch.where((q_exclude_key >= 0) & (g_key[order][found] == q_exclude_key), order[found], -1)
        q_group = dim_zero_cat(self.query_group)
        kept = torch.ones_like(q_group, dtype=torch.bool)
        if self.drop_last_batch > 0:  # per group, the queries past the last full batch
            for group in q_group.unique():
                rows = (q_group == group).nonzero().squeeze(1)
                kept[rows[self.drop_last_batch * (len(rows) // self.drop_last_batch) :]] = False
        return {
            "keep": keep,
            "g_emb": dim_zero_cat(self.gallery_emb)[keep],
            "g_pos": dim_zero_cat(self.gallery_positive)[keep],
            "g_group": dim_zero_cat(self.gallery_group)[keep],
            "q_emb": dim_zero_cat(self.query_emb)[kept],
            "q_pos": dim_zero_cat(self.query_positive)[kept],
            "q_group": q_group[kept],
            "exclude": exclude[kept],
            "dropped": int((~kept).sum()),
            "q_index": kept.nonzero().squeeze(1),  # update order of each kept query
        }

    def compute(self) -> dict[str, float]:
        p = self._prepared()
        if self.ranking == "mmf":
            return self._dropped(self._recall(self._mmf_ranks(p), p["q_group"]), p)
        ranks = best_positive_ranks(
            p["q_emb"],
            p["g_emb"],
            p["q_pos"],
            p["g_pos"],
            query_groups=p["q_group"],
            gallery_groups=p["g_group"],
            exclude=p["exclude"],
            chunk_size=self.chunk_size,
        )
        return self._dropped(self._recall(ranks, p["q_group"]), p)

    def _dropped(self, out: dict[str, float], p: dict) -> dict[str, float]:
        if self.drop_last_batch > 0:
            out["dropped_queries"] = float(p["dropped"])
        return average_over_ranks(out, self.device) if self.per_rank else out

    def _mmf_ranks(self, p: dict[str, Tensor]) -> dict[int, Tensor]:
        """Per K, a rank that is 1 where a positive is among ``torch.topk(k)`` of the query's scores with
        other groups' items at -1 (FashionViL's ``RecallAtK_ocir._get_rk``), else past every K."""
        miss = p["g_emb"].shape[0] + 1
        out: dict[int, list[Tensor]] = {k: [] for k in self.ks}
        for start in range(0, p["q_emb"].shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            scores = similarity(p["q_emb"][rows], p["g_emb"]).float()
            scores = scores.masked_fill(p["q_group"][rows, None] != p["g_group"][None], -1.0)
            hit = p["exclude"][rows] >= 0
            scores[hit.nonzero().squeeze(1), p["exclude"][rows][hit]] = float("-inf")
            positive = p["q_pos"][rows, None] == p["g_pos"][None]
            for k in self.ks:
                top = scores.topk(min(k, scores.shape[1]), dim=1).indices
                found = positive.gather(1, top).any(dim=1)
                out[k].append(torch.where(found, 1, miss))
        return {k: torch.cat(v) for k, v in out.items()}

    def compute_reranked(
        self, rescore: Callable[[Tensor, Tensor], Tensor], top_k: int = 100, chunk_size: int = 256
    ) -> dict[str, float]:
        """The same figures after re-scoring each query's top ``top_k`` eligible gallery items.

        Ranking, gallery, groups and exclusions are :meth:`compute`'s; re-ranking only reorders within
        the top K (items below keep their places, so a positive outside the top K keeps its rank, at least
        K + 1). Ties among the new scores are counted against the query, as in :meth:`compute`.

        Next to the recalls, ``gained_r@K`` and ``lost_r@K`` count the queries whose positive enters or
        leaves the top K through re-ranking (over all queries): the paired view of the change, which says
        whether a difference of a query or two is more than chance (:func:`sign_test_worse`).

        Args:
            rescore: ``(query_index [n], gallery_index [n, k]) -> scores [n, k]``; indices count the
                queries and gallery rows in the order they were passed to the update methods (this
                rank's, single-process evaluation).
            top_k: how many candidates each query re-scores.
        """
        p = self._prepared()
        q_emb, g_emb = p["q_emb"], p["g_emb"]
        miss = g_emb.shape[0] + 1
        ranks, before = [], []
        for start in range(0, q_emb.shape[0], chunk_size):
            rows = torch.arange(start, min(start + chunk_size, q_emb.shape[0]), device=q_emb.device)
            scores = similarity(q_emb[rows], g_emb).float()  # [c, G]
            positive = p["q_pos"][rows, None] == p["g_pos"][None]
            eligible = p["q_group"][rows, None] == p["g_group"][None]
            hit = p["exclude"][rows] >= 0
            eligible[hit.nonzero().squeeze(1), p["exclude"][rows][hit]] = False
            positive &= eligible
            best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
            itc_rank = ((scores >= best) & eligible & ~positive).sum(dim=1) + 1
            k = min(top_k, scores.shape[1])
            top_scores, top = scores.masked_fill(~eligible, float("-inf")).topk(k, dim=1)
            in_top = top_scores > float("-inf")
            new = rescore(p["q_index"][rows], p["keep"][top]).float().to(scores.device)
            top_positive = positive.gather(1, top) & in_top
            new_best = new.masked_fill(~top_positive, float("-inf")).amax(dim=1, keepdim=True)
            above = ((new >= new_best) & in_top & ~top_positive).sum(dim=1) + 1
            rank = torch.where(top_positive.any(dim=1), above, itc_rank.clamp_min(k + 1))
            ranks.append(torch.where(positive.any(dim=1), rank, torch.full_like(rank, miss)))
            before.append(torch.where(positive.any(dim=1), itc_rank, torch.full_like(itc_rank, miss)))
        ranks_after, ranks_before = torch.cat(ranks), torch.cat(before)
        out = self._dropped(self._recall(ranks_after, p["q_group"]), p)
        for k in self.ks:
            hit_after, hit_before = ranks_after <= k, ranks_before <= k
            out[f"gained_r@{k}"] = float((hit_after & ~hit_before).sum())
            out[f"lost_r@{k}"] = float((hit_before & ~hit_after).sum())
        return out

    def _recall(self, ranks: Tensor | dict[int, Tensor], q_group: Tensor) -> dict[str, float]:
        """Recall per group and K from best-positive ranks, or from one rank tensor per K (``mmf``)."""
        if not isinstance(ranks, dict):
            ranks = dict.fromkeys(self.ks, ranks)
        out: dict[str, float] = {}
        if self.group_names is not None:
            for gid, name in self.group_names.items():
                rows = q_group == gid
                if rows.any():
                    out.update({f"{name}_r@{k}": recall_from_ranks(ranks[k][rows], (k,))[k] for k in self.ks})
            for k in self.ks:
                per_group = [out[f"{n}_r@{k}"] for n in self.group_names.values() if f"{n}_r@{k}" in out]
                out[f"mean_r@{k}"] = sum(per_group) / len(per_group)
            out["avg"] = sum(v for key, v in out.items() if not key.startswith("mean_")) / (
                len(out) - len(self.ks)
            )
            return out
        weights = None
        if self.class_balanced:
            groups, counts = torch.unique(q_group, return_counts=True)
            per_query = 1.0 / counts[torch.searchsorted(groups, q_group)].double()
            weights = per_query / len(groups)
            weights = weights.to(ranks[self.ks[0]].device)
        out.update({f"r@{k}": recall_from_ranks(ranks[k], (k,), weights)[k] for k in self.ks})
        out["avg"] = sum(out.values()) / len(self.ks)
        return out


def average_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each figure averaged over the ranks (MMF's ``reduce_dict``); unchanged in a single process."""
    if world_size() == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(stacked)
    return dict(zip(values, (stacked / world_size()).tolist(), strict=True))


def chance_group_recall(gallery: Sequence[tuple[int, int]], k: int) -> float:
    """Percent recall@k of a random ranking, averaged over groups as ``mean_r@k`` is: k / the number of
    distinct gallery keys of each group (capped at 100). ``gallery``: ``(group, dedupe key)`` per row."""
    keys: dict[int, set[int]] = {}
    for group, key in gallery:
        keys.setdefault(group, set()).add(key)
    if not keys:
        raise ValueError("chance recall of an empty gallery")
    return sum(100.0 * min(1.0, k / len(v)) for v in keys.values()) / len(keys)


def sign_test_worse(gained: int, lost: int) -> float:
    """One-sided p-value that a re-ranking lowers recall, from the queries whose hit changed
    (``gained_r@K``, ``lost_r@K`` of :meth:`ComposedGalleryRecall.compute_reranked`): the exact binomial
    (sign) test of ``lost`` successes in ``gained + lost`` fair draws. 1.0 when nothing changed."""
    from scipy.stats import binomtest

    changed = int(gained) + int(lost)
    if changed == 0:
        return 1.0
    return float(binomtest(int(lost), changed, 0.5, alternative="greater").pvalue)
