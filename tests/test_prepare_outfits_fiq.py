"""``fvl-data prepare`` for FashionIQ, Fashion-IQ-Cap and Polyvore Outfits, on tiny releases written in
the official layouts; the converted folders are read by the real DataModules and pass ``fvl-data check``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from fashion_vl.cli.data import main
from fashion_vl.data.composed import FashionIQDataModule, fashioniq_eval_items
from fashion_vl.data.formats import POLYVORE_RAW_CATEGORY_IDS, PolyvoreItemSource, read_ocir
from fashion_vl.data.formats.fashioniq_cap import is_degenerate, normalize_space, repeat_share
from fashion_vl.data.outfits import PolyvoreOCIRDataModule
from fashion_vl.data.prepare.fashioniq_cap import clean_entries
from fashion_vl.data.synth.tokenizer import train_wordpiece
from fashion_vl.data.transforms import resize_crop

CATEGORIES = ("dress", "shirt", "toptee")
CAPTIONS = ["is darker and shorter", "has no sleeves"]
SHARED = "B0SHARED00"  # in the shirt and the toptee val splits
NO_IMAGE = "B0NOIMAGE0"


def _image(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 24), ((37 * i) % 256, (91 * i) % 256, 120)).save(path)


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _read(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def prepare(dataset: str, raw: Path, out: Path, *extra: str) -> int:
    return main(["prepare", dataset, "--raw", str(raw), "--out", str(out), *extra])


def assert_no_partial(out: Path, folder: str) -> None:
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in leftovers if n == folder or n.startswith(f".{folder}.")], leftovers


# --------------------------------------------------------------------------- FashionIQ


def fiq_asin(category: str, kind: str, k: int) -> str:
    return f"B0{category[0].upper()}{kind}{k:05d}"


@pytest.fixture
def fiq_raw(tmp_path: Path) -> Path:
    """Per category: 2 train triplets; 2 val queries sharing a target; a val split of 5 asins (+ the
    shared one for shirt and toptee); toptee train has a third triplet whose target has no image.
    Dress V5 is a PNG."""
    raw = tmp_path / "fashion-iq"
    images = []
    for category in CATEGORIES:
        t = [fiq_asin(category, "TR", k) for k in range(1, 5)]
        v = [fiq_asin(category, "VA", k) for k in range(1, 6)]
        train = [{"candidate": t[0], "target": t[1], "captions": CAPTIONS},
                 {"candidate": t[2], "target": t[3], "captions": CAPTIONS}]  # fmt: skip
        if category == "toptee":
            train.append({"candidate": t[0], "target": NO_IMAGE, "captions": CAPTIONS})
        val = [{"target": v[1], "candidate": v[0], "captions": CAPTIONS},
               {"target": v[1], "candidate": v[2], "captions": ["is red", "is longer"]}]  # fmt: skip
        split_val = v + ([SHARED] if category != "dress" else [])
        _write(raw / "captions" / f"cap.{category}.train.json", train)
        _write(raw / "captions" / f"cap.{category}.val.json", val)
        _write(raw / "captions" / f"cap.{category}.test.json", [{"candidate": v[0], "captions": CAPTIONS}])
        _write(raw / "image_splits" / f"split.{category}.train.json", t)
        _write(raw / "image_splits" / f"split.{category}.val.json", split_val)
        _write(raw / "image_splits" / f"split.{category}.test.json", [])
        images += t + v
    for i, asin in enumerate([*sorted(set(images)), SHARED]):
        suffix = ".png" if asin == fiq_asin("dress", "VA", 5) else ".jpg"
        _image(raw / "images" / f"{asin}{suffix}", i)
    return raw


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece([*CAPTIONS, "is red", "is longer", "fake"], out, vocab_size=128)
    return str(out)


def test_fashioniq_converts_official_layout(fiq_raw: Path, tmp_path: Path, tokenizer_dir: str) -> None:
    out = tmp_path / "datasets"
    assert prepare("fashioniq", fiq_raw, out, "--workers", "2") == 0
    root = out / "FashionIQ"
    assert sorted(p.name for p in root.iterdir()) == ["captions", "image_splits", "images"]
    assert sorted(p.name for p in (root / "captions").iterdir()) == [
        f"cap.{c}.{s}.json" for c in CATEGORIES for s in ("train", "val")
    ]
    assert (root / "image_splits" / "split.shirt.test.json").is_file()  # copied as released
    # train: unchanged, except the triplet whose image is missing
    assert _read(root / "captions" / "cap.dress.train.json") == _read(
        fiq_raw / "captions" / "cap.dress.train.json"
    )
    assert len(_read(root / "captions" / "cap.toptee.train.json")) == 2

    shared_ids, offset = set(), 0
    for garment, category in enumerate(CATEGORIES):
        val = _read(root / "captions" / f"cap.{category}.val.json")
        split = _read(fiq_raw / "image_splits" / f"split.{category}.val.json")
        queries = [e for e in val if not e["fake_data"]]
        fakes = [e for e in val if e["fake_data"]]
        assert val[: len(queries)] == queries and len(queries) == 2  # real entries first
        assert queries[0]["captions"] == CAPTIONS and queries[0]["candidate"] == split[0]
        # target_id: numbered category by category, sorted by asin within one
        assert all(e["target_id"] == offset + sorted(split).index(e["target"]) for e in val)
        offset += len(split)
        assert queries[0]["target_id"] == queries[1]["target_id"]
        assert all(e["garment_class"] == garment for e in val)
        # fake entries: the rest of the split, candidate = target, so the gallery is the whole split
        assert {e["target"] for e in fakes} == set(split) - {queries[0]["target"]}
        assert all(e["candidate"] == e["target"] and e["captions"] == ["fake", "fake"] for e in fakes)
        assert len({e["target_id"] for e in val}) == len(split)
        shared_ids |= {e["target_id"] for e in val if e["target"] == SHARED}
    assert len(shared_ids) == 2  # one id per category: the gallery dedupes ids over all categories
    # the evaluation reads them: 2 queries per category, each category's whole split as its gallery
    items = fashioniq_eval_items(out, CATEGORIES)
    assert sum(i.query is not None for i in items) == 6
    assert len({i.gallery.key for i in items}) == offset == 5 + 6 + 6
    per_group = {g: len({i.gallery.key for i in items if i.gallery.group == g}) for g in range(3)}
    assert per_group == {0: 5, 1: 6, 2: 6}
    png = fiq_asin("dress", "VA", 5)
    assert (root / "images" / f"{png}.png").is_file() and not (root / "images" / f"{png}.jpg").exists()
    assert not (root / "images" / f"{NO_IMAGE}.jpg").exists()

    dm = FashionIQDataModule(
        str(out),
        tokenizer=tokenizer_dir,
        train_transform=resize_crop(True, size=16, resize=20),
        eval_transform=resize_crop(False, size=16, resize=20),
        max_text_length=16,
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["reference_image"].shape == (2, 3, 16, 16) and batch["input_ids"].shape[0] == 2
    eval_batch = next(iter(dm.val_dataloader()))
    assert eval_batch["gallery_image"].shape[1] == 3 and not eval_batch["bad_images"]
    assert main(["check", str(out), "--workers", "2"]) == 0


def test_fashioniq_missing_image_counted_or_strict(
    fiq_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    strict = tmp_path / "strict"
    assert prepare("fashioniq", fiq_raw, strict, "--strict") == 2
    err = capsys.readouterr().err
    assert NO_IMAGE in err and "cap.toptee.train.json" in err
    assert_no_partial(strict, "FashionIQ")
    # a val split image without a file: left out of the gallery (--strict: an error too)
    split = fiq_raw / "image_splits" / "split.dress.val.json"
    _write(split, [*_read(split), NO_IMAGE])
    out = tmp_path / "datasets"
    assert prepare("fashioniq", fiq_raw, out, "--link", "symlink") == 0
    summary = capsys.readouterr().out
    assert "FashionIQ/toptee.train_dropped_missing_image" in summary
    assert "FashionIQ/dress.val_gallery_missing_images" in summary
    val = _read(out / "FashionIQ" / "captions" / "cap.dress.val.json")
    assert len(val) == 6 and NO_IMAGE not in {e["target"] for e in val}
    assert (out / "FashionIQ" / "images" / f"{fiq_asin('dress', 'TR', 1)}.jpg").is_symlink()
    assert prepare("fashioniq", fiq_raw, strict, "--strict") == 2
    assert "split.dress.val.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("broken", "needle"),
    [
        ("missing_file", "split.shirt.val.json"),
        ("missing_field", "'target'"),
        ("missing_images", "image folder"),
    ],
)
def test_fashioniq_bad_release_fails_cleanly(
    fiq_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, broken: str, needle: str
) -> None:
    if broken == "missing_file":
        (fiq_raw / "image_splits" / "split.shirt.val.json").unlink()
    elif broken == "missing_field":
        path = fiq_raw / "captions" / "cap.dress.val.json"
        entries = _read(path)
        del entries[1]["target"]
        _write(path, entries)
    else:
        (fiq_raw / "images").rename(fiq_raw / "imgs")
    out = tmp_path / "datasets"
    assert prepare("fashioniq", fiq_raw, out) == 2
    err = capsys.readouterr().err
    assert needle in err
    if broken == "missing_field":
        assert "cap.dress.val.json: entry 1" in err
    assert_no_partial(out, "FashionIQ")
    if broken == "missing_images":  # --images points elsewhere
        assert prepare("fashioniq", fiq_raw, out, "--images", str(fiq_raw / "imgs")) == 0


# --------------------------------------------------------------------------- Fashion-IQ-Cap

NORMAL = [
    "\nThe dress is a fitted, knee-length, sleeveless, solid-colored, modest, elegant, and simple design.",
    "\nThe dress is a short, fitted, patterned, and elegant piece with a simple design. It features a "
    "monochromatic color scheme with blue and white geometric patterns. The dress has a sleeveless style. "
    "The neckline is simple, and the hem is straight, giving it a conservative yet stylish look. The dress "
    "is not flowery or print-heavy, and it does not have a flare or looser fit.",
    "\nThe shirt is a button-up with a checkered print. It is a long-sleeved, patterned shirt with a collar.",
]
DEGENERATE = [
    "\nThe dress is a long, fitted, sleeveless, monochromatic, elegant, flowery, fitted, shiny, "
    + ", ".join(["fitted"] * 40),
    "\nThe dress is a long, fitted, solid green dress. "
    + "The dress is not revealing or sexy, but rather elegant and modest. The dress is not longer or "
    "shorter, but rather longer and more fitted. " * 4,
]


def test_repeat_share_separates_loops_from_long_captions() -> None:
    assert repeat_share("fitted, fitted, fitted, fitted, fitted", n=3) == pytest.approx(2 / 3)
    assert repeat_share("a red dress") == 0.0 and repeat_share("") == 0.0 and repeat_share("red red") == 0.0
    assert repeat_share("A V-neck; a v-neck!", n=2) == pytest.approx(1 / 3)  # "v-neck" is one word
    for caption in NORMAL:
        assert repeat_share(caption) < 0.2 and not is_degenerate(caption)
    for caption in DEGENERATE:
        assert repeat_share(caption) > 0.4 and is_degenerate(caption)
        assert not is_degenerate(caption, max_repeat_share=0.99)


def test_clean_entries_strips_dedupes_and_drops() -> None:
    assert normalize_space("\n  The  dress\n is red. ") == "The dress is red."
    entries = [
        {"image": "B1", "caption": NORMAL[0], "text_guidance": " is longer "},
        {"image": "B1", "caption": NORMAL[0].strip(), "text_guidance": "is longer"},  # same once cleaned
        {"image": "B1", "caption": NORMAL[2], "text_guidance": ""},  # same image, other caption: kept
        {"image": "B2", "caption": DEGENERATE[0], "text_guidance": ""},
        {"image": "B3", "caption": " \n", "text_guidance": ""},
    ]
    kept, stats = clean_entries(entries)
    assert [e["image"] for e in kept] == ["B1", "B1"]
    assert kept[0] == {"image": "B1", "caption": NORMAL[0].strip(), "text_guidance": "is longer"}
    assert (stats.read, stats.kept, stats.duplicates, stats.degenerate, stats.empty) == (5, 2, 1, 1, 1)
    assert entries[0]["caption"].startswith("\n")  # inputs untouched


def _cap_release(raw: Path) -> None:
    for split in ("train", "val"):
        for category in CATEGORIES:
            entries = [
                {"image": f"B0{category}{k}", "caption": NORMAL[k % 3], "text_guidance": ""} for k in range(3)
            ]
            entries += [entries[0], {"image": "B0X", "caption": DEGENERATE[1], "text_guidance": "is red"}]
            _write(raw / f"next_llava.{split}.{category}.caption.json", entries)


def test_fashioniq_cap_converts_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw, out = tmp_path / "UniFashion" / "dataset", tmp_path / "datasets"
    _cap_release(raw)
    assert prepare("fashioniq_cap", raw, out) == 0
    summary = capsys.readouterr().out
    for label in ("val.dress_kept", "train.toptee_dropped_duplicates", "val.shirt_dropped_degenerate"):
        assert f"FashionIQ-Cap/{label}" in summary
    written = sorted(p.name for p in (out / "FashionIQ-Cap").iterdir())
    assert written == sorted(f"next_llava.{s}.{c}.caption.json" for s in ("train", "val") for c in CATEGORIES)
    entries = _read(out / "FashionIQ-Cap" / "next_llava.val.dress.caption.json")
    assert [e["image"] for e in entries] == ["B0dress0", "B0dress1", "B0dress2"]
    assert all(not e["caption"].startswith("\n") for e in entries)
    # threshold 1 keeps the loop; --splits val needs only the val files
    for path in raw.glob("next_llava.train.*"):
        path.unlink()
    assert (
        prepare("fashioniq_cap", raw, out, "--splits", "val", "--max-repeat-share", "1", "--overwrite") == 0
    )
    assert len(_read(out / "FashionIQ-Cap" / "next_llava.val.dress.caption.json")) == 4
    assert not (out / "FashionIQ-Cap" / "next_llava.train.dress.caption.json").exists()


@pytest.mark.parametrize(
    ("broken", "needle"), [("missing_file", "next_llava.val.shirt"), ("missing_field", "'caption'")]
)
def test_fashioniq_cap_bad_release_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture, broken: str, needle: str
) -> None:
    raw, out = tmp_path / "dataset", tmp_path / "datasets"
    _cap_release(raw)
    path = raw / "next_llava.val.shirt.caption.json"
    if broken == "missing_file":
        path.unlink()
    else:
        entries = _read(path)
        del entries[2]["caption"]
        _write(path, entries)
    assert prepare("fashioniq_cap", raw, out) == 2
    err = capsys.readouterr().err
    assert needle in err and (broken == "missing_file" or "entry 2" in err)
    assert_no_partial(out, "FashionIQ-Cap")


# --------------------------------------------------------------------------- Polyvore Outfits

UNKNOWN_CATEGORY = 99999  # not one of the 153 mapped ids
assert UNKNOWN_CATEGORY not in POLYVORE_RAW_CATEGORY_IDS
CATS = POLYVORE_RAW_CATEGORY_IDS[:4]
# item = 100000000 + k; outfits as lists of k
DISJOINT = {"train": [[1, 2, 3, 4], [5, 6, 7], [8, 9, 30]], "test": [[10, 11, 12], [13, 14, 15, 16]]}
NONDISJOINT = {"train": [[1, 2, 10], [5, 6, 13, 14], [8, 9, 11]], "test": [[3, 4, 12], [7, 15, 16, 31]]}
NO_IMAGE_ITEM = 30  # in the metadata, no image
UNKNOWN_ITEM = 31  # image, but an unknown category


def item_id(k: int) -> str:
    return str(100000000 + k)


def _outfits(lists: list[list[int]], base: int) -> list[dict]:
    return [{"set_id": str(base + n), "items": [{"item_id": item_id(k), "index": j + 1} for j, k in enumerate(ks)]}
            for n, ks in enumerate(lists)]  # fmt: skip


@pytest.fixture
def polyvore_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "polyvore_outfits"
    items = sorted({k for v in (DISJOINT, NONDISJOINT) for s in v.values() for o in s for k in o})
    metadata = {
        item_id(k): {
            "url_name": f"item-number-{k}",
            "description": f"detail  {k}" if k % 2 else "",
            "title": "" if k == 1 else f"Item {k}",
            "category_id": str(UNKNOWN_CATEGORY if k == UNKNOWN_ITEM else CATS[k % 4]),
            "semantic_category": "tops",
        }
        for k in items
    }
    _write(raw / "polyvore_item_metadata.json", metadata)
    with (raw / "categories.csv").open("w", newline="") as f:
        csv.writer(f).writerows([[c, f"name {c}", "tops"] for c in (*CATS, UNKNOWN_CATEGORY)])
    for k in items:
        if k != NO_IMAGE_ITEM:
            _image(raw / "images" / f"{item_id(k)}.jpg", k)
    for variant, lists, base in (("disjoint", DISJOINT, 500), ("nondisjoint", NONDISJOINT, 700)):
        for split, outfits in lists.items():
            _write(raw / variant / f"{split}.json", _outfits(outfits, base + (0 if split == "train" else 50)))
        _write(raw / variant / "valid.json", [])
        # FITB: the blank of each test outfit is its last item; one wrong answer from another outfit
        questions = [
            {"question": [f"{base + 50 + n}_{j + 1}" for j in range(len(ks) - 1)],
             "answers": [f"{base}_1", f"{base + 50 + n}_{len(ks)}"], "blank_position": len(ks)}
            for n, ks in enumerate(lists["test"])
        ]  # fmt: skip
        _write(raw / variant / "fill_in_blank_test.json", questions)
        (raw / variant / "compatibility_test.txt").write_text("1 500_1 500_2\n")
    return raw


def test_polyvore_converts_official_layout(
    polyvore_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "datasets"
    assert prepare("polyvore", polyvore_raw, out, "--workers", "2") == 0
    summary = capsys.readouterr().out
    assert "PolyvoreOutfits/items_unknown_category" in summary
    assert "PolyvoreOutfits/outfit_items_missing_image" in summary
    root = out / "PolyvoreOutfits"
    meta = _read(root / "polyvore_item_metadata.json")
    assert item_id(UNKNOWN_ITEM) not in meta and meta[item_id(2)]["semantic_category"] == "tops"

    # pre-training items: the distinct items of the disjoint train outfits that have an image
    info = _read(root / "train_info.json")
    assert [e["id"] for e in info] == [100000000 + k for k in range(1, 10)]
    assert info[0] == {"images": f"{item_id(1)}.jpg", "id": 100000001, "title": "item number 1",
                       "description": "detail 1", "attributes_id": []}  # fmt: skip
    assert [p.text for p in PolyvoreItemSource(out).read().products][1] == "Item 2"

    for variant, lists in (("disjoint", DISJOINT), ("nondisjoint", NONDISJOINT)):
        train = _read(root / f"ocir_{variant}_train.json")
        test = _read(root / f"ocir_{variant}_test.json")
        # one entry per outfit: the blank plus the question are the outfit (dropped items removed)
        for entries, outfits in ((train, lists["train"]), (test, lists["test"])):
            real = [e for e in entries if not e.get("fake_data")]
            assert len(real) == len(outfits)
            for e, ks in zip(real, outfits, strict=True):
                good = [item_id(k) for k in ks if k not in (NO_IMAGE_ITEM, UNKNOWN_ITEM)]
                assert e["blank"] in good and e["question"] == [i for i in good if i != e["blank"]]
        assert all("fake_data" not in e for e in train)
        assert [e["fake_data"] for e in test] == [False] * 2 + [True] * (len(test) - 2)
        # fake entries put every other test item into the gallery
        test_items = {item_id(k) for ks in lists["test"] for k in ks if k != UNKNOWN_ITEM}
        assert {e["blank"] for e in test} == test_items
        assert all(e["question"] == [e["blank"]] for e in test if e["fake_data"])
        questions = read_ocir(out, variant, "test")
        assert sum(not q.fake_data for q in questions) == 2

    dm = PolyvoreOCIRDataModule(
        str(out),
        variant="nondisjoint",
        train_transform=resize_crop(True, size=16, resize=20),
        eval_transform=resize_crop(False, size=16, resize=20),
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["question_image"].shape == (2, 3, 16, 16) and batch["blank_category"].shape == (2,)
    eval_batch = next(iter(dm.val_dataloader()))
    assert eval_batch["blank_image"].shape[0] == 2 and not eval_batch["bad_images"]
    assert main(["check", str(out), "--workers", "2"]) == 0


def test_polyvore_blank_rules_and_options(polyvore_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert prepare("polyvore", polyvore_raw, out, "--variants", "disjoint", "--test-blank", "fitb") == 0
    test = _read(out / "PolyvoreOutfits" / "ocir_disjoint_test.json")
    assert [e["blank"] for e in test[:2]] == [item_id(12), item_id(16)]  # the FITB answers
    assert not (out / "PolyvoreOutfits" / "ocir_nondisjoint_test.json").exists()
    # the seeded draw is reproducible
    b, c = tmp_path / "b", tmp_path / "c"
    assert prepare("polyvore", polyvore_raw, b, "--pretrain-outfits", "both") == 0
    assert prepare("polyvore", polyvore_raw, c, "--pretrain-outfits", "both") == 0
    for name in ("ocir_disjoint_train.json", "ocir_nondisjoint_test.json", "train_info.json"):
        assert _read(b / "PolyvoreOutfits" / name) == _read(c / "PolyvoreOutfits" / name)
    ids = {e["id"] for e in _read(b / "PolyvoreOutfits" / "train_info.json")}
    assert 100000013 in ids and 100000001 in ids  # both variants' train items
    assert prepare("polyvore", polyvore_raw, tmp_path / "d", "--strict") == 2


@pytest.mark.parametrize(
    ("broken", "needle"),
    [
        ("missing_file", "nondisjoint/test.json"),
        ("missing_field", "'item_id'"),
        ("missing_category", "'category_id'"),
    ],
)
def test_polyvore_bad_release_fails_cleanly(
    polyvore_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, broken: str, needle: str
) -> None:
    if broken == "missing_file":
        (polyvore_raw / "nondisjoint" / "test.json").unlink()
    elif broken == "missing_field":
        path = polyvore_raw / "disjoint" / "train.json"
        outfits = _read(path)
        del outfits[1]["items"][0]["item_id"]
        _write(path, outfits)
    else:
        path = polyvore_raw / "polyvore_item_metadata.json"
        meta = _read(path)
        del meta[item_id(5)]["category_id"]
        _write(path, meta)
    out = tmp_path / "datasets"
    assert prepare("polyvore", polyvore_raw, out) == 2
    err = capsys.readouterr().err
    assert needle in err
    if broken == "missing_field":
        assert "disjoint/train.json: outfit 1" in err
    if broken == "missing_category":
        assert item_id(5) in err
    assert_no_partial(out, "PolyvoreOutfits")
