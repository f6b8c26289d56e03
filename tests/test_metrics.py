"""Recall@K: hand-computed cases and a brute-force reference on random inputs, ties included."""

from __future__ import annotations

import pytest
import torch

from fashion_vl.metrics.gallery import CrossModalGalleryRecall
from fashion_vl.metrics.retrieval import best_positive_ranks, full_gallery_recall, recall_from_ranks


def brute_force_ranks(
    scores: torch.Tensor, positive: torch.Tensor, eligible: torch.Tensor | None = None
) -> list[int]:
    """Per query: sort the eligible gallery by score, ties broken against the positives (pessimistic),
    and return the 1-based position of the first positive."""
    ranks = []
    for q in range(scores.shape[0]):
        items = [
            (float(scores[q, g]), bool(positive[q, g]))
            for g in range(scores.shape[1])
            if eligible is None or bool(eligible[q, g])
        ]
        items.sort(key=lambda t: (-t[0], t[1]))  # higher score first; on ties negatives first
        ranks.append(next((i + 1 for i, (_, pos) in enumerate(items) if pos), scores.shape[1] + 1))
    return ranks


def test_hand_computed_case() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 1.0]])
    # query 0: positive is gallery 1 (score 0.9) behind gallery 0 (1.0) -> rank 2
    # query 1: positive is gallery 3 (score 1.0) tied with negative gallery 2 -> pessimistic rank 2
    ranks = best_positive_ranks(q, g, torch.tensor([7, 8]), torch.tensor([5, 7, 6, 8]))
    assert ranks.tolist() == [2, 2]
    assert recall_from_ranks(ranks, (1, 2)) == {1: 0.0, 2: 100.0}


def test_degenerate_embeddings_score_zero_not_hundred() -> None:
    emb = torch.ones(5, 4)
    ranks = best_positive_ranks(emb, emb, torch.arange(5), torch.arange(5))
    assert ranks.tolist() == [5] * 5  # every negative ties with the positive and ranks before it


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_ties_and_multiple_positives(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (30, 3), generator=g).float()  # few distinct values: many ties
    gallery = torch.randint(-2, 3, (40, 3), generator=g).float()
    qids = torch.randint(0, 12, (30,), generator=g)
    gids = torch.randint(0, 12, (40,), generator=g)  # some ids repeat (several positives), some absent
    qgroups, ggroups = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (40,), generator=g)
    scores = queries @ gallery.T
    positive = qids[:, None] == gids[None]
    assert best_positive_ranks(queries, gallery, qids, gids, chunk_size=7).tolist() == brute_force_ranks(
        scores, positive
    )
    eligible = qgroups[:, None] == ggroups[None]
    grouped = best_positive_ranks(
        queries, gallery, qids, gids, query_groups=qgroups, gallery_groups=ggroups, chunk_size=4
    )
    assert grouped.tolist() == brute_force_ranks(scores, positive & eligible, eligible)


def test_query_without_positive_is_a_miss() -> None:
    ranks = best_positive_ranks(torch.eye(2), torch.eye(2), torch.tensor([0, 9]), torch.tensor([0, 1]))
    assert ranks.tolist() == [1, 3]


def test_nan_scores_are_an_error() -> None:
    q = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        best_positive_ranks(q, torch.eye(2), torch.tensor([0]), torch.tensor([0, 1]))


def test_weighted_recall_for_class_balance() -> None:
    ranks = torch.tensor([1, 50, 50, 50])
    weights = torch.tensor([0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])  # one class of 1 query, one of 3
    assert recall_from_ranks(ranks, (10,), weights)[10] == pytest.approx(50.0)


def test_full_gallery_recall_keys_and_product_with_several_images() -> None:
    text = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 1, 0]])
    image_ids = torch.tensor([0, 0, 2, 1])  # product 0 has two images
    out = full_gallery_recall(images, image_ids, text, torch.arange(3), ks=(1,))
    assert out["i2t_r@1"] == 100.0 and out["t2i_r@1"] == 100.0
    assert out["rsum"] == 200.0 and out["mean"] == 100.0


def test_gallery_metric_drops_duplicate_rows() -> None:
    metric = CrossModalGalleryRecall(ks=(1,))
    img, txt = torch.eye(3), torch.eye(3)
    metric.update(img, torch.arange(3), torch.arange(3), txt, torch.arange(3))
    metric.update(
        img[:1] * 0 + torch.tensor([0.0, 1.0, 0.0]),
        torch.tensor([0]),
        torch.tensor([0]),
        txt[:1],
        torch.tensor([0]),
    )
    # the duplicate key 0 (a padded shard) is dropped: the first row counts, the result stays perfect
    assert metric.compute()["full/i2t_r@1"] == 100.0


def test_sample100_perfect_embeddings_score_100_and_are_seeded() -> None:
    from fashion_vl.metrics.retrieval import sample100_recall

    n = 300
    emb = torch.eye(n)
    ids, groups = torch.arange(n), torch.arange(n) % 3
    out = sample100_recall(emb, ids, groups, emb, ids, groups, num_queries=50, repeats=2, seed=1)
    assert out["i2t_r@1"] == out["t2i_r@1"] == 100.0 and out["rsum"] == 600.0
    noisy = emb + 0.9 * torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    a = sample100_recall(noisy, ids, groups, emb, ids, groups, num_queries=50, seed=4)
    b = sample100_recall(noisy, ids, groups, emb, ids, groups, num_queries=50, seed=4)
    assert a == b and a["i2t_r@1"] < 100.0


def test_sample100_ranks_only_among_candidates() -> None:
    from fashion_vl.metrics.retrieval import sample100_ranks

    # one query (id 0, group 0); gallery: its positive, 100 same-group negatives scoring below it,
    # and 50 other-group items scoring far above it. With 100 same-group negatives available, no
    # other-group item is a candidate, so the positive ranks first.
    query = torch.tensor([[1.0]])
    gallery = torch.cat([torch.tensor([[0.5]]), torch.full((100, 1), 0.1), torch.full((50, 1), 9.0)])
    g_ids = torch.arange(151)
    g_groups = torch.cat([torch.zeros(101, dtype=torch.long), torch.ones(50, dtype=torch.long)])
    ranks = sample100_ranks(
        query, gallery, torch.tensor([0]), g_ids, torch.tensor([0]), g_groups, generator=torch.Generator()
    )
    assert ranks.tolist() == [1]
    # with only 60 same-group negatives, 40 other-group items fill the candidates: rank 41
    gallery, g_ids, g_groups = (
        gallery[[*range(61), *range(101, 151)]],
        g_ids[:111],
        g_groups[[*range(61), *range(101, 151)]],
    )
    ranks = sample100_ranks(
        query, gallery, torch.tensor([0]), g_ids, torch.tensor([0]), g_groups, generator=torch.Generator()
    )
    assert ranks.tolist() == [41]
