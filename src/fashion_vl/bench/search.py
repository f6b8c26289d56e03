"""Catalogue search speed and quality: index build throughput, single-query latency (p50/p99) of
exact and approximate indexes, recall@10 of the approximate ones against exact search, the build
pipeline's own cost on a real catalogue, and the service's latency through HTTP.

Vectors above the synthetic catalogue's size are random unit vectors with a low intrinsic dimension
(``structured_unit_vectors``): uniformly random vectors in 256 dimensions have no near neighbours
(every query sits at cosine 0 +- 0.06 from everything), so an approximate index's recall on them
measures noise, not the index; real embeddings lie near a low-dimensional set. ``--data uniform``
measures that worst case anyway.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashion_vl.search.vector_index import IndexSpec, VectorIndex


def structured_unit_vectors(
    n: int,
    dim: int,
    rng: np.random.Generator,
    *,
    intrinsic: int = 32,
    noise: float = 0.1,
    basis: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, dim]`` unit vectors ``normalise(z @ basis + noise * e)``, ``z ~ N(0, I_intrinsic)``,
    ``basis`` orthonormal rows (pass the same one for queries and items), ``e ~ N(0, I_dim)``."""
    basis = basis if basis is not None else random_basis(dim, intrinsic, np.random.default_rng(0))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # chunks: the 1M case stays near its 1 GB output
        m = min(65536, n - start)
        x = rng.standard_normal((m, basis.shape[0]), dtype=np.float32) @ basis
        x += noise * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered_unit_vectors(
    n: int,
    dim: int,
    rng: np.random.Generator,
    *,
    centres: np.ndarray,
    spread: float = 0.5,
    noise: float = 0.1,
    basis: np.ndarray,
) -> np.ndarray:
    """``[n, dim]`` unit vectors from a mixture of Gaussians in the same low-dimensional subspace as
    :func:`structured_unit_vectors`: ``normalise((c + spread * z) @ basis + noise * e)`` with ``c`` one
    of ``centres`` ``[C, intrinsic]`` drawn uniformly (a catalogue's categories and styles) and ``z ~
    N(0, I)``. ``spread -> inf`` is the structured case; small ``spread`` is well clustered, where IVF's
    cells follow the clusters."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        z = centres[rng.integers(0, len(centres), m)] + spread * rng.standard_normal(
            (m, basis.shape[0]), dtype=np.float32
        )
        x = z.astype(np.float32) @ basis + noise * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def random_basis(dim: int, intrinsic: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic)))
    return np.ascontiguousarray(q.T, dtype=np.float32)  # [intrinsic, dim]


def uniform_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "queries": len(ms),
    }


def single_query_latency(
    index: VectorIndex, queries: np.ndarray, k: int, *, threads: int | None = 1, warmup: int = 5
) -> list[float]:
    """Seconds per query, one query per call (as a service answers them), FAISS limited to
    ``threads`` OpenMP threads (``None``: all). One is the service's setting: on a busy 2-core
    machine OpenMP's spinning threads made a single exact query at 100k items 4x slower (143 vs
    33 ms median), and concurrent requests are the parallelism a service needs."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or before)
    try:
        for q in queries[:warmup]:
            index.search(q[None], k)
        seconds = []
        for q in queries:
            start = time.perf_counter()
            index.search(q[None], k)
            seconds.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(before)
    return seconds


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate top-k contains."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def timed_build(vectors: np.ndarray, params: dict[str, Any]) -> tuple[VectorIndex, dict[str, Any]]:
    start = time.perf_counter()
    index = VectorIndex.build(vectors[:, None, :], params)
    seconds = time.perf_counter() - start
    return index, {"build_s": round(seconds, 2), "build_items_per_s": round(len(vectors) / seconds, 1)}


def bench_size(
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    k: int,
    exact_queries: int,
    ivf: Sequence[dict[str, Any]],
    hnsw: Sequence[dict[str, Any]],
    ivfpq: Sequence[dict[str, Any]] = (),
    query_threads: int | None = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Exact, IVF, IVF-PQ (fast-scan, exact re-ranking) and HNSW indexes over ``vectors``; each
    approximate configuration is a build (``nlist`` / ``nlist, pq_m`` / ``m, ef_construction``) with a
    sweep of its query knobs (``nprobe`` / ``nprobe x refine`` / ``ef_search``)."""
    n = len(vectors)
    result: dict[str, Any] = {"items": n, "dim": vectors.shape[1]}
    exact, figures = timed_build(vectors, {"kind": "flat"})
    # the exact top-k of every query, in one batched call, is the recall reference
    start = time.perf_counter()
    _, truth = exact.search(queries, k)
    figures["batched_query_ms"] = round(1000 * (time.perf_counter() - start) / len(queries), 3)
    figures |= percentiles_ms(single_query_latency(exact, queries[:exact_queries], k, threads=query_threads))
    result["exact"] = figures
    log(f"{n} items exact: {figures}")
    del exact

    def sweep_row(index, **search_params: int) -> dict:
        """One search setting of a built index: recall@k against the exact top k, single-query latency."""
        index.set_search_params(**search_params)
        _, found = index.search(queries, k)
        row = {**search_params, f"recall@{k}": round(recall_at_k(found, truth), 4)}
        return row | percentiles_ms(single_query_latency(index, queries, k, threads=query_threads))

    result["ivf"] = []
    for config in ivf:
        params = IndexSpec(kind="ivf", nlist=config.get("nlist")).resolve(n, 1)
        index, built = timed_build(vectors, params)
        sweep = []
        for nprobe in config["nprobe"]:
            row = sweep_row(index, nprobe=nprobe)
            sweep.append(row)
            log(f"{n} items ivf nlist={params['nlist']}: {row}")
        result["ivf"].append(
            {"nlist": params["nlist"], "train_size": params["train_size"], **built, "sweep": sweep}
        )
        del index
    result["ivfpq"] = []
    for config in ivfpq:
        params = IndexSpec(kind="ivfpq", nlist=config.get("nlist"), pq_m=config.get("pq_m")).resolve(
            n, 1, vectors.shape[1]
        )
        index, built = timed_build(vectors, params)
        sweep = []
        for nprobe in config["nprobe"]:
            for refine in config["refine"]:
                row = sweep_row(index, nprobe=nprobe, refine=refine)
                sweep.append(row)
                log(f"{n} items ivfpq nlist={params['nlist']} pq_m={params['pq_m']}: {row}")
        result["ivfpq"].append(
            {
                "nlist": params["nlist"],
                "pq_m": params["pq_m"],
                "train_size": params["train_size"],
                **built,
                "sweep": sweep,
            }
        )
        del index
    result["hnsw"] = []
    for config in hnsw:
        params = IndexSpec(
            kind="hnsw", hnsw_m=config["m"], ef_construction=config["ef_construction"]
        ).resolve(n, 1)
        index, built = timed_build(vectors, params)
        sweep = []
        for ef in config["ef_search"]:
            row = sweep_row(index, ef_search=ef)
            sweep.append(row)
            log(f"{n} items hnsw m={params['m']}: {row}")
        result["hnsw"].append(
            {"m": params["m"], "ef_construction": params["ef_construction"], **built, "sweep": sweep}
        )
        del index
    return result


def best_setting(size: dict[str, Any], k: int, min_recall: float) -> dict[str, Any] | None:
    """The approximate setting with the lowest median latency among those reaching ``min_recall``
    (the median, not p99: on a shared machine a sub-millisecond query's p99 is the scheduler's)."""
    rows = [
        {"kind": kind, **{key: v for key, v in build.items() if key != "sweep"}, **row}
        for kind in ("ivf", "ivfpq", "hnsw")
        for build in size.get(kind, ())
        for row in build["sweep"]
        if row[f"recall@{k}"] >= min_recall
    ]
    return min(rows, key=lambda r: (r["p50_ms"], r["p99_ms"])) if rows else None


class RandomEmbedder:
    """A stand-in model for timing everything but the model: deterministic unit vectors from a hash
    of the input. ``encode_images`` costs what hashing the pixels costs, nothing more."""

    def __init__(self, dim: int, name: str = "random-vectors") -> None:
        self.name, self.embed_dim, self.vectors_per_image = name, dim, 1
        self.capabilities = frozenset({"image", "text"})

    def _vector(self, key: bytes) -> np.ndarray:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        v = rng.standard_normal(self.embed_dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_images(self, images: Sequence[Any], **kw: Any) -> np.ndarray:
        return np.stack([self._vector(np.asarray(im).tobytes()[:4096]) for im in images])

    def image_query(self, images: Sequence[Any], **kw: Any) -> np.ndarray:
        return self.encode_images(images)

    def encode_texts(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return np.stack([self._vector(t.encode()) for t in texts])


def bench_pipeline(catalogue_dir: Path, out: Path, embedder: Any, *, shard_size: int = 256) -> dict[str, Any]:
    """``build_index`` over a real catalogue folder: image decoding, shards, manifest, index files."""
    from fashion_vl.search.build import build_index
    from fashion_vl.search.catalogue import read_catalogue

    catalogue = read_catalogue(catalogue_dir)
    report = build_index(embedder, catalogue, out, overwrite=True, shard_size=shard_size)
    return {
        "catalogue": str(catalogue_dir),
        "items": report.items,
        "model": embedder.name,
        "seconds": round(report.seconds, 2),
        "items_per_s": round(report.items_per_s, 1),
    }


def bench_service(index_dir: Path, embedder: Any, *, requests: int, k: int = 10) -> dict[str, Any]:
    """Latency of ``POST /api/search/text`` through uvicorn on a free localhost port (keep-alive
    client): JSON in, query vector, index search, item lookups, JSON out."""
    import httpx
    import uvicorn

    from fashion_vl.search.searcher import CatalogueIndex, Searcher
    from fashion_vl.search.service import create_app

    index = CatalogueIndex.open(index_dir)
    app = create_app(Searcher(index, embedder))
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as fvl-serve does
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}/api/search/text"
    words = [
        "black",
        "leather",
        "sneakers",
        "red",
        "silk",
        "dress",
        "wool",
        "coat",
        "navy",
        "cotton",
        "shirt",
    ]
    rng = np.random.default_rng(0)
    seconds = []
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(requests + 5):
                text = " ".join(rng.choice(words, 3))
                start = time.perf_counter()
                response = client.post(url, json={"text": text, "k": k})
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                if i >= 5:  # warm-up
                    seconds.append(elapsed)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        faiss.omp_set_num_threads(threads)
    return {
        "index_items": len(index),
        "index": index.vectors.params,
        "model": embedder.name,
    } | percentiles_ms(seconds)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
