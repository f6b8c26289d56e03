"""``fvl-index``: embed a catalogue into a searchable index folder, and query it.

  fvl-index build --model <checkpoint|folder> --catalogue <data_dir|file.csv|file.jsonl> --out <index_dir>
  fvl-index query <index_dir> --text "black leather sneakers" [-k 10]
  fvl-index query <index_dir> --image query.jpg [--text "in red"]     # image, or image + modification

A build killed part-way continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fashion_vl.search.vector_index import APPROXIMATE_KINDS, INDEX_KINDS, IndexSpec


def _consoles() -> tuple[Console, Console]:
    """stdout and stderr consoles made per command (so COLUMNS is read then); messages never wrap
    mid-path, tables fit the terminal. In a log or a pipe (make demo's output) rich assumes 80 columns
    and folds a table's image paths into a column one character wide; there, tables get a wide line."""
    out = Console(soft_wrap=True)
    if not out.is_terminal:
        out = Console(soft_wrap=True, width=max(out.width, 240))
    return out, Console(stderr=True, soft_wrap=True)


def cmd_build(args: argparse.Namespace) -> int:
    console, err_console = _consoles()
    from fashion_vl.search.build import build_index
    from fashion_vl.search.catalogue import read_catalogue
    from fashion_vl.search.embedder import load_embedder

    spec = IndexSpec(
        kind=args.index,
        exact_max_items=args.exact_max_items,
        approximate=args.approximate,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        pq_m=args.pq_m,
        refine=args.refine,
    )
    catalogue = read_catalogue(
        args.catalogue, dataset=args.dataset, splits=args.splits.split(","), image_root=args.images
    )
    err_console.print(
        f"catalogue {catalogue.source}: {len(catalogue)} items, {len(catalogue.skipped)} rows skipped"
    )
    embedder = load_embedder(_model_source(args.model), device=args.device)
    report = build_index(
        embedder,
        catalogue,
        args.out,
        model_source=_model_source(args.model),
        spec=spec,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        keep_shards=args.keep_shards,
        progress=not args.quiet,
    )
    if report.up_to_date:
        console.print(f"[green]{report.out} is up to date ({report.items} items); nothing to do")
        return 0
    for s in report.skipped[:20]:
        err_console.print(f"[yellow]skipped[/] {s.where}: {s.reason}")
    if len(report.skipped) > 20:
        err_console.print(f"[yellow]... {len(report.skipped) - 20} more in {report.out / 'skipped.jsonl'}")
    console.print(
        f"[green]{report.out}[/]: {report.items} items indexed ({report.index['kind']}), "
        f"{len(report.skipped)} skipped, {report.shards_embedded} shards embedded"
        + (f", {report.shards_reused} reused from an interrupted build" if report.shards_reused else "")
        + f", {report.seconds:.1f} s"
    )
    return 0


def _model_source(model: str) -> str:
    """A local path made absolute (the index records it, and may be queried from another folder)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def cmd_query(args: argparse.Namespace) -> int:
    console, _ = _consoles()
    from fashion_vl.search.embedder import load_embedder
    from fashion_vl.search.searcher import CatalogueIndex, Searcher

    if args.text is None and args.image is None:
        raise SystemExit("fvl-index query: give --text, --image, or both (image + modification text)")
    if args.image is not None and not Path(args.image).is_file():
        raise SystemExit(f"fvl-index query: --image {args.image}: no such file")
    index = CatalogueIndex.open(args.index_dir, nprobe=args.nprobe, ef_search=args.ef_search)
    embedder = load_embedder(args.model or index.model_source, device=args.device)
    searcher = Searcher(index, embedder)
    if args.image is None:
        hits, title = searcher.by_text(args.text, args.k), f"text: {args.text!r}"
    elif args.text is None:
        hits, title = searcher.by_image(args.image, args.k), f"image: {args.image}"
    else:
        hits, title = searcher.by_composed(args.image, args.text, args.k), f"{args.image} + {args.text!r}"
    if args.json:
        print(json.dumps({"query": title, "results": [h.to_dict() for h in hits]}, indent=1))
        return 0
    table = Table(title=f"top {len(hits)} of {len(index)} for {title}")
    for col, justify in (
        ("rank", "right"),
        ("id", "left"),
        ("score", "right"),
        ("text", "left"),
        ("image", "left"),
    ):
        table.add_column(
            col, justify=justify, overflow="fold" if col == "image" else "ellipsis", no_wrap=col == "text"
        )
    for h in hits:
        text = h.text if len(h.text) <= 60 else h.text[:57] + "..."
        table.add_row(str(h.rank), h.id, f"{h.score:.4f}", text, h.image)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="embed a catalogue and write an index folder (resumable)")
    p.add_argument(
        "--model", required=True, help="what fashion_vl.load takes: a checkpoint or a pretrained folder"
    )
    p.add_argument(
        "--catalogue", required=True, help="a data folder, or a .csv / .jsonl with id,image[,text]"
    )
    p.add_argument("--out", required=True, help="the index folder to write")
    p.add_argument(
        "--dataset", default="FashionGen", help="data folder only: which dataset (default FashionGen)"
    )
    p.add_argument(
        "--splits", default="train,val", help="data folder only: comma-separated splits (default train,val)"
    )
    p.add_argument("--images", default=None, help="CSV/JSONL only: folder the image paths are relative to")
    p.add_argument("--index", default="auto", choices=INDEX_KINDS, help="index kind (default auto)")
    p.add_argument(
        "--exact-max-items", type=int, default=IndexSpec.exact_max_items, help="auto: exact up to this size"
    )
    p.add_argument(
        "--approximate", default=IndexSpec.approximate, choices=APPROXIMATE_KINDS, help="auto: above it"
    )
    p.add_argument("--nlist", type=int, default=None, help="IVF / IVF-PQ cells (default 4 sqrt(N))")
    p.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="IVF cells searched per query (default: ivf 32, ivfpq nlist/4)",
    )
    p.add_argument("--pq-m", type=int, default=None, help="IVF-PQ: 4-bit sub-quantizers (default dim / 4)")
    p.add_argument(
        "--refine", type=int, default=IndexSpec.refine, help="IVF-PQ: candidates per result re-scored exactly"
    )
    p.add_argument("--hnsw-m", type=int, default=IndexSpec.hnsw_m, help="HNSW graph degree")
    p.add_argument("--ef-construction", type=int, default=IndexSpec.ef_construction, help="HNSW build beam")
    p.add_argument("--ef-search", type=int, default=IndexSpec.ef_search, help="HNSW query beam")
    p.add_argument("--shard-size", type=int, default=1024, help="rows per shard, the unit of resumption")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--workers", type=int, default=4, help="threads decoding images")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the loader's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace an index of another catalogue or model")
    p.add_argument("--keep-shards", action="store_true", help="keep shards/ and build.json afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("query", help="print the top-k items for a text, an image, or image + text")
    p.add_argument("index_dir")
    p.add_argument("--text", default=None, help="the query text (with --image: the modification text)")
    p.add_argument("--image", default=None, help="a query image file")
    p.add_argument("-k", type=int, default=10, help="results to print (default 10)")
    p.add_argument("--model", default=None, help="load this model instead of the one the index records")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells searched (default: the index's)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW beam (default: the index's)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=cmd_query)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if getattr(args, "k", 1) < 1:
        raise SystemExit("fvl-index query: -k must be >= 1")
    from fashion_vl.search.build import BuildError
    from fashion_vl.search.catalogue import CatalogueError
    from fashion_vl.search.searcher import SearchError

    try:
        return args.fn(args)
    except (BuildError, CatalogueError, SearchError, FileNotFoundError, ImportError) as err:
        _consoles()[1].print(f"[red]fvl-index {args.command}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
