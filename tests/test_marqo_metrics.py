"""Marqo's query metrics (recall@K, precision@K, MRR) against a brute-force ranking, ties included."""

from __future__ import annotations

import pytest
import torch

from fashion_vl.metrics.marqo import RelevanceRetrieval, relevance_metrics


def brute_force(scores: torch.Tensor, relevant: torch.Tensor, ks=(1, 10)) -> dict[str, float]:
    """Each query's gallery sorted by (score descending, irrelevant first): the documented tie rule."""
    out = {f"recall@{k}": 0.0 for k in ks} | {f"precision@{k}": 0.0 for k in ks} | {"mrr": 0.0}
    n = 0
    for row_scores, row_relevant in zip(scores.tolist(), relevant.tolist(), strict=True):
        if not any(row_relevant):
            continue
        n += 1
        ranked = [
            rel for _, rel in sorted(zip(row_scores, row_relevant, strict=True), key=lambda p: (-p[0], p[1]))
        ]
        for k in ks:
            hits = sum(ranked[:k])
            out[f"recall@{k}"] += 100.0 * hits / sum(row_relevant)
            out[f"precision@{k}"] += 100.0 * hits / k
        out["mrr"] += 100.0 / (ranked.index(True) + 1)
    return {key: value / n for key, value in out.items()} | {"queries": float(n)}


def test_hand_example_counts_ties_against_the_query() -> None:
    # one query, gallery scores 0.9 (irrelevant), 0.5 (relevant), 0.5 (irrelevant), 0.1 (relevant)
    queries = torch.tensor([[1.0]])
    gallery = torch.tensor([[0.9], [0.5], [0.5], [0.1]])
    labels_q, labels_g = torch.tensor([7]), torch.tensor([0, 7, 0, 7])
    m = relevance_metrics(queries, gallery, labels_q, labels_g, ks=(1, 2, 3))
    # ranking: 0.9 (irr), 0.5 (irr, tie first), 0.5 (rel), 0.1 (rel)
    assert m["recall@1"] == 0.0 and m["recall@2"] == 0.0
    assert m["recall@3"] == pytest.approx(50.0) and m["precision@3"] == pytest.approx(100.0 / 3)
    assert m["mrr"] == pytest.approx(100.0 / 3)
    assert m["queries"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_brute_force_on_a_small_matrix_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(13, 6, generator=g)
    gallery = torch.randn(40, 6, generator=g)
    gallery[20:30] = gallery[:10]  # duplicate rows: exact score ties
    queries, gallery = queries.round(decimals=0), gallery.round(decimals=0)  # many more ties
    labels_q = torch.randint(0, 5, (13,), generator=g)
    labels_q[0] = 99  # a query with no relevant item: left out
    labels_g = torch.randint(0, 5, (40,), generator=g)
    expected = brute_force(queries @ gallery.T, labels_q[:, None] == labels_g[None])
    got = relevance_metrics(queries, gallery, labels_q, labels_g, ks=(1, 10), chunk_size=4)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_torchmetric_deduplicates_padded_rows_and_matches_the_function() -> None:
    g = torch.Generator().manual_seed(3)
    q, d = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
    lq, ld = torch.tensor([0, 1, 2, 0, 1, 2]), torch.randint(0, 3, (10,), generator=g)
    metric = RelevanceRetrieval(ks=(1, 10))
    metric.update_queries(q[:4], lq[:4], torch.arange(4))
    metric.update_queries(q[3:], lq[3:], torch.arange(3, 6))  # row 3 seen twice (a padded shard)
    metric.update_gallery(d, ld, torch.arange(10))
    metric.update_gallery(d[:2], ld[:2], torch.arange(2))
    assert metric.compute() == pytest.approx(relevance_metrics(q, d, lq, ld, ks=(1, 10)))


def test_no_relevant_item_anywhere_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query has a relevant item"):
        relevance_metrics(
            torch.ones(2, 3), torch.ones(4, 3), torch.tensor([5, 6]), torch.zeros(4, dtype=torch.long)
        )
