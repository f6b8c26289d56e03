"""Polyvore Outfits: the Vasileva et al. (ECCV 2018) release -> ``PolyvoreOutfits/`` (items, OCIR, images).

**OCIR rule** (reference §3d; mirrors the synthetic generator). Each outfit of ``<variant>/train.json``
and ``<variant>/test.json`` becomes *one* entry: a blank item and the outfit's other items as the
question. One entry per outfit, not one per item, because the reference's files count outfits
(disjoint train 16,995, reference §4), its loader draws one training pair per outfit and ours redraws a
pair of the outfit's items every epoch, so the training blank only fixes the file's shape. The blank
is drawn per outfit from ``Random(f"{seed}/{variant}/{split}/{set_id}")`` (``--seed``), or, with
``--test-blank fitb``, the test blank is the correct answer of the release's fill-in-the-blank
question for that outfit. The test file then gets one ``fake_data: true`` entry (question = blank =
the item) for every other item of the variant's test outfits, so the gallery is every test item.

Items are dropped from outfits (and counted) when their image is missing or their ``category_id`` is
not one of the 153 the reference maps (the OCIR loader needs a category for every item; ``--strict``
makes either an error); outfits left with fewer than two items are dropped. The metadata is copied
without the items of unknown category, because the reader rejects the whole file otherwise.

**Pre-training items** (``train_info.json``): the distinct items of the *disjoint* train outfits by
default (``--pretrain-outfits``). Disjoint train items appear in no disjoint test outfit, so
pre-training cannot see an OCIR test item; and the reference's 71,967 items fit the disjoint train
split (16,995 outfits of about five items) far better than the nondisjoint one (53,306 outfits), an
inference: the authors' file is not documented.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.formats._text import read_utf8
from fashion_vl.data.formats.polyvore import OCIR_VARIANTS, POLYVORE_RAW_CATEGORY_IDS
from fashion_vl.data.images import ImageLoadError, resolve_image
from fashion_vl.data.prepare._files import add_link_arguments, place_files, write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
Polyvore Outfits: the Vasileva et al. (ECCV 2018) release -> PolyvoreOutfits/ (pre-training items, OCIR).

Reads, in --raw: polyvore_item_metadata.json (item id -> {category_id, title, description, url_name,
semantic_category, ...}), categories.csv if present (category id, name, semantic category: only to
name unknown categories), images/<item_id>.jpg, and for each variant (disjoint, nondisjoint)
<variant>/train.json and <variant>/test.json (lists of outfits {set_id, items: [{item_id, index}]});
with --test-blank fitb also <variant>/fill_in_blank_test.json. valid.json and compatibility_*.txt
are not read. Writes PolyvoreOutfits/:
  train_info.json       one entry per distinct item of the train outfits of --pretrain-outfits
                        (default disjoint: none of them is in a disjoint test outfit), as
                        {images: "<id>.jpg", id, title (url_name if the title is empty),
                        description, attributes_id: []}
  polyvore_item_metadata.json  the release's, without items whose category_id is not one of the
                        153 mapped ids (reported)
  ocir_<variant>_{train,test}.json  one entry per outfit: {question: the other item ids, blank};
                        the blank drawn per outfit with --seed (test: or the FITB answer, with
                        --test-blank fitb); test entries have fake_data false, then one fake_data
                        entry (question = blank = item) per remaining test item, for the gallery
  images/<id>.jpg       copied or linked (--link) for every item written
Items whose image is missing or whose category is unknown are dropped and counted (--strict: an
error); outfits left with fewer than two items are dropped. Then run `fvl-data attributes <out>` and
`fvl-data check <out>`.
"""

SPLITS = ("train", "test")
PRETRAIN_CHOICES = ("disjoint", "nondisjoint", "both")
KNOWN_CATEGORIES = frozenset(POLYVORE_RAW_CATEGORY_IDS)


def _variants(value: str) -> tuple[str, ...]:
    variants = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not variants or any(v not in OCIR_VARIANTS for v in variants):
        raise argparse.ArgumentTypeError(
            f"variants must be a comma-separated subset of {','.join(OCIR_VARIANTS)}"
        )
    return variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variants",
        type=_variants,
        default=OCIR_VARIANTS,
        help="comma-separated OCIR variants to write (default disjoint,nondisjoint)",
    )
    parser.add_argument(
        "--pretrain-outfits",
        choices=PRETRAIN_CHOICES,
        default="disjoint",
        help="which variant's train outfits give the pre-training items of train_info.json (default "
        "disjoint: none is in a disjoint test outfit; nondisjoint train outfits may share items with "
        "any test split)",
    )
    parser.add_argument(
        "--test-blank",
        choices=("seeded", "fitb"),
        default="seeded",
        help="the blank of each test outfit: drawn with --seed (default) or the correct answer of the "
        "release's fill_in_blank_test.json question for that outfit",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-outfit blank draw (default 0)")
    add_link_arguments(parser)


@dataclass
class Outfit:
    set_id: str
    items: list[str]  # item ids in the order of the release (by ``index``)
    by_index: dict[int, str]


def _load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise MissingDataFileError(
            f"Polyvore Outfits {what} not found: {path}\n--raw should be the release folder holding "
            "polyvore_item_metadata.json, images/ and disjoint/ + nondisjoint/ with train.json, test.json"
        )
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err


def _field(entry: Any, name: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataFormatError(f"{path}: {where} is {type(entry).__name__}, expected an object")
    if name not in entry:
        raise DataFormatError(f"{path}: {where}: required field '{name}' is missing")
    return entry[name]


def _item_id(value: Any, path: Path, where: str) -> str:
    item = str(value)
    if not item.isdigit():
        raise DataFormatError(f"{path}: {where}: field 'item_id' {value!r} is not a digit string")
    return item


def read_outfits(path: Path) -> list[Outfit]:
    """``<variant>/<split>.json``: outfits ``{set_id, items: [{item_id, index}]}``, items by index."""
    data = _load(path, "outfit file")
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of outfits, found {type(data).__name__}")
    outfits = []
    for i, entry in enumerate(data):
        set_id = str(_field(entry, "set_id", path, f"outfit {i}"))
        items = _field(entry, "items", path, f"outfit {i} (set_id={set_id})")
        if not isinstance(items, list):
            raise DataFormatError(f"{path}: outfit {i} (set_id={set_id}): field 'items' should be a list")
        by_index = {}
        for j, item in enumerate(items):
            where = f"outfit {i} (set_id={set_id}), item {j}"
            item_id = _item_id(_field(item, "item_id", path, where), path, where)
            index = item.get("index", j + 1)
            by_index[int(index)] = item_id
        ordered = list(dict.fromkeys(by_index[k] for k in sorted(by_index)))
        outfits.append(Outfit(set_id, ordered, by_index))
    return outfits


def fitb_blanks(path: Path, outfits: list[Outfit]) -> dict[str, str]:
    """set_id -> the correct answer item of its fill-in-the-blank question.

    Questions and answers name items as ``<set_id>_<index>``; the correct answer is the one whose
    set_id is the question's.
    """
    data = _load(path, "fill-in-the-blank file")
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of questions, found {type(data).__name__}")
    by_set = {o.set_id: o for o in outfits}
    blanks = {}
    for i, q in enumerate(data):
        question = _field(q, "question", path, f"question {i}")
        answers = _field(q, "answers", path, f"question {i}")
        if not question or not isinstance(question, list) or not isinstance(answers, list):
            raise DataFormatError(f"{path}: question {i}: 'question' and 'answers' should be non-empty lists")
        set_id = str(question[0]).rsplit("_", 1)[0]
        right = [a for a in answers if str(a).rsplit("_", 1)[0] == set_id]
        if len(right) != 1 or set_id not in by_set:
            raise DataFormatError(
                f"{path}: question {i}: expected one answer from outfit {set_id} of the test outfits, "
                f"found {len(right)}"
            )
        try:
            blanks[set_id] = by_set[set_id].by_index[int(str(right[0]).rsplit("_", 1)[1])]
        except (KeyError, ValueError, IndexError):
            raise DataFormatError(
                f"{path}: question {i}: answer {right[0]!r} names no item of its outfit"
            ) from None
    return blanks


def read_categories_csv(path: Path) -> dict[str, str]:
    """``categories.csv`` rows ``id,name,semantic category`` as id -> "name (semantic)"; {} if absent."""
    if not path.is_file():
        return {}
    names = {}
    for row in csv.reader(io.StringIO(read_utf8(path), newline="")):
        if len(row) >= 2 and row[0].strip().isdigit():
            names[row[0].strip()] = " / ".join(x.strip() for x in row[1:] if x.strip())
    return names


class _Items:
    """Which item ids can be written: known category, image found (once per item)."""

    def __init__(self, metadata: dict[str, Any], image_dir: Path, strict: bool) -> None:
        self.metadata = metadata
        self.image_dir = image_dir
        self.strict = strict
        self.images: dict[str, Path] = {}
        self.problems: dict[str, str] = {}  # item -> "no_metadata" | "unknown_category" | "missing_image"

    def ok(self, item: str, where: str) -> bool:
        if item in self.images:
            return True
        if item not in self.problems:
            self.problems[item] = self._check(item)
        problem = self.problems[item]
        if problem and self.strict:
            raise DataFormatError(f"{where}: item {item}: {problem.replace('_', ' ')} (--strict)")
        return not problem

    def _check(self, item: str) -> str:
        info = self.metadata.get(item)
        if not isinstance(info, dict):
            return "no_metadata"
        if category_of(info) not in KNOWN_CATEGORIES:
            return "unknown_category"
        try:
            self.images[item] = resolve_image(self.image_dir, f"{item}.jpg")
        except ImageLoadError:
            return "missing_image"
        return ""


def category_of(info: dict[str, Any]) -> int | None:
    try:
        return int(info.get("category_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _blank(outfit: Outfit, seed: int, variant: str, split: str) -> str:
    return random.Random(f"{seed}/{variant}/{split}/{outfit.set_id}").choice(outfit.items)


def ocir_entries(
    outfits: list[Outfit], split: str, variant: str, seed: int, blanks: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """OCIR entries of one file (see the module docstring) and the number of real (non-fake) entries."""
    entries = []
    used = set()
    for outfit in outfits:
        blank = (blanks or {}).get(outfit.set_id)
        if blank not in outfit.items:  # no FITB answer, or its item was dropped
            blank = _blank(outfit, seed, variant, split)
        entry: dict[str, Any] = {"question": [i for i in outfit.items if i != blank], "blank": blank}
        if split == "test":
            entry["fake_data"] = False
        entries.append(entry)
        used.add(blank)
    queries = len(entries)
    if split == "test":
        rest = sorted({i for o in outfits for i in o.items} - used, key=int)
        entries += [{"question": [i], "blank": i, "fake_data": True} for i in rest]
    return entries, queries


def _title(info: dict[str, Any]) -> str:
    title = str(info.get("title") or "").strip()
    if not title:
        title = str(info.get("url_name") or "").replace("-", " ").strip()
    return " ".join(title.split())


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    variants = args.variants
    meta_path = raw / "polyvore_item_metadata.json"
    metadata = _load(meta_path, "item metadata")
    if not isinstance(metadata, dict):
        raise DataFormatError(f"{meta_path}: expected an object mapping item id to metadata")
    for item, info in metadata.items():
        if not str(item).isdigit():
            raise DataFormatError(f"{meta_path}: item id {item!r} is not a digit string")
        _field(info, "category_id", meta_path, f"item {item!r}")
    image_dir = raw / "images"
    if not image_dir.is_dir():
        raise MissingDataFileError(f"Polyvore Outfits image folder not found: {image_dir}")
    pretrain_variants = (
        ["disjoint", "nondisjoint"] if args.pretrain_outfits == "both" else [args.pretrain_outfits]
    )
    needed = {(v, s) for v in variants for s in SPLITS} | {(v, "train") for v in pretrain_variants}
    outfits = {(v, s): read_outfits(raw / v / f"{s}.json") for v, s in sorted(needed)}
    items = _Items(metadata, image_dir, args.strict)

    counts: dict[str, int] = {}
    files: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        blanks = None
        if args.test_blank == "fitb":
            blanks = fitb_blanks(raw / variant / "fill_in_blank_test.json", outfits[(variant, "test")])
        for split in SPLITS:
            path = raw / variant / f"{split}.json"
            kept, dropped_items = [], 0
            for outfit in outfits[(variant, split)]:
                good = [i for i in outfit.items if items.ok(i, f"{path}: outfit {outfit.set_id}")]
                dropped_items += len(outfit.items) - len(good)
                if len(good) >= 2:
                    kept.append(Outfit(outfit.set_id, good, outfit.by_index))
            entries, queries = ocir_entries(
                kept, split, variant, args.seed, blanks if split == "test" else None
            )
            files[f"ocir_{variant}_{split}.json"] = entries
            label = f"PolyvoreOutfits/ocir_{variant}_{split}"
            counts[f"{label}_outfits"] = queries
            if split == "test":
                counts[f"{label}_gallery"] = len({e["blank"] for e in entries})
            if dropped_items:
                counts[f"{label}_dropped_items"] = dropped_items
            if len(kept) < len(outfits[(variant, split)]):
                counts[f"{label}_dropped_outfits"] = len(outfits[(variant, split)]) - len(kept)

    train_items = []
    for variant in pretrain_variants:
        path = raw / variant / "train.json"
        for outfit in outfits[(variant, "train")]:
            train_items += [i for i in outfit.items if items.ok(i, f"{path}: outfit {outfit.set_id}")]
    train_info = [
        {"images": f"{i}.jpg", "id": int(i), "title": _title(metadata[i]),
         "description": " ".join(str(metadata[i].get("description") or "").split()), "attributes_id": []}
        for i in sorted(set(train_items), key=int)
    ]  # fmt: skip
    counts["PolyvoreOutfits/train_info_items"] = len(train_info)

    unknown_items = {i for i, info in metadata.items() if category_of(info) not in KNOWN_CATEGORIES}
    if unknown_items:
        names = read_categories_csv(raw / "categories.csv")
        by_category = Counter(str(metadata[i].get("category_id")) for i in unknown_items)
        shown = ", ".join(
            f"{c}{' (' + names[c] + ')' if c in names else ''}: {n}" for c, n in by_category.most_common(10)
        )
        log.warning(
            "Polyvore Outfits: %d items have a category_id outside the 153 mapped ones and are left out "
            "of the metadata and the OCIR files: %s",
            len(unknown_items),
            shown,
        )
        counts["PolyvoreOutfits/items_unknown_category"] = len(unknown_items)
    problems = Counter(p for p in items.problems.values() if p)
    for problem, n in sorted(problems.items()):
        counts[f"PolyvoreOutfits/outfit_items_{problem}"] = n
        log.warning(
            "Polyvore Outfits: %d outfit items dropped: %s (--strict makes this an error)",
            n,
            problem.replace("_", " "),
        )

    with staged_output(out, "PolyvoreOutfits", overwrite=args.overwrite) as root:
        for name, entries in files.items():
            write_entries(root / name, entries)
        write_entries(root / "train_info.json", train_info)
        kept_meta = {i: info for i, info in metadata.items() if i not in unknown_items}
        with (root / "polyvore_item_metadata.json").open("w", encoding="utf-8") as f:
            json.dump(kept_meta, f, ensure_ascii=False)
        written = set(train_items) | {
            i for entries in files.values() for e in entries for i in (*e["question"], e["blank"])
        }
        jobs = [(items.images[i], root / "images" / f"{i}{items.images[i].suffix.lower()}")
                for i in sorted(written, key=int)]  # fmt: skip
        (root / "images").mkdir()
        place_files(jobs, args.link, args.workers, progress)
    counts["PolyvoreOutfits/images"] = len(jobs)
    return counts
