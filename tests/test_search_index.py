"""The FAISS index: exact search equals brute-force top-k (also with several vectors per item and the
max-over-vectors score), approximate indexes find most of it, and ``auto`` picks by size."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss",))


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int, q: int = 1) -> np.ndarray:
    """Unit vectors around ``centres``: the neighbourhood structure that real embeddings have."""
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)][:, None, :] + 0.1 * rng.standard_normal((n, q, dim)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("vectors_per_item", [1, 4])
@pytest.mark.parametrize("k", [1, 10, 37])
def test_exact_search_equals_brute_force(vectors_per_item: int, k: int) -> None:
    from fashion_vl.search.vector_index import VectorIndex, brute_force_top_k

    rng = np.random.default_rng(vectors_per_item * 100 + k)
    vectors = _unit(rng, 500, vectors_per_item, 32)
    queries = _unit(rng, 25, 32)
    index = VectorIndex.build(vectors, {"kind": "flat"})
    scores, rows = index.search(queries, k)
    ref_scores, ref_rows = brute_force_top_k(vectors, queries, k)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


def test_brute_force_reference_is_max_over_vectors() -> None:
    """The reference itself, on a case small enough to check by hand."""
    from fashion_vl.search.vector_index import brute_force_top_k

    e = np.eye(3, dtype=np.float32)
    # item 0: vectors e0, e1; item 1: e2, e2; item 2: e1, -e1
    vectors = np.stack([np.stack([e[0], e[1]]), np.stack([e[2], e[2]]), np.stack([e[1], -e[1]])])
    query = np.array([[0.0, 0.6, 0.8]], dtype=np.float32)
    scores, rows = brute_force_top_k(vectors, query, 3)
    assert rows.tolist() == [[1, 0, 2]]  # 0.8, then max(0, 0.6) = 0.6 with a tie to item 2 -> lower row
    np.testing.assert_allclose(scores, [[0.8, 0.6, 0.6]], atol=1e-6)


def test_k_larger_than_the_catalogue_returns_every_item() -> None:
    from fashion_vl.search.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    index = VectorIndex.build(_unit(rng, 7, 2, 8), {"kind": "flat"})
    scores, rows = index.search(_unit(rng, 2, 8), 50)
    assert rows.shape == (2, 7) and sorted(rows[0].tolist()) == list(range(7))
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize(
    ("kind", "vectors_per_item"), [("ivf", 1), ("hnsw", 1), ("ivf", 3), ("ivfpq", 1), ("ivfpq", 3)]
)
def test_approximate_indexes_find_most_of_the_exact_top_10(kind: str, vectors_per_item: int) -> None:
    from fashion_vl.search.vector_index import IndexSpec, VectorIndex, brute_force_top_k

    rng = np.random.default_rng(1)
    centres = _unit(rng, 20, 32)
    vectors = _clustered(rng, centres, 4000, vectors_per_item)
    queries = _clustered(rng, centres, 50)[:, 0]
    # 4-bit PQ codes cannot order the members of these tight clusters: 30 candidates per result re-scored
    spec = IndexSpec(kind=kind, nprobe=8, ef_search=64, refine=30)
    params = spec.resolve(len(vectors), vectors_per_item, 32)
    index = VectorIndex.build(vectors, params)
    scores, rows = index.search(queries, 10)
    _, ref_rows = brute_force_top_k(vectors, queries, 10)
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, ref_rows)])
    assert recall >= 0.9, recall
    # the scores returned are the exact max-over-vectors scores of the rows returned
    exact = np.einsum("nqd,d->nq", vectors[rows[0]], queries[0]).max(axis=1)
    np.testing.assert_allclose(scores[0], exact, atol=1e-5)


def test_index_spec_auto_is_exact_up_to_the_threshold_then_approximate() -> None:
    from fashion_vl.search.vector_index import IndexSpec

    spec = IndexSpec(exact_max_items=1000, approximate="hnsw")
    assert spec.resolve(1000, 1) == {"kind": "flat"}
    assert spec.resolve(1001, 1)["kind"] == "hnsw"
    # the default above the threshold: IVF-PQ fast-scan probing a quarter of its cells, 30 candidates
    # per result re-scored exactly
    default = IndexSpec().resolve(1_000_000, 1, 256)
    assert default == {
        "kind": "ivfpq", "nlist": 4000, "nprobe": 1000, "train_size": 256_000, "seed": 0, "pq_m": 64, "refine": 30,
    }  # fmt: skip
    assert IndexSpec(kind="ivfpq").resolve(100_000, 1, 50)["pq_m"] == 10  # a divisor of 50 up to 50 / 4
    ivf = IndexSpec(kind="ivf").resolve(1_000_000, 1)
    assert ivf["nlist"] == 4000 and ivf["nprobe"] == 32 and ivf["train_size"] == 64 * 4000
    # few vectors: at least 39 training points per cell
    assert IndexSpec(kind="ivf").resolve(100, 1)["nlist"] == 2
    with pytest.raises(ValueError, match="index kind"):
        IndexSpec(kind="annoy")


def test_ivfpq_reranks_its_candidates_exactly() -> None:
    """IVF-PQ's codes only pick candidates: with every cell probed and enough candidates re-scored the
    result is the exact top k, scores included; with refine=1 the coarse codes alone lose some of it."""
    from fashion_vl.search.vector_index import IndexSpec, VectorIndex, brute_force_top_k

    rng = np.random.default_rng(2)
    vectors = _unit(rng, 3000, 1, 32)
    queries = _unit(rng, 30, 32)
    params = IndexSpec(kind="ivfpq", nlist=16, nprobe=16, refine=300).resolve(len(vectors), 1, 32)
    assert params == {
        "kind": "ivfpq", "nlist": 16, "nprobe": 16, "train_size": 1024, "seed": 0, "pq_m": 8, "refine": 300,
    }  # fmt: skip
    index = VectorIndex.build(vectors, params)
    scores, rows = index.search(queries, 10)
    ref_scores, ref_rows = brute_force_top_k(vectors, queries, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    index.set_search_params(refine=1)
    _, coarse = index.search(queries, 10)
    assert np.mean([len(set(r) & set(t)) / 10 for r, t in zip(coarse, ref_rows)]) < 0.9
    with pytest.raises(ValueError, match="pq_m=5 must divide"):
        IndexSpec(kind="ivfpq", pq_m=5).resolve(3000, 1, 32)
