"""Validating a data folder: annotation formats, images that exist and decode, ids, splits, ranges."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fashion_vl.data.array_store import ArrayImageStore, ArrayStoreError
from fashion_vl.data.captions import empty_caption_ids
from fashion_vl.data.formats import (
    FASHIONGEN_CLASSES,
    FASHIONIQ_CATEGORIES,
    NUM_PSEUDO_ATTRIBUTES,
    BigFACADSource,
    DataFormatError,
    Fashion200kSource,
    FashionGenSource,
    MissingDataFileError,
    PolyvoreItemSource,
    read_fashioniq,
    read_ocir,
    read_polyvore_metadata,
)
from fashion_vl.data.formats.fashioniq import fashioniq_caption_path, fashioniq_image_dir
from fashion_vl.data.formats.polyvore import OCIR_VARIANTS, polyvore_dir
from fashion_vl.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, read_image, resolve_image


@dataclass
class Report:
    """What was found for one annotation file (or one group of them)."""

    dataset: str
    split: str
    entries: int = 0
    images: int = 0
    missing: int = 0
    corrupt: int = 0
    problems: list[str] = field(default_factory=list)
    absent: bool = False
    oversized: list[str] = field(default_factory=list)  # every image above the pixel limit, by path
    empty_captions: list[int] = field(default_factory=list)  # product ids: a warning, not a failure

    @property
    def ok(self) -> bool:
        return (
            not self.absent
            and not self.problems
            and not self.missing
            and not self.corrupt
            and not self.oversized
        )


def _check_images(
    report: Report,
    files: Iterable[tuple[Path, str]],
    decode: bool | None,
    workers: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    store: ArrayImageStore | None = None,
) -> None:
    """``decode``: True opens every image, False only checks it exists, None skips images. Images
    above ``max_pixels`` are listed in ``report.oversized`` (training skips them). With an array
    ``store``, images are looked up (and with ``decode`` read) there instead of in files."""
    files = list(files)
    report.images = len(files)
    if decode is None:
        return

    def one(item: tuple[Path, str]) -> str | None:
        image_dir, name = item
        if store is not None:
            if name not in store:
                return f"missing: {store.index_path}[{name}]: not in the array store"
            if decode:
                try:
                    store.read(name)
                except ArrayStoreError as err:
                    return f"corrupt: {err}"
            return None
        try:
            path = resolve_image(image_dir, name)
        except ImageLoadError as err:
            return f"missing: {err}"
        if decode:
            try:
                read_image(path, max_pixels=max_pixels)
            except ImageLoadError as err:
                return f"{'oversized' if err.oversized else 'corrupt'}: {err}"
        return None

    with ThreadPoolExecutor(workers) as pool:
        for problem in pool.map(one, files):
            if problem is None:
                continue
            if problem.startswith("oversized"):
                report.oversized.append(problem.removeprefix("oversized: "))
                continue
            if problem.startswith("missing"):
                report.missing += 1
            else:
                report.corrupt += 1
            if report.missing + report.corrupt <= 5:
                report.problems.append(problem)


def _guard(report: Report, fn: Callable[[], None]) -> None:
    try:
        fn()
    except MissingDataFileError:
        report.absent = True
    except (DataFormatError, ValueError) as err:
        report.problems.append(str(err))


def check_products(
    data_dir: Path,
    decode: bool | None,
    workers: int,
    num_attributes: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[Report]:
    reports = []
    split_ids: dict[str, dict[str, set[int]]] = {}
    for cls, splits in ((FashionGenSource, ("train", "val")), (BigFACADSource, ("train", "val")),
                        (Fashion200kSource, ("train", "test")), (PolyvoreItemSource, ("train",))):  # fmt: skip
        for split in splits:
            source = cls(data_dir, split)
            report = Report(cls.dataset, split)

            def run(source=source, report=report) -> None:
                table = source.read()
                report.entries = len(table)
                report.empty_captions = empty_caption_ids(table)
                split_ids.setdefault(source.dataset, {})[source.split] = {p.id for p in table.products}
                for p in table.products:
                    bad = [a for a in p.attributes if a >= num_attributes]
                    if bad:
                        report.problems.append(f"product {p.id}: attribute ids {bad} >= {num_attributes}")
                    if source.dataset == "FashionGen" and not (
                        0 <= p.category_id < FASHIONGEN_CLASSES["category"]
                        and 0 <= p.subcategory_id < FASHIONGEN_CLASSES["subcategory"]
                    ):
                        report.problems.append(f"product {p.id}: category/subcategory id out of range")
                # A split without its image folder but with an array store is checked in the store
                # (`fvl-data prepare fashiongen --image-store array`); otherwise files are checked.
                index = source.array_store_index()
                store = None
                if index is not None and index.is_file() and not table.image_dir.is_dir():
                    store = ArrayImageStore(index)
                images = ((table.image_dir, n) for p in table.products for n in p.images)
                _check_images(report, images, decode, workers, max_pixels, store)

            _guard(report, run)
            reports.append(report)
    for dataset, splits in split_ids.items():
        names = sorted(splits)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                shared = splits[a] & splits[b]
                if shared:
                    report = next(r for r in reports if r.dataset == dataset and r.split == b)
                    report.problems.append(
                        f"{len(shared)} product ids also in split '{a}' (e.g. {min(shared)})"
                    )
    return reports


def check_fashioniq(
    data_dir: Path, decode: bool | None, workers: int, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[Report]:
    reports = []
    for category in FASHIONIQ_CATEGORIES:
        for split in ("train", "val"):
            report = Report("FashionIQ", f"{category}.{split}")

            def run(category=category, split=split, report=report) -> None:
                entries = read_fashioniq(data_dir, category, split)
                report.entries = sum(not e.fake_data for e in entries)
                if split == "val":
                    ids: dict[str, int] = {}
                    for e in entries:
                        if ids.setdefault(e.target, e.target_id) != e.target_id:
                            report.problems.append(
                                f"target {e.target} has target_ids {ids[e.target]} and {e.target_id}"
                            )
                    if len(set(ids.values())) != len(ids):
                        report.problems.append("two target images share a target_id")
                asins = sorted({a for e in entries for a in (e.candidate, e.target)})
                _check_images(
                    report,
                    ((fashioniq_image_dir(data_dir), a + ".jpg") for a in asins),
                    decode,
                    workers,
                    max_pixels,
                )

            if not fashioniq_caption_path(data_dir, category, split).parent.exists():
                report.absent = True
            else:
                _guard(report, run)
            reports.append(report)
    return reports


def check_ocir(
    data_dir: Path, decode: bool | None, workers: int, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[Report]:
    reports = []
    meta_report = Report("PolyvoreOutfits", "item_metadata")
    metadata: dict[int, int] = {}

    def load_meta() -> None:
        metadata.update(read_polyvore_metadata(data_dir))
        meta_report.entries = len(metadata)

    _guard(meta_report, load_meta)
    reports.append(meta_report)
    for variant in OCIR_VARIANTS:
        for split in ("train", "test"):
            report = Report("PolyvoreOutfits", f"ocir_{variant}_{split}")

            def run(variant=variant, split=split, report=report) -> None:
                entries = read_ocir(data_dir, variant, split)
                report.entries = sum(not e.fake_data for e in entries)
                items = sorted({i for e in entries for i in (*e.question, e.blank)})
                missing_meta = [i for i in items if metadata and i not in metadata]
                if missing_meta:
                    report.problems.append(
                        f"{len(missing_meta)} items without metadata (e.g. {missing_meta[0]})"
                    )
                _check_images(
                    report,
                    ((polyvore_dir(data_dir) / "images", f"{i}.jpg") for i in items),
                    decode,
                    workers,
                    max_pixels,
                )

            _guard(report, run)
            reports.append(report)
    return reports


def check_data_dir(
    data_dir: str | Path,
    decode: bool | None = True,
    workers: int = 8,
    num_attributes: int = NUM_PSEUDO_ATTRIBUTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[Report]:
    """Check every dataset found under ``data_dir``; absent datasets are reported as such.

    ``decode``: True opens every image, False only checks that each exists, None skips the images
    (formats, fields, ids, splits and ranges only: the cheap check a training run does at start).
    Images above ``max_pixels`` fail the check and are listed; empty captions are counted (a warning).
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    return [
        *check_products(data_dir, decode, workers, num_attributes, max_pixels),
        *check_fashioniq(data_dir, decode, workers, max_pixels),
        *check_ocir(data_dir, decode, workers, max_pixels),
    ]


class DataCheckError(ValueError):
    """A data folder failed the pre-flight check a run does before it builds anything."""


def preflight_check(data_dir: str | Path, num_attributes: int = NUM_PSEUDO_ATTRIBUTES) -> list[Report]:
    """The cheap part of ``fvl-data check`` (no image is opened): raise :class:`DataCheckError` naming
    every failing annotation file and its first problems; return the reports otherwise."""
    reports = check_data_dir(data_dir, decode=None, num_attributes=num_attributes)
    failed = [r for r in reports if not r.absent and not r.ok]
    if failed:
        lines = [f"  {r.dataset}/{r.split}: " + "; ".join(r.problems[:3]) for r in failed]
        raise DataCheckError(
            f"the data folder {data_dir} failed the pre-flight check:\n" + "\n".join(lines) + "\n"
            f"Run `fvl-data check {data_dir}` for the full report (images included); fix the files, or "
            "pass data_check=false to start anyway."
        )
    return reports
