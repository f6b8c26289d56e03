"""Fashion200k: the Han et al. (ICCV 2017) release -> ``Fashion200k/{train,test}_info.json`` and images.

The release lists *images* in ``labels/<category>_{train,test}_detect_all.txt``; FashionViL trains on
*products*. Images are grouped by their product folder (the parent directory, named by the product
id); this grouping is our reading of the release, not confirmed by the FashionViL authors.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.prepare._files import add_link_arguments, place_files, safe_relative, write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fashion200k: the Han et al. (ICCV 2017) release -> Fashion200k/{train,test}_info.json + images.

Reads --raw/labels/<category>_{train,test}_detect_all.txt (categories dress, jacket, pants, skirt,
top; every such file found is read), one image per line: <image path> TAB <detection score> TAB
<description>, the image path relative to --raw (e.g. women/dresses/casual_and_day_dresses/
51727804/51727804_0.jpeg). Images are grouped into products by their parent folder, whose name is
the product id (an integer); a product's title is its images' most common description. Images are
copied (or linked, --link) to Fashion200k/images/<same path>. There is no val split (as in the
reference). Missing images are skipped and counted (--strict: an error). Products listed in both
splits are kept in train only. attributes_id is left empty: run `fvl-data attributes <out>`
afterwards, then `fvl-data check <out>`.
"""

SPLITS = ("train", "test")
_TRAILING_INT = re.compile(r"(\d+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)


def image_sort_key(name: str) -> tuple[int, str]:
    """``51727804_10.jpeg`` after ``51727804_2.jpeg``: by the trailing number of the stem, then name."""
    match = _TRAILING_INT.search(PurePosixPath(name).stem)
    return (int(match.group(1)) if match else -1, name)


@dataclass
class _Product:
    id: int
    images: dict[str, None] = field(default_factory=dict)  # an ordered set
    descriptions: Counter[str] = field(default_factory=Counter)


@dataclass
class _Split:
    products: dict[int, _Product] = field(default_factory=dict)
    lines: int = 0
    missing: int = 0


def _label_files(raw: Path, split: str) -> list[Path]:
    return sorted((raw / "labels").glob(f"*_{split}_detect_all.txt"))


def _read_split(raw: Path, files: list[Path], strict: bool) -> _Split:
    result = _Split()
    for label_file in files:
        with label_file.open("r", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t", 2)
                where = f"{label_file}, line {lineno}"
                if len(fields) != 3:
                    raise DataFormatError(
                        f"{where}: expected 3 tab-separated fields (image path, detection score, "
                        f"description), found {len(fields)}: {line.strip()!r:.120}"
                    )
                path, _score, description = (x.strip() for x in fields)
                rel = safe_relative(path)
                if rel is None:
                    raise DataFormatError(f"{where}: field 'image path' must be relative to --raw: {path!r}")
                try:
                    pid = int(rel.parent.name)
                except ValueError as err:
                    raise DataFormatError(
                        f"{where}: field 'image path' {path!r}: its folder should be the product id "
                        f"(an integer), found {rel.parent.name!r}"
                    ) from err
                result.lines += 1
                if not (raw / rel).is_file():
                    if strict:
                        raise MissingDataFileError(f"{where}: image not found: {raw / rel} (--strict)")
                    result.missing += 1
                    continue
                product = result.products.setdefault(pid, _Product(pid))
                product.images[str(rel)] = None
                product.descriptions[" ".join(description.split())] += 1
    return result


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    if not (raw / "labels").is_dir():
        raise MissingDataFileError(
            f"Fashion200k labels folder not found: {raw / 'labels'}\n--raw should be the release folder "
            "holding labels/ (<category>_{train,test}_detect_all.txt) and the women/ images."
        )
    files = {split: _label_files(raw, split) for split in SPLITS}
    if not files["train"]:
        raise MissingDataFileError(
            f"no train label files in {raw / 'labels'} (expected <category>_train_detect_all.txt)"
        )
    if not files["test"]:
        log.warning("Fashion200k: no *_test_detect_all.txt in %s; writing train only", raw / "labels")
        del files["test"]
    splits = {split: _read_split(raw, paths, args.strict) for split, paths in files.items()}

    counts: dict[str, int] = {}
    if "test" in splits:
        shared = splits["train"].products.keys() & splits["test"].products.keys()
        if shared:
            log.warning(
                "Fashion200k: %d products have images in both train and test (e.g. %d); kept in train only",
                len(shared),
                min(shared),
            )
            for pid in shared:
                del splits["test"].products[pid]
            counts["Fashion200k/test_dropped_in_train"] = len(shared)

    with staged_output(out, "Fashion200k", overwrite=args.overwrite) as root:
        jobs = {}
        for split, result in splits.items():
            entries = []
            mixed = 0
            for product in result.products.values():
                images = sorted(product.images, key=image_sort_key)
                for name in images:
                    jobs[name] = (raw / name, root / "images" / name)
                # most_common breaks ties by first occurrence
                title, _ = product.descriptions.most_common(1)[0]
                mixed += len(product.descriptions) > 1
                entries.append({"images": images, "id": product.id, "title": title, "attributes_id": []})
            write_entries(root / f"{split}_info.json", entries)
            counts[f"Fashion200k/{split}"] = len(entries)
            counts[f"Fashion200k/{split}_images"] = sum(len(e["images"]) for e in entries)
            if mixed:
                counts[f"Fashion200k/{split}_mixed_descriptions"] = mixed
                log.info(
                    "Fashion200k %s: %d products have images with different descriptions; "
                    "the most common one is the title",
                    split,
                    mixed,
                )
            if result.missing:
                counts[f"Fashion200k/{split}_missing_images"] = result.missing
                log.warning(
                    "Fashion200k %s: %d listed images not found under %s; skipped (--strict makes this an error)",
                    split,
                    result.missing,
                    raw,
                )
        (root / "images").mkdir(exist_ok=True)
        place_files(jobs.values(), args.link, args.workers, progress)
    return counts
