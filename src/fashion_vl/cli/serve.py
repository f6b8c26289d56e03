"""``fvl-serve``: the search service and its web page over an index folder (``fvl-index build``).

  fvl-serve <index_dir> [--host 127.0.0.1] [--port 8000] [--model <source>]

Then open http://127.0.0.1:8000/ (the page) or call the JSON endpoints (docs/search.md). Needs
``pip install 'fashion-vl[serve]'`` (FastAPI, uvicorn, python-multipart, faiss-cpu).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvl-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("index_dir", help="an index folder written by fvl-index build")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="load this model instead of the one the index records")
    p.add_argument("--device", default=None)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10 MB)")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest uploaded image (default 40 MP)"
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells searched (default: the index's)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW beam (default: the index's)")
    p.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="OpenMP threads per search (default 1: requests run concurrently; more threads per query "
        "slowed single queries 4x on a busy 2-core machine, docs/search.md)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        import faiss
        import uvicorn

        from fashion_vl.search.embedder import load_embedder
        from fashion_vl.search.searcher import CatalogueIndex, Searcher
        from fashion_vl.search.service import create_app
    except ImportError as err:
        err_console.print(f"[red]fvl-serve: {err}; install the extra: pip install 'fashion-vl[serve]'")
        return 1
    faiss.omp_set_num_threads(max(1, args.faiss_threads))
    try:
        index = CatalogueIndex.open(args.index_dir, nprobe=args.nprobe, ef_search=args.ef_search)
        embedder = load_embedder(args.model or index.model_source, device=args.device)
        searcher = Searcher(index, embedder)
    except (FileNotFoundError, ImportError, ValueError) as err:
        err_console.print(f"[red]fvl-serve: {err}")
        return 1
    app = create_app(searcher, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    err_console.print(
        f"serving {len(index)} items of {index.root} with {embedder.name} on http://{args.host}:{args.port}/"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
