"""The FAISS index over item vectors, and the score every consumer uses.

An item has ``Q`` vectors (``Q = 1`` for FashionViL and CLIP-family models; 32 Q-Former queries for
UniFashion) and scores ``max_q <query, item_q>`` against a query vector. FAISS indexes the ``N * Q``
vectors with label ``row * Q + q``; a search fetches the ``k * Q`` best vectors, maps them to their
items and re-scores those candidates exactly against the stored vectors. With an exact (flat) index
this returns the exact top ``k`` items: an item among the true top ``k`` is outranked only by vectors
of the at most ``k - 1`` items above it, so its best vector is within the first ``(k - 1) Q + 1``.

Kinds: ``flat`` (exact inner product), ``ivf`` (inverted lists over k-means cells, ``nprobe`` of
them searched), ``ivfpq`` (the same cells holding 4-bit product-quantised codes scanned with FAISS's
SIMD "fast-scan" kernels, then the best ``refine * k`` candidates re-scored exactly against the stored
vectors) and ``hnsw`` (a graph; ``ef_search`` candidates kept). ``auto`` is flat up to
``exact_max_items`` items and ``approximate`` above (figures in docs/search.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
APPROXIMATE_KINDS = ("ivf", "ivfpq", "hnsw")


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "catalogue indexes need faiss: pip install 'fashion-vl[search]' (the faiss-cpu package)"
        ) from err
    return faiss


@dataclass
class IndexSpec:
    """How to index: the kind and its knobs. ``resolve`` turns ``auto`` and unset sizes into the
    concrete parameters written to ``index.json``.

    Args:
        kind: ``auto``, ``flat``, ``ivf``, ``ivfpq`` or ``hnsw``.
        exact_max_items: ``auto`` indexes exactly up to this many items.
        approximate: what ``auto`` builds above ``exact_max_items`` (``ivfpq``, ``ivf`` or ``hnsw``;
            ``ivfpq`` is the one that reached recall@10 >= 0.95 within 50 ms p99 at 1M items in
            scripts/bench_search.py, and builds in minutes where HNSW takes an hour; docs/search.md).
        nlist: IVF cells (``ivf``, ``ivfpq``); ``None``: ``4 * sqrt(vectors)``, at most ``vectors / 39``
            (FAISS wants 39 training points per centroid).
        nprobe: IVF cells searched per query; ``None``: 32 for ``ivf``, a quarter of the cells for
            ``ivfpq`` (its codes are scanned ~10x faster than IVF's floats, so it affords the probes
            that embeddings without cluster structure need).
        train_size: vectors sampled to train the IVF centroids (``None``: 64 per cell, FAISS wants 39-256).
        pq_m: ``ivfpq``: sub-quantizers per vector (4 bits each); ``None``: one per 4 dimensions.
        refine: ``ivfpq``: candidates per result re-scored exactly (``refine * k`` of them; 10 lost a
            tenth of the recall at 1M items, 30 did not).
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
        seed: the k-means initialisation and the training sample.
    """

    kind: str = "auto"
    exact_max_items: int = 50_000
    approximate: str = "ivfpq"
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    pq_m: int | None = None
    refine: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind: '{self.kind}' is not one of {INDEX_KINDS}")
        if self.approximate not in APPROXIMATE_KINDS:
            raise ValueError(f"approximate index: '{self.approximate}' is not one of {APPROXIMATE_KINDS}")
        if self.refine < 1:
            raise ValueError(f"refine must be >= 1, got {self.refine}")

    def resolve(self, num_items: int, vectors_per_item: int, dim: int | None = None) -> dict[str, Any]:
        """The concrete parameters for ``num_items`` items of ``vectors_per_item`` ``dim``-d vectors
        (``dim`` is needed by ``ivfpq`` only)."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if num_items <= self.exact_max_items else self.approximate
        params: dict[str, Any] = {"kind": kind}
        total = num_items * vectors_per_item
        if kind in ("ivf", "ivfpq"):
            nlist = self.nlist or int(4 * math.sqrt(total))
            nlist = max(1, min(nlist, total // 39 or 1))
            params |= {
                "nlist": nlist,
                "nprobe": min(self.nprobe or (32 if kind == "ivf" else max(1, nlist // 4)), nlist),
                "train_size": min(total, self.train_size or 64 * nlist),
                "seed": self.seed,
            }
        if kind == "ivfpq":
            if dim is None:
                raise ValueError("an ivfpq index needs the vectors' dimension to resolve its pq_m")
            # default: 4 dimensions per 4-bit sub-quantizer (the largest divisor of dim up to dim / 4)
            pq_m = self.pq_m or next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the vectors' dimension {dim}")
            params |= {"pq_m": pq_m, "refine": self.refine}
        elif kind == "hnsw":
            params |= {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        return params

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_faiss(vectors: np.ndarray, params: dict[str, Any]) -> Any:
    """A FAISS inner-product index over ``vectors`` ``[M, D]`` (float32), as ``params`` says."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    kind = params["kind"]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = params["seed"]
        rng = np.random.default_rng(params["seed"])
        sample = np.sort(rng.choice(len(vectors), params["train_size"], replace=False))
        index.train(vectors[sample])
    elif kind == "ivfpq":
        # FAISS's 4-bit PQ "fast-scan" layout: the codes of a cell are scanned with SIMD table lookups,
        # an order of magnitude faster than IVFFlat's float scan; VectorIndex.search re-scores the best
        # refine * k candidates exactly (from vectors.npy, so the index holds no second copy of them)
        index = faiss.index_factory(
            dim, f"IVF{params['nlist']},PQ{params['pq_m']}x4fs", faiss.METRIC_INNER_PRODUCT
        )
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = params["seed"]
        ivf.pq.cp.seed = params["seed"]
        rng = np.random.default_rng(params["seed"])
        sample = np.sort(rng.choice(len(vectors), params["train_size"], replace=False))
        index.train(vectors[sample])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        raise ValueError(f"index kind: '{kind}' is not one of flat, ivf, ivfpq, hnsw")
    index.add(vectors)
    set_search_params(index, params)
    return index


def set_search_params(index: Any, params: dict[str, Any]) -> None:
    """Apply the query-time knob (``nprobe`` or ``ef_search``) that ``params`` holds."""
    faiss = import_faiss()
    if params["kind"] in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    elif params["kind"] == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params["ef_search"]


def write_faiss(index: Any, path: Path) -> None:
    """``faiss.write_index`` to a temporary name, fsync, rename: never a half-written index file."""
    faiss = import_faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_faiss(path: Path) -> Any:
    return import_faiss().read_index(str(path))


class VectorIndex:
    """Top-k items for query vectors: a FAISS index over ``vectors`` ``[N, Q, D]`` (one row per item).

    ``vectors`` may be a memory map: only the candidates' rows are read when re-scoring.
    """

    def __init__(self, index: Any, vectors: np.ndarray, params: dict[str, Any]) -> None:
        if vectors.ndim != 3:
            raise ValueError(f"item vectors must be [N, Q, D], got shape {vectors.shape}")
        if index.ntotal != vectors.shape[0] * vectors.shape[1]:
            raise ValueError(
                f"the FAISS index holds {index.ntotal} vectors but the item vectors are {vectors.shape}: "
                "the index folder is inconsistent; rebuild it"
            )
        self.index = index
        self.vectors = vectors
        self.params = params

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any]) -> VectorIndex:
        n, q, d = vectors.shape
        return cls(build_faiss(np.asarray(vectors).reshape(n * q, d), params), vectors, params)

    @property
    def num_items(self) -> int:
        return self.vectors.shape[0]

    @property
    def vectors_per_item(self) -> int:
        return self.vectors.shape[1]

    @property
    def dim(self) -> int:
        return self.vectors.shape[2]

    def set_search_params(self, **overrides: Any) -> None:
        """Change ``nprobe`` / ``ef_search`` / ``refine`` for later searches."""
        self.params = {**self.params, **{k: v for k, v in overrides.items() if v is not None}}
        set_search_params(self.index, self.params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item rows of the top ``k`` items per query, best first: ``[M, k']`` each with
        ``k' = min(k, N)``; an approximate index may find fewer (rows ``-1``, scores ``-inf``). With
        ``Q > 1`` or ``refine > 1`` (``ivfpq``) the candidates FAISS returns are re-scored exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [M, {self.dim}], got shape {queries.shape}")
        k = min(k, self.num_items)
        q = self.vectors_per_item
        refine = int(self.params.get("refine", 1))
        scores, labels = self.index.search(queries, min(k * q * refine, self.index.ntotal))
        if q == 1 and refine == 1:
            return scores[:, :k], labels[:, :k]
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, query in enumerate(queries):
            rows = np.unique(labels[i][labels[i] >= 0] // q)  # sorted: ties go to the lower row
            exact = (self.vectors[rows] @ query).max(axis=1)  # [C]: max over the item's Q vectors
            best = np.argsort(-exact, kind="stable")[:k]
            out_scores[i, : len(best)] = exact[best]
            out_rows[i, : len(best)] = rows[best]
        return out_scores, out_rows


def brute_force_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every item's max-over-vectors score, sorted (ties to the lower row)."""
    scores = np.einsum("nqd,md->mnq", np.asarray(vectors, dtype=np.float32), queries).max(axis=2)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order
