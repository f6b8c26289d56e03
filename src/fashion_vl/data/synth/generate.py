"""Writing the synthetic datasets in the real on-disk formats.

Each dataset has its own random stream (``Random(f"{seed}/{name}")``), so adding a dataset or
changing one's size leaves the others unchanged. Writers first build all records and a list of
render jobs; a process pool then draws the images. The whole tree is written into a temporary
sibling folder and moved into place at the end, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashion_vl.data.formats.polyvore import POLYVORE_RAW_CATEGORY_IDS
from fashion_vl.data.synth import text as T
from fashion_vl.data.synth.render import View, render, sample_view
from fashion_vl.data.synth.taxonomy import (
    ACCENTS,
    CATEGORIES,
    NEUTRALS,
    SUBCATEGORIES,
    Garment,
    changeable_fields,
    sample_garment,
    subcategories_of,
)
from fashion_vl.data.synth.tryon import TryOnJob, write_vitonhd

log = logging.getLogger(__name__)
GENERATOR_VERSION = 4


@dataclass(frozen=True)
class SizeSpec:
    """Counts per dataset (products, outfits or triplets per split)."""

    fashiongen: tuple[int, int]  # train, val products
    bigfacad: tuple[int, int]  # train, val products
    fashion200k: tuple[int, int]  # train, test product families
    polyvore: tuple[int, int]  # train, test outfits
    fashioniq: tuple[int, int]  # train, val triplets per category
    vitonhd: tuple[int, int] = (16, 8)  # train, test people (optional dataset, see OPTIONAL_WRITERS)


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec((48, 24), (16, 8), (12, 8), (12, 8), (12, 8), (16, 8)),
    "small": SizeSpec((600, 150), (300, 50), (150, 60), (240, 80), (200, 60), (400, 100)),
    "medium": SizeSpec((6000, 1500), (3000, 500), (1500, 600), (2400, 800), (2000, 600), (4000, 1000)),
}


@dataclass(frozen=True)
class RenderJob:
    path: str  # relative to the output root
    garment: Garment
    view: View
    seed: int


@dataclass
class Written:
    """What a writer produced: JSON files, render jobs, texts for the tokenizer, counts."""

    files: dict[str, object] = field(default_factory=dict)  # a str is written as is, anything else as JSON
    jobs: list[RenderJob | TryOnJob] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _views(rng: random.Random, garment: Garment, paths: Iterable[str], out: Written) -> None:
    for v, path in enumerate(paths):
        out.jobs.append(RenderJob(path, garment, sample_view(rng, v), rng.getrandbits(31)))


def write_fashiongen(rng: random.Random, spec: SizeSpec) -> Written:
    out = Written()
    next_id = 100000 + rng.randrange(1000)
    for split, count in zip(("train", "val"), spec.fashiongen):
        entries = []
        for _ in range(count):
            pid, next_id = next_id, next_id + rng.randint(1, 7)
            g = sample_garment(rng)
            images = [f"{pid}_{k}.png" for k in range(rng.randint(2, 4))]
            _views(rng, g, (f"FashionGen/{split}/{name}" for name in images), out)
            entry = dict(
                images=images,
                id=pid,
                title=T.title(g),
                description=T.description(g, rng),
                attributes_id=g.attribute_ids(),
                category_id=g.category_id,
                subcategory_id=g.subcategory_id,
            )
            entries.append(entry)
            out.texts.append(f"{entry['title']}. {entry['description']}")
        out.files[f"FashionGen/{split}_info.json"] = entries
        out.counts[f"FashionGen/{split}"] = len(entries)
    # the label names, as `fvl-data prepare fashiongen` writes them (zero-shot recognition prompts)
    out.files["FashionGen/categories.json"] = {
        "category": {name: i for i, name in enumerate(CATEGORIES)},
        "subcategory": {sub.name: i for i, (_, sub) in enumerate(SUBCATEGORIES)},
    }
    return out


def write_bigfacad(rng: random.Random, spec: SizeSpec) -> Written:
    out = Written()
    for split, count in zip(("train", "val"), spec.bigfacad):
        entries = []
        for _ in range(count):
            pid = rng.randrange(10**6)
            while pid in {e["id"] for e in entries}:
                pid = rng.randrange(10**6)
            g = sample_garment(rng)
            folder = f"a{pid % 97:02d}"
            images = [f"{folder}/{pid}_{k}.jpg" for k in range(rng.randint(1, 3))]
            _views(rng, g, (f"BigFACAD/images/{name}" for name in images), out)
            color, title, description = T.facad_fields(g, rng)
            entries.append(
                dict(
                    images=images,
                    id=pid,
                    color=color,
                    title=title,
                    description=description,
                    attributes_id=g.attribute_ids(),
                )
            )
            out.texts.append(f"{color}. {title}. {description}")
        out.files[f"BigFACAD/{split}_info.json"] = entries
        out.counts[f"BigFACAD/{split}"] = len(entries)
    return out


_F200K_FOLDERS = {"dress": "dresses", "jacket": "jackets", "pants": "pants", "skirt": "skirts", "top": "tops"}


def write_fashion200k(rng: random.Random, spec: SizeSpec) -> Written:
    """Families of products whose titles differ by one word (the composed-retrieval pairs)."""
    out = Written()
    subs = subcategories_of("dress", "jacket", "pants", "skirt", "top")
    next_id = 50000000 + rng.randrange(10**5)
    for split, families in zip(("train", "test"), spec.fashion200k):
        entries = []
        for _ in range(families):
            base = sample_garment(rng, subs)
            members = [base]
            fields = [
                f
                for f in ("colour", "sleeve", "length", "fit")
                if f in changeable_fields(base.sub) or f == "colour"
            ]
            for _ in range(rng.randint(1, 3)):
                members.append(base.changed(rng, (rng.choice(fields),)))
            for g in members:
                pid, next_id = next_id, next_id + rng.randint(1, 50)
                folder = f"women/{_F200K_FOLDERS[g.sub.kind]}/{g.sub.name.replace(' ', '_').replace('-', '_')}/{pid}"
                images = [f"{folder}/{pid}_{k}.jpeg" for k in range(rng.randint(1, 2))]
                _views(rng, g, (f"Fashion200k/images/{name}" for name in images), out)
                entries.append(
                    dict(images=images, id=pid, title=T.fashion200k_title(g), attributes_id=g.attribute_ids())
                )
                out.texts.append(entries[-1]["title"])
        out.files[f"Fashion200k/{split}_info.json"] = entries
        out.counts[f"Fashion200k/{split}"] = len(entries)
    return out


_SEMANTIC = {"top": "tops", "jacket": "outerwear", "dress": "all-body", "skirt": "bottoms", "pants": "bottoms",
             "shorts": "bottoms", "sneakers": "shoes", "boots": "shoes", "heels": "shoes", "tote": "bags",
             "clutch": "bags", "backpack": "bags"}  # fmt: skip
# Each semantic group stands for one raw Polyvore category, so an OCIR query is ranked against every
# item of its blank's group (about 50 in `small`), not a handful.
_GROUPS = sorted(set(_SEMANTIC.values()))
_RAW_CATEGORY = {
    sub.name: POLYVORE_RAW_CATEGORY_IDS[8 + 20 * _GROUPS.index(_SEMANTIC[sub.kind])]
    for _, sub in SUBCATEGORIES
}


def _outfit(rng: random.Random, new_item: Callable[[tuple, tuple[str, ...]], int]) -> list[int]:
    """One compatible outfit: (top + bottom) or dress, shoes, a bag, sometimes outerwear.

    Colour rule: a two-colour scheme, a neutral with an accent (70%) or two neutrals; every item takes
    one of the two, so a compatible item shares its colours with the rest of the outfit.
    """
    first = rng.choice(NEUTRALS)
    second = rng.choice(ACCENTS) if rng.random() < 0.7 else rng.choice([c for c in NEUTRALS if c != first])
    palette = (first, second)
    parts = [("top",), ("skirt", "pants", "shorts")] if rng.random() < 0.7 else [("dress",)]
    parts += [("sneakers", "boots", "heels"), ("tote", "clutch", "backpack")]
    if rng.random() < 0.3:
        parts.append(("jacket",))
    return [new_item(kinds, palette) for kinds in parts]


def write_polyvore(rng: random.Random, spec: SizeSpec) -> Written:
    out = Written()
    items: dict[int, Garment] = {}
    pools: dict[str, list[int]] = {"train": [], "test": []}

    def make_item(split: str) -> Callable[[tuple, tuple[str, ...]], int]:
        def new_item(kinds: tuple, palette: tuple[str, ...]) -> int:
            item = 100000000 + rng.randrange(9 * 10**8)
            while item in items:
                item = 100000000 + rng.randrange(9 * 10**8)
            items[item] = sample_garment(rng, subcategories_of(*kinds), palette)
            pools[split].append(item)
            return item

        return new_item

    outfits = {
        s: [_outfit(rng, make_item(s)) for _ in range(n)] for s, n in zip(("train", "test"), spec.polyvore)
    }

    def reuse_or_new(kinds: tuple, palette: tuple[str, ...]) -> int:
        # non-disjoint test outfits reuse training items half of the time
        candidates = [i for i in pools["train"] if items[i].sub.kind in kinds and items[i].colour in palette]
        if candidates and rng.random() < 0.5:
            return rng.choice(candidates)
        return make_item("test")(kinds, palette)

    nondisjoint_test = [_outfit(rng, reuse_or_new) for _ in range(spec.polyvore[1])]

    def question_files(
        train: list[list[int]], test: list[list[int]], test_pool: list[int]
    ) -> tuple[list, list]:
        train_entries = []
        for outfit in train:
            blank = rng.choice(outfit)
            train_entries.append({"question": [str(i) for i in outfit if i != blank], "blank": str(blank)})
        test_entries, blanks = [], set()
        for outfit in test:
            blank = rng.choice(outfit)
            blanks.add(blank)
            test_entries.append(
                {"question": [str(i) for i in outfit if i != blank], "blank": str(blank), "fake_data": False}
            )
        for item in sorted(set(test_pool) - blanks):
            test_entries.append({"question": [str(item)], "blank": str(item), "fake_data": True})
        return train_entries, test_entries

    disjoint_pool = [i for o in outfits["test"] for i in o]
    nondisjoint_pool = sorted({i for o in nondisjoint_test for i in o} | set(disjoint_pool))
    for variant, test, pool in (
        ("disjoint", outfits["test"], disjoint_pool),
        ("nondisjoint", nondisjoint_test, nondisjoint_pool),
    ):
        train_entries, test_entries = question_files(outfits["train"], test, pool)
        out.files[f"PolyvoreOutfits/ocir_{variant}_train.json"] = train_entries
        out.files[f"PolyvoreOutfits/ocir_{variant}_test.json"] = test_entries
        out.counts[f"PolyvoreOutfits/ocir_{variant}_test_queries"] = len(test)
    metadata, train_info = {}, []
    for item, g in sorted(items.items()):
        name, detail = T.polyvore_fields(g, rng)
        metadata[str(item)] = {
            "category_id": str(_RAW_CATEGORY[g.sub.name]),
            "title": name,
            "semantic_category": _SEMANTIC[g.sub.kind],
        }
        _views(rng, g, [f"PolyvoreOutfits/images/{item}.jpg"], out)
        if item in pools["train"]:
            train_info.append(
                {
                    "images": f"{item}.jpg",
                    "id": item,
                    "title": name,
                    "description": detail,
                    "attributes_id": g.attribute_ids(),
                }
            )
        out.texts.append(f"{name}. {detail}")
    out.files["PolyvoreOutfits/polyvore_item_metadata.json"] = metadata
    out.files["PolyvoreOutfits/train_info.json"] = train_info
    out.counts["PolyvoreOutfits/train_items"] = len(train_info)
    out.counts["PolyvoreOutfits/train_outfits"] = len(outfits["train"])
    return out


_FIQ_SUBS = {
    "dress": subcategories_of("dress"),
    "shirt": tuple((c, s) for c, s in SUBCATEGORIES if s.name in ("shirt", "blouse")),
    "toptee": tuple((c, s) for c, s in SUBCATEGORIES if s.name in ("t-shirt", "tank top", "sweater")),
}
_FIQ_CLASS = {"dress": 0, "shirt": 1, "toptee": 2}


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B0" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
        if asin not in taken:
            taken.add(asin)
            return asin


def write_fashioniq(rng: random.Random, spec: SizeSpec) -> Written:
    """Triplets whose target differs from the reference in one or two visible attributes."""
    out = Written()
    taken: set[str] = set()
    next_target_id = 0
    for category, subs in _FIQ_SUBS.items():
        for split, count in zip(("train", "val"), spec.fashioniq):
            garments: dict[str, Garment] = {}
            guidance: dict[str, str] = {}

            def image(g: Garment, garments: dict[str, Garment] = garments) -> str:
                asin = _asin(rng, taken)
                garments[asin] = g
                _views(rng, g, [f"FashionIQ/images/{asin}.jpg"], out)
                return asin

            entries = []
            for _ in range(count):
                reuse = [a for a in garments if rng.random() < 0.3]
                candidate = rng.choice(reuse) if reuse else image(sample_garment(rng, subs))
                source = garments[candidate]
                fields = changeable_fields(source.sub)
                changed = tuple(rng.sample(fields, k=min(len(fields), rng.choice((1, 1, 2)))))
                target = image(source.changed(rng, changed))
                captions = T.relative_captions(source, garments[target], changed, rng)
                guidance.setdefault(candidate, captions[0])
                entries.append({"candidate": candidate, "target": target, "captions": captions})
                out.texts.extend(captions)
            for _ in range(count // 2):  # distractors: split images that are nobody's target
                image(sample_garment(rng, subs))
            if split == "val":
                target_ids: dict[str, int] = {}
                for asin in garments:
                    target_ids[asin] = next_target_id
                    next_target_id += 1
                for e in entries:
                    e.update(
                        target_id=target_ids[e["target"]], fake_data=False, garment_class=_FIQ_CLASS[category]
                    )
                in_gallery = {e["target"] for e in entries}
                for asin in garments:
                    if asin not in in_gallery:
                        entries.append({"candidate": asin, "target": asin, "captions": ["fake", "fake"],
                                        "target_id": target_ids[asin], "fake_data": True,
                                        "garment_class": _FIQ_CLASS[category]})  # fmt: skip
            out.files[f"FashionIQ/captions/cap.{category}.{split}.json"] = entries
            out.files[f"FashionIQ/image_splits/split.{category}.{split}.json"] = sorted(garments)
            out.counts[f"FashionIQ/{category}.{split}"] = count
            llava = []
            for asin, g in garments.items():
                caption = T.llava_caption(g, rng, degenerate=rng.random() < 0.05)
                llava.append({"image": asin, "caption": caption, "text_guidance": guidance.get(asin, "")})
                out.texts.append(caption.strip()[:300])
            out.files[f"FashionIQ-Cap/next_llava.{split}.{category}.caption.json"] = llava
    return out


WRITERS: dict[str, Callable[[random.Random, SizeSpec], Written]] = {
    "fashiongen": write_fashiongen,
    "bigfacad": write_bigfacad,
    "fashion200k": write_fashion200k,
    "polyvore": write_polyvore,
    "fashioniq": write_fashioniq,
}
# Written only when named in ``only`` (``fvl-data synth --only vitonhd``): the default output stays the
# five datasets above, byte for byte.
OPTIONAL_WRITERS: dict[str, Callable[[random.Random, SizeSpec], Written]] = {
    "vitonhd": write_vitonhd,
}


IMAGE_STORES = ("files", "array", "both")
STORE_PREFIX = "FashionGen/"  # the one dataset with an array store (FashionGenSource.array_store_index)


def _in_store(job: RenderJob | TryOnJob) -> bool:
    return isinstance(job, RenderJob) and job.path.startswith(STORE_PREFIX)


def _render_chunk(
    root: str, image_size: int, jobs: list[RenderJob | TryOnJob], image_store: str = "files"
) -> tuple[int, list[tuple[str, np.ndarray]]]:
    """Render ``jobs`` under ``root``; with an array ``image_store``, FashionGen's pixels come back as
    ``(path, uint8 [H, W, 3])`` for the store (and are not saved as files unless it is ``both``)."""
    pixels = []
    for job in jobs:
        if isinstance(job, TryOnJob):  # several pictures of one person
            job.write(Path(root), image_size)
            continue
        img = render(job.garment, job.view, image_size, job.seed)
        if image_store != "files" and _in_store(job):
            pixels.append((job.path, np.asarray(img.convert("RGB"), dtype=np.uint8)))
            if image_store == "array":
                continue
        path = Path(root) / job.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            img.save(path, format="PNG", compress_level=1)
        else:
            img.save(path, format="JPEG", quality=90)
    return len(jobs), pixels


class _StoreWriters:
    """One array store per FashionGen split, filled in render order as chunks come back."""

    def __init__(self, root: Path, jobs: list[RenderJob | TryOnJob], image_size: int) -> None:
        from fashion_vl.data.array_store import ArrayStoreWriter

        self.names: dict[str, list[str]] = {}
        for job in jobs:
            if _in_store(job):
                split, name = job.path.removeprefix(STORE_PREFIX).split("/", 1)
                self.names.setdefault(split, []).append(name)
        self.rows = {
            f"{STORE_PREFIX}{split}/{name}": (split, row)
            for split, names in self.names.items()
            for row, name in enumerate(names)
        }
        self.writers = {
            split: ArrayStoreWriter(
                root / f"{STORE_PREFIX}{split}_images.json", len(names), image_size, image_size
            )
            for split, names in self.names.items()
        }

    def write(self, pixels: list[tuple[str, np.ndarray]]) -> None:
        for path, array in pixels:
            split, row = self.rows[path]
            self.writers[split].write(row, array[None])

    def finish(self) -> None:
        for split, writer in self.writers.items():
            writer.finish(self.names[split])


def generate(
    out: str | Path,
    size: str | SizeSpec = "small",
    seed: int = 0,
    image_size: int = 128,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    only: Iterable[str] | None = None,
    image_store: str = "files",
) -> dict:
    """Write the synthetic datasets and a WordPiece tokenizer under ``out`` (a ``datasets/`` folder).

    Args:
        size: a name in :data:`SIZES` or a :class:`SizeSpec`.
        only: names of :data:`WRITERS` or :data:`OPTIONAL_WRITERS` to write (default: the five
            datasets of :data:`WRITERS`).
        image_store: FashionGen's images as ``files`` (PNGs, the reference's layout), as an ``array``
            store (``FashionGen/{split}_images.{npy,json}``, what ``fvl-data prepare fashiongen
            --image-store array`` writes) or ``both``. The pixels are the same either way.

    Returns the manifest (seed, size, counts) also written to ``out/synthetic_manifest.json``.
    """
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, not {size!r}")
    if image_store not in IMAGE_STORES:
        raise ValueError(f"--image-store must be one of {IMAGE_STORES}, not {image_store!r}")
    writers = {**WRITERS, **OPTIONAL_WRITERS}
    names = list(WRITERS) if only is None else list(only)
    unknown = sorted(set(names) - set(writers))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {sorted(writers)}")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    spec = SIZES[size] if isinstance(size, str) else size
    start = time.perf_counter()
    written = {name: writers[name](random.Random(f"{seed}/{name}"), spec) for name in names}
    jobs = [job for w in written.values() for job in w.jobs]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for w in written.values():
            for rel, payload in w.files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    payload
                    if isinstance(payload, str)
                    else json.dumps(payload, indent=1 if path.name.endswith("metadata.json") else None)
                )
        workers = workers or max(1, min(os.cpu_count() or 1, 8))
        chunks = [jobs[i : i + 64] for i in range(0, len(jobs), 64)]
        stores = _StoreWriters(tmp, jobs, image_size) if image_store != "files" else None
        done = 0
        if workers == 1:
            results = (_render_chunk(str(tmp), image_size, chunk, image_store) for chunk in chunks)
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(
                _render_chunk,
                [str(tmp)] * len(chunks),
                [image_size] * len(chunks),
                chunks,
                [image_store] * len(chunks),
            )
        try:
            for n, pixels in results:
                if stores is not None:
                    stores.write(pixels)
                done += n
                if progress:
                    progress(done, len(jobs))
        finally:
            if workers != 1:
                pool.shutdown(cancel_futures=True)
        if stores is not None:
            stores.finish()
        from fashion_vl.data.synth.tokenizer import train_wordpiece

        texts = [t for w in written.values() for t in w.texts]
        vocab = train_wordpiece(texts, tmp / "tokenizer")
        counts = {k: v for w in written.values() for k, v in w.counts.items()}
        counts["images"] = len(jobs)
        manifest = dict(
            generator="fashion_vl.data.synth",
            version=GENERATOR_VERSION,
            seed=seed,
            size=size if isinstance(size, str) else "custom",
            datasets=names,
            image_size=image_size,
            tokenizer_vocab_size=vocab,
            counts=counts,
        )
        if image_store != "files":  # the default manifest stays byte for byte what it was
            manifest["image_store"] = image_store
        (tmp / "synthetic_manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d images in %.1fs to %s", len(jobs), time.perf_counter() - start, out)
    return manifest
