"""FashionIQ: the official release (Wu et al., CVPR 2021) -> ``FashionIQ/captions``, ``image_splits``, images.

Train caption files are copied entry by entry. Val entries gain the three fields the evaluation reads
(reference §3b/§4): ``garment_class`` (0 dress, 1 shirt, 2 toptee), ``fake_data`` and ``target_id``.

**target_id rule.** The val images are numbered from 0 category by category (dress, shirt,
toptee), within a category in sorted asin order, over the category's val image split plus any val
caption target missing from it: ``target_id`` is that position. One image has one id in every entry
of its category, ids never repeat across categories, and they do not depend on entry order. An asin
in two categories' splits (121 are in both the shirt and the toptee val splits, going by the
UniFashion captions, which list every val image) gets one id per
category: the evaluation keeps the first gallery row of each ``target_id`` over all categories before
ranking each category against its own gallery, so a shared id would drop the image from the second
category's gallery (the reference dedupes per category, where both conventions agree).

**Gallery rule.** After the real entries of ``cap.<category>.val.json`` come one ``fake_data: true``
entry per asin of ``split.<category>.val.json`` that is no real entry's target (candidate = target =
that asin, captions ``["fake", "fake"]``, as the synthetic generator writes them), so the evaluation
gallery, the distinct ``target_id``s of a category, is that category's whole val image split.

Entries whose candidate or target image is not found are dropped and counted (``--strict``: an
error), so the written folder passes ``fvl-data check``; split images that are not found are left out
of the gallery, and counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError, get_field
from fashion_vl.data.formats._text import read_utf8
from fashion_vl.data.images import ImageLoadError, resolve_image
from fashion_vl.data.prepare._files import add_link_arguments, place_files, write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
FashionIQ: the official release (github.com/XiaoxiaoGuo/fashion-iq) -> FashionIQ/ (captions, image_splits, images).

Reads, in --raw, captions/cap.<category>.<split>.json (a JSON list of {candidate, target, captions})
and image_splits/split.<category>.<split>.json (a JSON list of asins) for the categories dress,
shirt, toptee and the splits train and val (test files, if present, are ignored: the reference
evaluates on val), and images/<asin>.jpg (any image extension; another folder with --images) as
downloaded from the release's asin-to-URL lists. Writes FashionIQ/captions/cap.<category>.{train,val}.json,
copies image_splits/ and copies (or links, --link) every image an entry names to
FashionIQ/images/<asin>.<ext>. Train entries are kept as they are. Val entries gain garment_class
(0 dress, 1 shirt, 2 toptee), fake_data (false) and target_id: val images numbered from 0 category by
category (dress, shirt, toptee), sorted by asin within one (its val split plus any caption target
missing from it), so an image has one id in its category and ids never repeat across categories.
Then one fake_data entry per val split asin that is nobody's target (candidate = target = the asin,
captions ["fake", "fake"]) puts the whole val split into the gallery. Entries with an image that is
not found are dropped and counted (--strict: an error). Run `fvl-data check <out>` afterwards.
"""

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val")
GARMENT_CLASS = {category: i for i, category in enumerate(CATEGORIES)}
FAKE_CAPTIONS = ["fake", "fake"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", default=None, help="folder holding <asin>.jpg (default: <raw>/images)")
    add_link_arguments(parser)


def _load_list(path: Path, what: str) -> list[Any]:
    if not path.is_file():
        raise MissingDataFileError(
            f"FashionIQ {what} file not found: {path}\n--raw should be the official release folder "
            "holding captions/cap.<category>.<split>.json and image_splits/split.<category>.<split>.json"
        )
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list, found {type(data).__name__}")
    return data


def read_captions(path: Path) -> list[dict[str, Any]]:
    """``cap.<category>.<split>.json`` checked: candidate and target asins, a non-empty caption list."""
    entries = _load_list(path, "captions")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}: entry {i} is {type(entry).__name__}, expected an object")
        captions = get_field(entry, "captions", "list[str]", path, i)
        if not captions:
            raise DataFormatError(f"{path}: entry {i}: field 'captions' is empty")
        out.append(
            {
                "candidate": get_field(entry, "candidate", "str", path, i),
                "target": get_field(entry, "target", "str", path, i),
                "captions": list(captions),
            }
        )
    return out


def read_split(path: Path) -> list[str]:
    asins = _load_list(path, "image split")
    bad = [i for i, a in enumerate(asins) if not isinstance(a, str)]
    if bad:
        raise DataFormatError(f"{path}: entry {bad[0]} is {asins[bad[0]]!r:.40}, expected an asin string")
    return asins


def target_ids(
    val_splits: dict[str, list[str]], val_captions: dict[str, list[dict[str, Any]]]
) -> dict[tuple[str, str], int]:
    """``(category, asin) -> target_id``: val images numbered category by category (in
    :data:`CATEGORIES` order), sorted by asin within a category (its split and its caption targets)."""
    ids: dict[tuple[str, str], int] = {}
    for category in CATEGORIES:
        asins = set(val_splits[category]) | {e["target"] for e in val_captions[category]}
        for asin in sorted(asins):
            ids[(category, asin)] = len(ids)
    return ids


class _Images:
    """Finds ``<asin>.<ext>`` in the raw image folder once per asin, remembering the answer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.found: dict[str, Path | None] = {}

    def __call__(self, asin: str) -> Path | None:
        if asin not in self.found:
            try:
                self.found[asin] = resolve_image(self.folder, asin + ".jpg")
            except ImageLoadError:
                self.found[asin] = None
        return self.found[asin]

    @property
    def missing(self) -> list[str]:
        return sorted(a for a, p in self.found.items() if p is None)


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    captions = {
        (c, s): read_captions(raw / "captions" / f"cap.{c}.{s}.json") for c in CATEGORIES for s in SPLITS
    }
    splits = {c: read_split(raw / "image_splits" / f"split.{c}.val.json") for c in CATEGORIES}
    image_dir = Path(args.images) if args.images else raw / "images"
    if not image_dir.is_dir():
        raise MissingDataFileError(
            f"FashionIQ image folder not found: {image_dir}\nDownload the images (the release's "
            "image_url files) into <raw>/images/<asin>.jpg or pass --images"
        )
    ids = target_ids(splits, {c: captions[(c, "val")] for c in CATEGORIES})
    find = _Images(image_dir)

    def has_images(entry: dict[str, Any], where: str) -> bool:
        for key in ("candidate", "target"):
            if find(entry[key]) is None:
                if args.strict:
                    raise MissingDataFileError(
                        f"{where}: {key} image {entry[key]} not found in {image_dir} (--strict)"
                    )
                return False
        return True

    counts: dict[str, int] = {}
    written: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (category, split), entries in captions.items():
        where = str(raw / "captions" / f"cap.{category}.{split}.json")
        kept = [e for e in entries if has_images(e, where)]
        dropped = len(entries) - len(kept)
        if split == "train":
            counts[f"FashionIQ/{category}.train"] = len(kept)
        else:
            garment = GARMENT_CLASS[category]
            for e in kept:
                e.update(target_id=ids[(category, e["target"])], fake_data=False, garment_class=garment)
            queries = len(kept)
            targets = {e["target"] for e in kept}
            rest = [a for a in dict.fromkeys(splits[category]) if a not in targets]
            fake = [a for a in rest if find(a) is not None]
            if args.strict and len(fake) < len(rest):
                lost = next(a for a in rest if find(a) is None)
                raise MissingDataFileError(
                    f"{raw / 'image_splits' / f'split.{category}.val.json'}: image {lost} not found in "
                    f"{image_dir} (--strict)"
                )
            kept += [
                {"candidate": a, "target": a, "captions": list(FAKE_CAPTIONS), "target_id": ids[(category, a)],
                 "fake_data": True, "garment_class": garment}
                for a in fake
            ]  # fmt: skip
            counts[f"FashionIQ/{category}.val_queries"] = queries
            counts[f"FashionIQ/{category}.val_fake"] = len(fake)
            counts[f"FashionIQ/{category}.val_gallery"] = len({e["target_id"] for e in kept})
            if len(rest) > len(fake):
                counts[f"FashionIQ/{category}.val_gallery_missing_images"] = len(rest) - len(fake)
            outside = {e["target"] for e in entries} - set(splits[category])
            if outside:
                counts[f"FashionIQ/{category}.val_targets_not_in_split"] = len(outside)
                log.warning(
                    "FashionIQ %s val: %d caption targets are not in split.%s.val.json (e.g. %s)",
                    category,
                    len(outside),
                    category,
                    min(outside),
                )
        if dropped:
            counts[f"FashionIQ/{category}.{split}_dropped_missing_image"] = dropped
            log.warning(
                "FashionIQ %s %s: %d entries dropped, their candidate or target image is not in %s "
                "(--strict makes this an error)",
                category,
                split,
                dropped,
                image_dir,
            )
        written[(category, split)] = kept

    with staged_output(out, "FashionIQ", overwrite=args.overwrite) as root:
        (root / "captions").mkdir()
        for (category, split), entries in written.items():
            write_entries(root / "captions" / f"cap.{category}.{split}.json", entries)
        shutil.copytree(raw / "image_splits", root / "image_splits")
        asins = {e[k] for entries in written.values() for e in entries for k in ("candidate", "target")}
        jobs = []
        for asin in sorted(asins):
            src = find(asin)
            assert src is not None  # entries with a missing image were dropped above
            jobs.append((src, root / "images" / (asin + src.suffix.lower())))
        (root / "images").mkdir()
        place_files(jobs, args.link, args.workers, progress)
    counts["FashionIQ/images"] = len(asins)
    missing = find.missing
    if missing:
        counts["FashionIQ/missing_images"] = len(missing)
        log.warning("FashionIQ: %d images not found in %s (e.g. %s)", len(missing), image_dir, missing[0])
    return counts
