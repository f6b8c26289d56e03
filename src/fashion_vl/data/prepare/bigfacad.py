"""BigFACAD: a generic product table (JSON lines or CSV) -> ``BigFACAD/{train,val}_info.json`` and images.

The layout of the authors' BigFACAD (and of FACAD, Yang et al. ECCV 2020) is not known to us, so this
converter reads a documented generic table that a few lines of user code can produce from any release.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.formats._text import read_utf8
from fashion_vl.data.prepare._files import add_link_arguments, place_files, safe_relative, write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
BigFACAD / FACAD: a generic product table -> BigFACAD/{train,val}_info.json + images.

The official BigFACAD layout is unknown, so --raw is ONE file describing the products, either JSON
lines (.jsonl/.ndjson/.json: one object per line) or CSV with a header row (.csv), with fields
  images       list of image paths (CSV: one string, paths separated by ';'), relative to --images
  id           integer product id (optional: rows without one are numbered after the largest id given)
  title, description, color   strings (may be empty, but the field must be there)
  split        optional: train (default) or val
Images are copied (or linked, --link) to BigFACAD/images/<same path>. Missing images are skipped and
counted (--strict: an error). attributes_id is left empty: run `fvl-data attributes <out>`
afterwards, then `fvl-data check <out>`.
"""

TEXT_FIELDS = ("title", "description", "color")
SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", default=None, help="folder the image paths are relative to (default: the file's folder)"
    )
    parser.add_argument(
        "--format",
        choices=("auto", "jsonl", "csv"),
        default="auto",
        help="table format (default auto: .csv is CSV, anything else JSON lines)",
    )
    add_link_arguments(parser)


@dataclass
class _Row:
    line: int
    id: int | None
    images: list[str]
    title: str
    description: str
    color: str
    split: str


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every record of the table."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(read_utf8(path, "utf-8-sig"), newline=""))
        for record in reader:
            # cells missing from a short row are None: treat them as absent fields
            yield reader.line_num, {k: v for k, v in record.items() if k is not None and v is not None}
        return
    # one read, so that a byte that is not UTF-8 names the file and line
    for lineno, line in enumerate(read_utf8(path, "utf-8-sig").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}, line {lineno}: not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise DataFormatError(
                f"{path}, line {lineno}: expected a JSON object, found {type(record).__name__}"
            )
        yield lineno, record


def _parse(record: dict[str, Any], path: Path, line: int) -> _Row:
    where = f"{path}, line {line}"

    def require(name: str) -> Any:
        if name not in record:
            raise DataFormatError(f"{where}: required field '{name}' is missing")
        return record[name]

    images = require("images")
    if isinstance(images, str):
        images = [p.strip() for p in images.split(";") if p.strip()]
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise DataFormatError(f"{where}: field 'images' should be a list of paths, found {images!r:.80}")
    if not images:
        raise DataFormatError(f"{where}: field 'images' is empty")
    for p in images:
        if safe_relative(p) is None:
            raise DataFormatError(f"{where}: field 'images': {p!r} must be a relative path inside --images")
    texts = {}
    for name in TEXT_FIELDS:
        value = require(name)
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: field '{name}' should be a string, found {value!r:.80}")
        texts[name] = " ".join(value.split())
    pid = record.get("id")
    if pid == "":
        pid = None
    if pid is not None:
        try:
            if isinstance(pid, bool) or (isinstance(pid, float) and not pid.is_integer()):
                raise ValueError
            pid = int(pid)
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"{where}: field 'id' should be an integer, found {pid!r:.80}") from err
    split = record.get("split") or "train"
    if not isinstance(split, str) or split.strip().lower() not in SPLITS:
        raise DataFormatError(f"{where}: field 'split' should be train or val, found {split!r:.80}")
    return _Row(line, pid, images, split=split.strip().lower(), **texts)


def _read_table(path: Path, fmt: str) -> list[_Row]:
    rows = [_parse(record, path, line) for line, record in _rows(path, fmt)]
    if not rows:
        raise DataFormatError(f"{path}: no products found")
    first_line: dict[int, int] = {}
    for row in rows:
        if row.id is None:
            continue
        if row.id in first_line:
            raise DataFormatError(
                f"{path}, line {row.line}: field 'id': {row.id} is already used on line {first_line[row.id]}"
            )
        first_line[row.id] = row.line
    next_id = max(first_line, default=-1) + 1
    for row in rows:
        if row.id is None:
            row.id, next_id = next_id, next_id + 1
    return rows


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    if not raw.is_file():
        raise MissingDataFileError(
            f"BigFACAD product table not found: {raw}\n--raw should be a JSON-lines or CSV file "
            "(see `fvl-data prepare bigfacad -h`)."
        )
    images_dir = Path(args.images) if args.images else raw.parent
    if not images_dir.is_dir():
        raise MissingDataFileError(f"BigFACAD images folder not found: {images_dir} (--images)")
    fmt = args.format if args.format != "auto" else ("csv" if raw.suffix.lower() == ".csv" else "jsonl")
    rows = _read_table(raw, fmt)

    counts: dict[str, int] = {}
    entries: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    jobs: dict[str, tuple[Path, Path]] = {}
    missing: dict[str, int] = dict.fromkeys(SPLITS, 0)
    dropped = 0
    with staged_output(out, "BigFACAD", overwrite=args.overwrite) as root:
        for row in rows:
            found = []
            for name in row.images:
                rel = str(safe_relative(name))
                if not (images_dir / rel).is_file():
                    if args.strict:
                        raise MissingDataFileError(
                            f"{raw}, line {row.line}: image not found: {images_dir / rel} (--strict)"
                        )
                    missing[row.split] += 1
                    continue
                jobs[rel] = (images_dir / rel, root / "images" / rel)
                found.append(rel)
            if not found:
                dropped += 1
                continue
            entries[row.split].append(
                {
                    "images": found,
                    "id": row.id,
                    "color": row.color,
                    "title": row.title,
                    "description": row.description,
                    "attributes_id": [],
                }
            )
        for split in SPLITS:
            if split == "train" or entries[split]:
                write_entries(root / f"{split}_info.json", entries[split])
                counts[f"BigFACAD/{split}"] = len(entries[split])
                counts[f"BigFACAD/{split}_images"] = sum(len(e["images"]) for e in entries[split])
            if missing[split]:
                counts[f"BigFACAD/{split}_missing_images"] = missing[split]
        if any(missing.values()):
            log.warning(
                "BigFACAD: %d listed images not found under %s; skipped (--strict makes this an error)",
                sum(missing.values()),
                images_dir,
            )
        if dropped:
            log.warning("BigFACAD: %d products without any image found were left out", dropped)
            counts["BigFACAD/products_without_images"] = dropped
        (root / "images").mkdir(exist_ok=True)
        place_files(jobs.values(), args.link, args.workers, progress)
    return counts
