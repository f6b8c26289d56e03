"""``fvl-data``: data folder tools.

Subcommands:
  synth   write procedurally generated datasets in the real on-disk formats
  check   validate a data folder (formats, images, ids, splits) and print a summary
  attributes  mine a pseudo-attribute vocabulary from the product texts and rewrite attributes_id
  prepare  convert an official dataset release into the data folder layout (fvl-data prepare <dataset> -h)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fashion_vl.data.formats.products import NUM_PSEUDO_ATTRIBUTES
from fashion_vl.utils.atomic import disk_full_cause, disk_full_error
from fashion_vl.utils.rich_utils import print_table, results_table

console = Console(stderr=True)


def cmd_synth(args: argparse.Namespace) -> int:
    from fashion_vl.data.synth import SIZES, generate

    out = Path(args.out)
    manifest_path = out / "synthetic_manifest.json"
    if args.skip_existing and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        from fashion_vl.data.synth.generate import GENERATOR_VERSION

        wanted = (args.seed, args.size, args.image_size, GENERATOR_VERSION, args.image_store)
        if (
            manifest.get("seed"),
            manifest.get("size"),
            manifest.get("image_size"),
            manifest.get("version"),
            manifest.get("image_store", "files"),
        ) == wanted:
            console.print(
                f"[green]{out} already holds synthetic data (size={args.size}, seed={args.seed}); skipping"
            )
            return 0
        args.overwrite = True
    if args.size not in SIZES:
        console.print(f"[red]--size must be one of {sorted(SIZES)}")
        return 2
    with Progress(
        TextColumn("synth images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("render", total=None)
        manifest = generate(
            out,
            size=args.size,
            seed=args.seed,
            image_size=args.image_size,
            workers=args.workers,
            overwrite=args.overwrite,
            only=args.only.split(",") if args.only else None,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            image_store=args.image_store,
        )
    rows = [{"dataset/split": k, "count": v} for k, v in manifest["counts"].items()]
    print_table(results_table(f"synthetic data in {out} (seed {args.seed}, {args.size})", rows))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fashion_vl.data.check import check_data_dir

    try:
        reports = check_data_dir(
            args.data_dir,
            decode=not args.no_decode,
            workers=args.workers,
            num_attributes=args.num_attributes,
            max_pixels=args.max_image_pixels or None,
        )
    except FileNotFoundError as err:
        console.print(f"[red]{err}")
        return 2
    rows = []
    for r in reports:
        status = "absent" if r.absent else ("ok" if r.ok else f"{len(r.problems)} problem(s)")
        rows.append(
            dict(
                dataset=r.dataset,
                split=r.split,
                entries=r.entries,
                images=r.images,
                missing=r.missing,
                corrupt=r.corrupt,
                oversized=len(r.oversized),
                empty_captions=len(r.empty_captions),
                status=status,
            )
        )
    print_table(results_table(f"fvl-data check {args.data_dir}", rows))
    failed = [r for r in reports if not r.absent and not r.ok]
    for r in failed:
        for p in r.problems:
            console.print(f"[red]{r.dataset}/{r.split}[/red]: {p}", soft_wrap=True)
        for p in r.oversized:  # every one: training skips them
            console.print(
                f"{r.dataset}/{r.split}: oversized: {p}",
                style="red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    for r in reports:
        if r.empty_captions:
            ids = ", ".join(map(str, r.empty_captions[:10])) + (", ..." if len(r.empty_captions) > 10 else "")
            console.print(
                f"warning: {r.dataset}/{r.split}: {len(r.empty_captions)} product(s) with an empty caption "
                f"(no title, no description): {ids}; training keeps them unless data.empty_captions=skip",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if all(r.absent for r in reports):
        console.print(f"[red]no dataset found under {args.data_dir}: is it the datasets/ folder?")
        return 1
    return 1 if failed else 0


def cmd_attributes(args: argparse.Namespace) -> int:
    from fashion_vl.data.prepare.attributes import write_attributes

    try:
        summary = write_attributes(
            args.data_dir,
            datasets=args.datasets.split(","),
            vocab_size=args.vocab_size,
            min_count=args.min_count,
            max_ngram=args.max_ngram,
            out_vocab=args.out_vocab,
            backup=args.backup,
            dry_run=args.dry_run,
        )
    except (FileNotFoundError, ValueError) as err:  # DataFormatError is a ValueError
        console.print(str(err), style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    print_table(results_table(f"fvl-data attributes {args.data_dir}", [s.row() for s in summary.splits]))
    head = ", ".join(summary.vocabulary[:12]) + (", ..." if summary.vocab_size > 12 else "")
    saved = "dry run: nothing written" if summary.dry_run else f"saved to {summary.vocab_path}"
    for line in (
        f"{summary.vocab_size} attributes (min count {args.min_count}, up to {args.max_ngram}-grams), {saved}",
        f"most frequent: {head}",
        f"ids are < {summary.vocab_size}: train with data.num_attributes (the PAC head's num_classes) "
        f">= {summary.vocab_size}; the reference head has {NUM_PSEUDO_ATTRIBUTES}",
    ):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from fashion_vl.data.formats._json import DataFormatError
    from fashion_vl.data.prepare import load_converter
    from fashion_vl.data.prepare.staging import OutputExistsError

    converter = load_converter(args.dataset)
    with Progress(
        TextColumn(f"prepare {args.dataset}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("convert", total=None)
        try:
            counts = converter.convert(
                Path(args.raw),
                Path(args.out),
                args,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (FileNotFoundError, DataFormatError, OutputExistsError, ImportError) as err:
            bar.stop()
            console.print(str(err), style="red", markup=False, highlight=False, soft_wrap=True)
            return 2
    rows = [{"dataset/split": k, "count": v} for k, v in counts.items()]
    print_table(results_table(f"fvl-data prepare {args.dataset}: {args.raw} -> {args.out}", rows))
    return 0


def _add_prepare_parsers(sub: argparse._SubParsersAction) -> None:
    from fashion_vl.data.prepare import CONVERTERS, load_converter

    prepare = sub.add_parser(
        "prepare",
        help="convert an official dataset release into the data folder layout",
        description="Convert an official release into <out>/<Dataset>/ in the layout the loaders read. "
        "Output is built in a temporary folder and moved into place only when complete.",
    )
    datasets = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in CONVERTERS:
        try:
            module = load_converter(name)
        except ModuleNotFoundError as err:
            if not err.name or not err.name.startswith("fashion_vl.data.prepare"):
                raise
            continue  # converter not written yet
        p = datasets.add_parser(
            name,
            help=module.DESCRIPTION.splitlines()[0],
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--raw", required=True, help="the official release folder (or file) to read")
        p.add_argument("--out", required=True, help="the datasets/ folder to write into (paths.data_dir)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
        module.add_arguments(p)
        p.set_defaults(fn=cmd_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write synthetic datasets in the real formats")
    p.add_argument("--out", required=True, help="the datasets/ folder to write (paths.data_dir)")
    p.add_argument("--size", default="small", help="tiny | small | medium (default: small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="side of the square images (default 128); try-on pictures are this high, 3/4 as wide",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="render processes (default: CPU count, at most 8)"
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of fashiongen,bigfacad,fashion200k,polyvore,fashioniq (the default: "
        "all five), plus the optional vitonhd (try-on; written only when named)",
    )
    p.add_argument(
        "--image-store",
        choices=("files", "array", "both"),
        default="files",
        help="FashionGen's images as PNG files (default), as the uint8 array store that `fvl-data prepare "
        "fashiongen --image-store array` writes (read with data.image_store=array), or both",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    p.add_argument(
        "--skip-existing", action="store_true", help="do nothing if the folder holds the same size/seed"
    )
    p.set_defaults(fn=cmd_synth)
    p = sub.add_parser("check", help="validate a data folder and print a per-dataset summary")
    p.add_argument("data_dir", help="the datasets/ folder (paths.data_dir)")
    p.add_argument("--no-decode", action="store_true", help="only check that images exist (fast)")
    p.add_argument("--workers", type=int, default=8, help="threads reading images")
    p.add_argument(
        "--num-attributes",
        type=int,
        default=NUM_PSEUDO_ATTRIBUTES,
        help="size of the pseudo-attribute vocabulary",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=40_000_000,
        help="images with more pixels fail the check and are listed (training skips them; "
        "data.max_image_pixels); 0: no limit",
    )
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser(
        "attributes",
        help="mine pseudo-attributes (PAC targets) from the product texts and rewrite attributes_id",
        description="Fit a vocabulary of frequent attribute words and n-grams on the train splits' texts "
        "(see fashion_vl.data.prepare.attributes), save it as <data_dir>/attributes_vocab.json and rewrite "
        "attributes_id in every split of the chosen product datasets; other fields are kept.",
    )
    p.add_argument("data_dir", help="the datasets/ folder (paths.data_dir)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=NUM_PSEUDO_ATTRIBUTES,
        help=f"most attributes to keep (default {NUM_PSEUDO_ATTRIBUTES}, the reference PAC head); with another value the PAC "
        "head's num_classes (data.num_attributes) must match",
    )
    p.add_argument(
        "--min-count", type=int, default=5, help="keep attributes found in >= this many train products"
    )
    p.add_argument("--max-ngram", type=int, default=2, help="longest attribute in words (default 2)")
    p.add_argument(
        "--datasets",
        default="fashiongen,bigfacad,fashion200k,polyvore",
        help="comma-separated subset of fashiongen,bigfacad,fashion200k,polyvore (absent ones are skipped)",
    )
    p.add_argument(
        "--out-vocab", default=None, help="vocabulary file (default <data_dir>/attributes_vocab.json)"
    )
    p.add_argument("--backup", action="store_true", help="keep each original file as <name>.orig.json")
    p.add_argument("--dry-run", action="store_true", help="compute and print the summary, write nothing")
    p.set_defaults(fn=cmd_attributes)
    _add_prepare_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as err:
        cause = disk_full_cause(err)  # a full disk: one line naming where, not a traceback
        if cause is None:
            raise
        target = cause.filename or getattr(args, "out", None) or getattr(args, "data_dir", None) or "."
        command = args.fn.__name__.removeprefix("cmd_")
        console.print(
            f"fvl-data {command}: {disk_full_error(target, cause)}",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
