"""FashionGen: the official 256×256 HDF5 release -> ``FashionGen/{train,val}_info.json`` and its images,
as PNG files (the reference's layout), as a uint8 array store (decode-free, :mod:`fashion_vl.data.array_store`)
or both.

The release is one HDF5 file per split with one row per *image*; rows are grouped into products by
``input_productID``. Metadata and pixels are read in chunks of rows, so the 20 GB train file is never
held in memory, and PNG encoding runs on a thread pool while the next chunk is read. The array store
keeps the release's own pixels in its row order, copied chunk by chunk into a memory-mapped ``.npy``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.prepare._files import write_entries
from fashion_vl.data.prepare.staging import staged_output

log = logging.getLogger(__name__)

DESCRIPTION = """\
FashionGen: the official 256x256 HDF5 release -> FashionGen/{train,val}_info.json + PNG images.

Reads fashiongen_256_256_train.h5 and fashiongen_256_256_validation.h5 in --raw (the file names of
the official release; give others with --train-file / --val-file). Each file holds one row per image:
input_image (N,H,W,3 uint8), input_name, input_description, input_category, input_subcategory (byte
strings, UTF-8 or cp1252/latin-1), input_productID (int) and input_pose (e.g. b"id_gridfs_1").
Rows are grouped into products by input_productID, images in pose order, saved as
FashionGen/{train,val}/<productID>_<pose>.png. Category and subcategory ids number the sorted names
of both splits; the mapping is saved as FashionGen/categories.json. attributes_id is left empty:
run `fvl-data attributes <out>` afterwards, then `fvl-data check <out>`. Needs h5py
(pip install 'fashion-vl[prepare]').

--image-store array writes the pixels as they are in the release, without PNG encoding, into
FashionGen/{train,val}_images.npy (uint8 N x 256 x 256 x 3, memory-mapped at training time: ~51 GB for
train) with FashionGen/{train,val}_images.json naming each row by its PNG name; train with
data.image_store=array. --image-store both writes the PNGs too.
"""

DEFAULT_FILES = {"train": "fashiongen_256_256_train.h5", "val": "fashiongen_256_256_validation.h5"}
IMAGE_KEY = "input_image"
TEXT_KEYS = ("input_name", "input_description", "input_category", "input_subcategory", "input_pose")
ID_KEY = "input_productID"
# The reference's label counts (``fashion_vl.data.check`` imports torch, too heavy for ``--help``).
NUM_CATEGORIES, NUM_SUBCATEGORIES = 48, 121
CHUNK_ROWS = 256  # 256 rows of 256x256x3 = 48 MiB of pixels per chunk, two chunks in flight
IMAGE_OUTPUTS = ("png", "array", "both")

_TRAILING_INT = re.compile(r"(\d+)\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-file", default=DEFAULT_FILES["train"], help="train HDF5 file, relative to --raw"
    )
    parser.add_argument(
        "--val-file", default=DEFAULT_FILES["val"], help="validation HDF5 file, relative to --raw"
    )
    parser.add_argument("--workers", type=int, default=8, help="threads encoding PNGs (default 8)")
    parser.add_argument(
        "--image-store",
        choices=IMAGE_OUTPUTS,
        default="png",
        help="png: PNG files (the reference's layout, default); array: a uint8 array store read without "
        "decoding (data.image_store=array); both",
    )


def decode_text(value: Any) -> str:
    """A string from an HDF5 cell: UTF-8 if it decodes, else cp1252, else latin-1; whitespace collapsed."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, str):
        text = value
    else:
        raw = bytes(value)
        for encoding in ("utf-8", "cp1252", "latin-1"):  # latin-1 decodes any byte string
            try:
                text = raw.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    return " ".join(text.replace("\x00", " ").split())


def pose_index(pose: str) -> int | None:
    """``id_gridfs_3`` -> 3; ``None`` when the pose names no number."""
    match = _TRAILING_INT.search(pose)
    return int(match.group(1)) if match else None


@dataclass
class _Product:
    id: int
    title: str
    description: str
    category: str
    subcategory: str
    images: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # ((pose, row), file name)


@dataclass
class _SplitResult:
    products: dict[int, _Product] = field(default_factory=dict)
    rows: int = 0
    inconsistent: int = 0  # products whose rows disagree on title/description/category
    duplicate_poses: int = 0  # images whose (product, pose) was already taken


def _column(data: Any, n: int) -> np.ndarray:
    """An HDF5 slice of shape (n,) or (n, 1) as a flat (n,) array."""
    array = np.asarray(data)
    return array.reshape(n, -1)[:, 0] if array.ndim > 1 else array


def _check_layout(h5: Any, path: Path) -> int:
    """The row count, after checking that every dataset exists and has one row per image."""
    for key in (IMAGE_KEY, ID_KEY, *TEXT_KEYS):
        if key not in h5:
            raise DataFormatError(
                f"{path}: HDF5 dataset '{key}' is missing (found: {', '.join(sorted(h5.keys())) or 'none'}); "
                "is this a FashionGen release file?"
            )
    images = h5[IMAGE_KEY]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataFormatError(
            f"{path}: dataset '{IMAGE_KEY}' should be uint8 (N, H, W, 3), found {images.dtype} {images.shape}"
        )
    n = images.shape[0]
    for key in (ID_KEY, *TEXT_KEYS):
        if h5[key].shape[:1] != (n,):
            raise DataFormatError(
                f"{path}: dataset '{key}' has {h5[key].shape[:1]} rows, '{IMAGE_KEY}' has {n}"
            )
    return n


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK_ROWS):
        yield start, min(n, start + CHUNK_ROWS)


def _convert_split(
    h5: Any,
    path: Path,
    image_dir: Path | None,
    pool: ThreadPoolExecutor,
    advance: Callable[[int], None],
    store: Any = None,
) -> _SplitResult:
    """Stream one HDF5 file: PNGs into ``image_dir`` and/or rows into ``store``, products (not yet
    numbered) into the result."""
    result = _SplitResult()
    taken: set[str] = set()
    names: list[str] = []  # row -> image name, the array store's index
    n = h5[IMAGE_KEY].shape[0]
    pending: list[Future] = []
    for start, stop in _chunks(n):
        rows = stop - start
        ids = _column(h5[ID_KEY][start:stop], rows)
        texts = {key: _column(h5[key][start:stop], rows) for key in TEXT_KEYS}
        pixels = h5[IMAGE_KEY][start:stop]  # [rows, H, W, 3], the only large read
        if store is not None:
            store.write(start, pixels)
        jobs = []
        for i in range(rows):
            row = start + i
            try:
                pid = int(ids[i])
            except (TypeError, ValueError) as err:
                raise DataFormatError(
                    f"{path}: row {row}: '{ID_KEY}' is not an integer ({ids[i]!r})"
                ) from err
            meta = [decode_text(texts[key][i]) for key in TEXT_KEYS]
            title, description, category, subcategory, pose = meta
            product = result.products.get(pid)
            if product is None:
                product = result.products[pid] = _Product(pid, title, description, category, subcategory)
            elif (product.title, product.description, product.category, product.subcategory) != (
                title,
                description,
                category,
                subcategory,
            ):
                result.inconsistent += 1
            index = pose_index(pose)
            name = f"{pid}_{index}.png" if index is not None else f"{pid}_row{row}.png"
            if name in taken:
                result.duplicate_poses += 1
                name = f"{pid}_{index}_row{row}.png"
            taken.add(name)
            names.append(name)
            product.images.append(((index if index is not None else 1 << 30, row), name))
            if image_dir is not None:
                jobs.append(pool.submit(_save_png, pixels[i], image_dir / name))
        for future in pending:  # the previous chunk: encoded while this one was read
            future.result()
        advance(len(pending) if image_dir is not None else rows)
        pending = jobs
    for future in pending:
        future.result()
    advance(len(pending))
    if store is not None:
        store.finish(names)
    result.rows = n
    return result


def convert(
    raw: Path, out: Path, args: argparse.Namespace, progress: Callable[[int, int], None]
) -> dict[str, int]:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading the FashionGen HDF5 files needs h5py ({err}): pip install 'fashion-vl[prepare]'"
        ) from err

    files = {"train": raw / args.train_file, "val": raw / args.val_file}
    for split, path in files.items():
        if not path.is_file():
            flag = "--train-file" if split == "train" else "--val-file"
            raise MissingDataFileError(
                f"FashionGen {split} file not found: {path}\nExpected the official release file "
                f"{DEFAULT_FILES[split]} in --raw, or name it with {flag}."
            )
    handles = {}
    try:
        for split, path in files.items():
            try:
                handles[split] = h5py.File(path, "r")
            except OSError as err:
                raise DataFormatError(f"{path}: cannot open as HDF5 ({err})") from err
        totals = {split: _check_layout(h5, files[split]) for split, h5 in handles.items()}
        total, done = sum(totals.values()), 0
        progress(0, total)

        def advance(k: int) -> None:
            nonlocal done
            done += k
            progress(done, total)

        results: dict[str, _SplitResult] = {}
        with (
            staged_output(out, "FashionGen", overwrite=args.overwrite) as root,
            ThreadPoolExecutor(max(1, args.workers)) as pool,
        ):
            output = getattr(args, "image_store", "png")
            for split, h5 in handles.items():
                image_dir = None
                if output in ("png", "both"):
                    image_dir = root / split
                    image_dir.mkdir()
                store = None
                if output in ("array", "both"):
                    from fashion_vl.data.array_store import ArrayStoreWriter  # torch: not for --help

                    _, height, width, _ = h5[IMAGE_KEY].shape
                    index = root / f"{split}_images.json"  # FashionGenSource.array_store_index
                    store = ArrayStoreWriter(index, totals[split], height, width)
                results[split] = _convert_split(h5, files[split], image_dir, pool, advance, store)
            counts = _write_annotations(root, results)
    finally:
        for h5 in handles.values():
            h5.close()
    return counts


def _write_annotations(root: Path, results: dict[str, _SplitResult]) -> dict[str, int]:
    products = [p for r in results.values() for p in r.products.values()]
    categories = {name: i for i, name in enumerate(sorted({p.category for p in products}))}
    subcategories = {name: i for i, name in enumerate(sorted({p.subcategory for p in products}))}
    (root / "categories.json").write_text(
        json.dumps({"category": categories, "subcategory": subcategories}, indent=1, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    for what, found, limit in (
        ("categories", len(categories), NUM_CATEGORIES),
        ("subcategories", len(subcategories), NUM_SUBCATEGORIES),
    ):
        if found > limit:
            log.warning(
                "FashionGen: %d %s, the reference expects %d: ids >= %d are kept but `fvl-data check` "
                "flags them and classification heads need num_labels >= %d (see categories.json)",
                found,
                what,
                limit,
                limit,
                found,
            )
    counts: dict[str, int] = {}
    for split, result in results.items():
        entries = [
            {
                "images": [name for _, name in sorted(p.images)],
                "id": p.id,
                "title": p.title,
                "description": p.description,
                "attributes_id": [],
                "category_id": categories[p.category],
                "subcategory_id": subcategories[p.subcategory],
            }
            for p in result.products.values()
        ]
        write_entries(root / f"{split}_info.json", entries)
        counts[f"FashionGen/{split}"] = len(entries)
        counts[f"FashionGen/{split}_images"] = result.rows
        if result.inconsistent:
            log.warning(
                "FashionGen %s: %d image rows disagree with the first row of their product on "
                "name/description/category; the first row's values were kept",
                split,
                result.inconsistent,
            )
            counts[f"FashionGen/{split}_inconsistent_rows"] = result.inconsistent
        if result.duplicate_poses:
            log.warning(
                "FashionGen %s: %d images repeat a (product, pose) pair; saved with a _row<k> suffix",
                split,
                result.duplicate_poses,
            )
            counts[f"FashionGen/{split}_duplicate_poses"] = result.duplicate_poses
    if len(results) == 2:
        shared = results["train"].products.keys() & results["val"].products.keys()
        if shared:
            log.warning(
                "FashionGen: %d product ids are in both train and val (e.g. %d); `fvl-data check` flags this",
                len(shared),
                min(shared),
            )
            counts["FashionGen/ids_in_both_splits"] = len(shared)
    counts["FashionGen/categories"] = len(categories)
    counts["FashionGen/subcategories"] = len(subcategories)
    return counts
