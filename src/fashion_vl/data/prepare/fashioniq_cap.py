"""Fashion-IQ-Cap: the UniFashion authors' LLaVA captions of FashionIQ images, cleaned.

The files (``next_llava.<split>.<category>.caption.json``, a JSON list of ``{image, caption,
text_guidance}``, one entry per image of the FashionIQ split) are written back under the same names in
``<out>/FashionIQ-Cap/`` after :func:`clean_entries`:

* whitespace: the caption and the text guidance are stripped (captions start with a newline) and runs
  of whitespace inside become one space;
* exact duplicates (same image, caption and guidance after that) are removed, the first one kept;
* empty captions are dropped;
* *degenerate* captions are dropped: LLaVA sometimes loops until its length limit ("fitted, fitted,
  fitted, ..." or the same two sentences over and over). The rule (the reader's,
  :func:`~fashion_vl.data.formats.fashioniq_cap.repeat_share`) is the share
  of the caption's word n-grams (default trigrams) that already occurred earlier in it; a caption
  whose share is above ``max_repeat_share`` (default 0.4) is degenerate. On the released val
  captions the median share is 0, 95 % of captions are below 0.1, and about 2.5 % are above 0.4
  (those loop; 0.25-0.4 are long but still varied lists of negations).

The reader applies the same rule at run time (``data.drop_degenerate_captions``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError, get_field
from fashion_vl.data.formats._text import read_utf8
from fashion_vl.data.formats.fashioniq_cap import (
    DEFAULT_MAX_REPEAT_SHARE,
    DEFAULT_NGRAM,
    is_degenerate,
    normalize_space,
)
from fashion_vl.data.prepare._files import write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fashion-IQ-Cap: the UniFashion authors' LLaVA captions of FashionIQ images -> FashionIQ-Cap/, cleaned.

Reads next_llava.<split>.<category>.caption.json in --raw (the dataset/ folder of the UniFashion
repository, github.com/xiangyu-mm/UniFashion) for the categories dress, shirt, toptee and the splits
given by --splits (default train,val): each a JSON list of {image: <asin>, caption, text_guidance}.
Writes the same file names into FashionIQ-Cap/ with captions and guidance stripped of surrounding
whitespace, exact duplicate entries removed, empty captions dropped and degenerate captions dropped:
a caption is degenerate when more than --max-repeat-share (default 0.4) of its word n-grams
(--ngram, default 3) repeat an n-gram seen earlier in it ("fitted, fitted, fitted, ..."). Prints the
kept / dropped counts per file. Images are not copied: the captions name FashionIQ asins, the images
come with `fvl-data prepare fashioniq`.
"""

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val")


def caption_file(split: str, category: str) -> str:
    return f"next_llava.{split}.{category}.caption.json"


@dataclass
class CleanStats:
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    empty: int = 0
    degenerate: int = 0


def clean_entries(
    entries: Iterable[dict[str, Any]],
    max_repeat_share: float = DEFAULT_MAX_REPEAT_SHARE,
    n: int = DEFAULT_NGRAM,
) -> tuple[list[dict[str, Any]], CleanStats]:
    """Fashion-IQ-Cap entries with whitespace normalised, duplicates, empty and degenerate captions
    removed (in that order; see the module docstring). Other fields of an entry are kept."""
    stats = CleanStats()
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for entry in entries:
        stats.read += 1
        entry = dict(entry)
        entry["caption"] = normalize_space(entry["caption"])
        entry["text_guidance"] = normalize_space(entry.get("text_guidance", ""))
        key = (entry["image"], entry["caption"], entry["text_guidance"])
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        if not entry["caption"]:
            stats.empty += 1
        elif is_degenerate(entry["caption"], max_repeat_share, n):
            stats.degenerate += 1
        else:
            kept.append(entry)
    stats.kept = len(kept)
    return kept, stats


def read_caption_file(path: Path) -> list[dict[str, Any]]:
    """A Fashion-IQ-Cap file, every entry checked for ``image``, ``caption`` and ``text_guidance``."""
    if not path.is_file():
        raise MissingDataFileError(
            f"Fashion-IQ-Cap caption file not found: {path}\n--raw should be the UniFashion repository's "
            "dataset/ folder (next_llava.<split>.<category>.caption.json); choose splits with --splits"
        )
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}: entry {i} is {type(entry).__name__}, expected an object")
        for name in ("image", "caption", "text_guidance"):
            get_field(entry, name, "str", path, i)
    return data


def _splits(value: str) -> tuple[str, ...]:
    splits = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise argparse.ArgumentTypeError(f"splits must be a comma-separated subset of {','.join(SPLITS)}")
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--splits", type=_splits, default=SPLITS, help="comma-separated subset of train,val (default both)"
    )
    parser.add_argument(
        "--max-repeat-share",
        type=float,
        default=DEFAULT_MAX_REPEAT_SHARE,
        help="drop a caption when more than this share of its word n-grams are repeats "
        f"(default {DEFAULT_MAX_REPEAT_SHARE}; 1 keeps every caption)",
    )
    parser.add_argument(
        "--ngram", type=int, default=DEFAULT_NGRAM, help=f"n of the n-grams (default {DEFAULT_NGRAM})"
    )


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    names = [caption_file(s, c) for s in args.splits for c in CATEGORIES]
    files = {name: read_caption_file(raw / name) for name in names}
    counts: dict[str, int] = {}
    with staged_output(out, "FashionIQ-Cap", overwrite=args.overwrite) as root:
        for done, (name, entries) in enumerate(files.items(), start=1):
            kept, stats = clean_entries(entries, args.max_repeat_share, args.ngram)
            write_entries(root / name, kept)
            label = "FashionIQ-Cap/" + name.removeprefix("next_llava.").removesuffix(".caption.json")
            counts[f"{label}_kept"] = stats.kept
            for what in ("duplicates", "empty", "degenerate"):
                if getattr(stats, what):
                    counts[f"{label}_dropped_{what}"] = getattr(stats, what)
            several = sum(n > 1 for n in Counter(e["image"] for e in kept).values())
            if several:
                counts[f"{label}_images_with_several_captions"] = several
            progress(done, len(files))
    return counts
