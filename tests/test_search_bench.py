"""scripts/bench_search.py on tiny sizes: every figure is there, exact recall is 1, the best setting
is one that reaches the recall asked, and the service answers through HTTP."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss", "fastapi", "uvicorn", "multipart", "httpx"))
ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "scripts" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the whole script (environment, synthetic-free sizes, a server); the fast ones below
def test_bench_search_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "--sizes",
        "3000",
        "--dim",
        "32",
        "--queries",
        "40",
        "--exact-queries",
        "10",
        "--nlist-factors",
        "1",
    ]
    args += [
        "--nprobe",
        "4,64",
        "--ef-search",
        "16,64",
        "--service-items",
        "3000",
        "--service-requests",
        "10",
    ]
    args += ["--skip-pipeline", "--out", str(out)]
    _script().main(args)
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    assert size["items"] == 3000 and size["exact"]["build_items_per_s"] > 0
    assert size["exact"]["p99_ms"] >= size["exact"]["p50_ms"] > 0
    (ivf,) = size["ivf"]
    assert ivf["nlist"] == 55 and [r["nprobe"] for r in ivf["sweep"]] == [4, 64]
    # probing every cell is exact search
    assert ivf["sweep"][1]["recall@10"] == 1.0
    assert ivf["sweep"][0]["recall@10"] <= 1.0
    best = size["best"]
    assert best is not None and best["recall@10"] >= 0.95
    assert result["goal"]["items"] == 3000 and result["goal"]["met"] == (best["p99_ms"] < 50)
    assert result["service"]["index_items"] == 3000 and result["service"]["queries"] == 10
    assert result["service"]["p50_ms"] > 0


def test_structured_vectors_have_near_neighbours_and_uniform_ones_do_not() -> None:
    from fashion_vl.bench.search import random_basis, structured_unit_vectors, uniform_unit_vectors

    rng = np.random.default_rng(0)
    basis = random_basis(256, 32, rng)
    s = structured_unit_vectors(2000, 256, rng, basis=basis)
    u = uniform_unit_vectors(2000, 256, rng)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1, atol=1e-5)
    top = lambda x: np.sort(x[:50] @ x[50:].T, axis=1)[:, -1].mean()  # noqa: E731
    assert top(s) > 0.5 > 0.35 > top(u)


def test_bench_size_sweeps_and_picks_the_fastest_setting_that_reaches_the_recall() -> None:
    from fashion_vl.bench.search import bench_size, best_setting, random_basis, structured_unit_vectors

    rng = np.random.default_rng(0)
    basis = random_basis(16, 8, rng)
    vectors, queries = (
        structured_unit_vectors(2000, 16, rng, basis=basis),
        structured_unit_vectors(30, 16, rng, basis=basis),
    )
    ivf = [{"nlist": 40, "nprobe": [1, 40]}]
    hnsw = [{"m": 8, "ef_construction": 40, "ef_search": [8, 64]}]
    size = bench_size(vectors, queries, k=10, exact_queries=5, ivf=ivf, hnsw=hnsw, log=lambda s: None)
    assert size["ivf"][0]["sweep"][1]["recall@10"] == 1.0  # every cell probed: exact
    assert size["ivf"][0]["sweep"][0]["recall@10"] < 1.0
    best = best_setting(size, 10, 0.95)
    reaching = [r for b in size["ivf"] + size["hnsw"] for r in b["sweep"] if r["recall@10"] >= 0.95]
    assert best is not None and best["p50_ms"] == min(r["p50_ms"] for r in reaching)
    assert best_setting(size, 10, 1.01) is None


def test_bench_service_times_text_queries_through_http(tmp_path: Path) -> None:
    from fashion_vl.bench.search import bench_service
    from tests.helpers.fake_embedder import FakeEmbedder, build_colour_index

    figure = bench_service(build_colour_index(tmp_path), FakeEmbedder(), requests=5, k=3)
    assert figure["index_items"] == 18 and figure["queries"] == 5
    assert figure["p99_ms"] >= figure["p50_ms"] > 0
