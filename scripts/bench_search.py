"""Catalogue search: index build throughput, single-query latency p50/p99 of exact and approximate
(IVF, IVF-PQ fast-scan with exact re-ranking, HNSW) indexes at 10k / 100k / 1M items, recall@10 of the approximate ones against exact, the
build pipeline on the synthetic catalogue, and one text query's latency through the HTTP service.
JSON out. Goal on a 2-core CPU: p99 < 50 ms at 1M items with recall@10 >= 0.95.

  python scripts/bench_search.py --out bench_search.json
  python scripts/bench_search.py --sizes 10000,100000 --queries 200      # quick
  python scripts/bench_search.py --data uniform --sizes 100000           # the no-structure worst case
  python scripts/bench_search.py --data clustered --sizes 100000         # a mixture of Gaussians
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fashion_vl.bench.report import ensure_synthetic, environment, write_json
from fashion_vl.bench.search import (
    RandomEmbedder,
    bench_pipeline,
    bench_service,
    bench_size,
    best_setting,
    clustered_unit_vectors,
    random_basis,
    structured_unit_vectors,
    uniform_unit_vectors,
)


def ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--data", default="structured", choices=("structured", "clustered", "uniform"))
    p.add_argument("--intrinsic-dim", type=int, default=32, help="structured data: dimension of the codes")
    p.add_argument("--clusters", type=int, default=1000, help="clustered data: mixture components")
    p.add_argument(
        "--spread", type=float, default=0.5, help="clustered data: within-cluster std (centres: 1)"
    )
    p.add_argument("--queries", type=int, default=500, help="queries timed one by one per setting")
    p.add_argument("--exact-queries", type=int, default=100, help="of those, timed on the exact index")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nlist-factors", default="1,4", help="IVF builds with nlist = factor * sqrt(N)")
    p.add_argument("--nlist", default="", help="IVF builds with these nlist values (instead of the factors)")
    p.add_argument("--nprobe", default="4,8,16,32,64,128")
    p.add_argument(
        "--ivfpq-nlist", default="", help="IVF-PQ fast-scan builds (nlist values; none by default)"
    )
    p.add_argument("--ivfpq-nprobe", default="64,128,256,512")
    p.add_argument("--pq-m", type=int, default=None, help="IVF-PQ sub-quantizers (default dim / 4)")
    p.add_argument("--refine", default="30", help="IVF-PQ: candidates per result re-scored exactly")
    p.add_argument("--hnsw-m", default="32", help="HNSW builds (graph degree; '' for none)")
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", default="16,32,64,128,256")
    p.add_argument("--hnsw-max-items", type=int, default=1_000_000, help="skip HNSW above this size")
    p.add_argument(
        "--query-threads", type=int, default=1, help="FAISS threads per query (0: all); builds use all"
    )
    p.add_argument("--target-p99-ms", type=float, default=50.0)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--service-items", type=int, default=100_000, help="index size behind the HTTP service")
    p.add_argument("--service-requests", type=int, default=200)
    p.add_argument("--data-dir", default=None, help="catalogue for the pipeline figure (default: synthetic)")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    console = Console(stderr=True)
    import faiss

    rng = np.random.default_rng(args.seed)
    basis = random_basis(args.dim, args.intrinsic_dim, np.random.default_rng(args.seed + 1))

    centres = np.random.default_rng(args.seed + 2).standard_normal((args.clusters, args.intrinsic_dim))

    def draw(n: int) -> np.ndarray:
        if args.data == "uniform":
            return uniform_unit_vectors(n, args.dim, rng)
        if args.data == "clustered":
            return clustered_unit_vectors(n, args.dim, rng, centres=centres, spread=args.spread, basis=basis)
        return structured_unit_vectors(n, args.dim, rng, intrinsic=args.intrinsic_dim, basis=basis)

    result: dict = {
        "environment": environment(torch.device("cpu"))
        | {"faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()},
        "data": {
            "kind": args.data,
            "dim": args.dim,
            "intrinsic_dim": args.intrinsic_dim if args.data != "uniform" else None,
        }
        | ({"clusters": args.clusters, "spread": args.spread} if args.data == "clustered" else {}),
        "k": args.k,
        "goal": {"p99_ms": args.target_p99_ms, f"recall@{args.k}": args.target_recall},
        "sizes": [],
    }
    for n in ints(args.sizes):
        start = time.perf_counter()
        vectors, queries = draw(n), draw(args.queries)
        nlists = ints(args.nlist) or [
            max(1, round(f * math.sqrt(n)))
            for f in map(float, args.nlist_factors.split(",") if args.nlist_factors else [])
        ]
        ivf = [{"nlist": nlist, "nprobe": ints(args.nprobe)} for nlist in nlists]
        ivfpq = [
            {
                "nlist": nlist,
                "pq_m": args.pq_m,
                "nprobe": ints(args.ivfpq_nprobe),
                "refine": ints(args.refine),
            }
            for nlist in ints(args.ivfpq_nlist)
        ]
        hnsw = (
            [
                {"m": m, "ef_construction": args.ef_construction, "ef_search": ints(args.ef_search)}
                for m in ints(args.hnsw_m)
            ]
            if n <= args.hnsw_max_items
            else []
        )
        size = bench_size(
            vectors,
            queries,
            k=args.k,
            exact_queries=args.exact_queries,
            ivf=ivf,
            hnsw=hnsw,
            ivfpq=ivfpq,
            log=console.print,
        )
        size["best"] = best_setting(size, args.k, args.target_recall)
        size["seconds"] = round(time.perf_counter() - start, 1)
        result["sizes"].append(size)
        write_json(result, args.out)  # a partial file survives an interrupted 1M run
        del vectors

    largest = result["sizes"][-1] if result["sizes"] else None
    if largest is not None:
        best = largest["best"]
        result["goal"] |= {
            "items": largest["items"],
            "best": best,
            "met": bool(best and best["p99_ms"] < args.target_p99_ms),
        }

    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        if not args.skip_pipeline:
            catalogue = ensure_synthetic(args.data_dir, "small", 128, only=["fashiongen"])
            result["pipeline"] = bench_pipeline(catalogue, Path(tmp) / "pipeline", RandomEmbedder(args.dim))
            result["pipeline"]["note"] = (
                "decoding, shards, manifest and index files; the model is a hash (no network)"
            )
            console.print(f"pipeline: {result['pipeline']}")
        if not args.skip_service:
            result["service"] = service_figure(args, draw, Path(tmp), result)
            console.print(f"service: {result['service']}")
    print_table(result, console)
    write_json(result, args.out)
    return result


def service_figure(args: argparse.Namespace, draw, tmp: Path, result: dict) -> dict:
    """An index folder of ``--service-items`` vectors (the best setting measured at that size, else
    exact) served over HTTP; one text query per request."""
    from PIL import Image

    from fashion_vl.search.build import write_index
    from fashion_vl.search.catalogue import CatalogueItem
    from fashion_vl.search.vector_index import IndexSpec

    n = args.service_items
    picture = tmp / "item.png"
    Image.new("RGB", (8, 8), (200, 30, 40)).save(picture)
    items = [CatalogueItem(f"item-{i}", str(picture), f"product {i}") for i in range(n)]
    best = next((s["best"] for s in result["sizes"] if s["items"] == n and s["best"]), None)
    if best is None:
        spec = IndexSpec(kind="flat")
    elif best["kind"] == "ivf":
        spec = IndexSpec(kind="ivf", nlist=best["nlist"], nprobe=best["nprobe"])
    elif best["kind"] == "ivfpq":
        spec = IndexSpec(
            kind="ivfpq", nlist=best["nlist"], nprobe=best["nprobe"], pq_m=best["pq_m"], refine=best["refine"]
        )
    else:
        spec = IndexSpec(
            kind="hnsw",
            hnsw_m=best["m"],
            ef_construction=best["ef_construction"],
            ef_search=best["ef_search"],
        )
    embedder = RandomEmbedder(args.dim)
    model = {
        "source": embedder.name,
        "name": embedder.name,
        "embed_dim": args.dim,
        "vectors_per_image": 1,
        "capabilities": ["image", "text"],
    }
    write_index(
        tmp / "service",
        draw(n)[:, None, :],
        items,
        model=model,
        catalogue={"source": "random", "rows": n},
        spec=spec,
    )
    figure = bench_service(tmp / "service", embedder, requests=args.service_requests, k=args.k)
    figure["note"] = (
        "HTTP + JSON + a hash 'model' + index search + item lookups; add the model's text encoding"
    )
    return figure


def print_table(result: dict, console: Console) -> None:
    k = result["k"]
    table = Table(
        title=f"catalogue search, {result['data']['kind']} {result['data']['dim']}-d vectors, single queries"
    )
    for col in ("items", "index", "setting", "build items/s", f"recall@{k}", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for size in result["sizes"]:
        e = size["exact"]
        table.add_row(
            str(size["items"]),
            "exact",
            "-",
            f"{e['build_items_per_s']:.0f}",
            "1",
            f"{e['p50_ms']:.2f}",
            f"{e['p99_ms']:.2f}",
        )
        for kind, knobs, build_keys in (
            ("ivf", ("nprobe",), ("nlist",)),
            ("ivfpq", ("nprobe", "refine"), ("nlist", "pq_m")),
            ("hnsw", ("ef_search",), ("m", "ef_construction")),
        ):
            for build in size.get(kind, ()):
                for row in build["sweep"]:
                    setting = [f"{key}={build[key]}" for key in build_keys] + [
                        f"{key}={row[key]}" for key in knobs
                    ]
                    table.add_row(
                        "",
                        kind,
                        " ".join(setting),
                        f"{build['build_items_per_s']:.0f}",
                        f"{row[f'recall@{k}']:.3f}",
                        f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                    )
    console.print(table)
    goal = result["goal"]
    if "met" in goal:
        console.print(
            f"goal at {goal['items']} items (p99 < {goal['p99_ms']} ms, recall >= {goal[f'recall@{k}']}): "
            f"{'met' if goal['met'] else 'not met'} by {goal['best']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
