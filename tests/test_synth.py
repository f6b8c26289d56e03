"""Synthetic data: deterministic per seed, in the real formats, and carrying signal."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from fashion_vl.data.formats import (
    FASHIONIQ_CATEGORIES,
    BigFACADSource,
    Fashion200kSource,
    FashionGenSource,
    PolyvoreItemSource,
    read_fashioniq,
    read_ocir,
    read_polyvore_metadata,
)
from fashion_vl.data.synth import generate
from fashion_vl.data.synth.taxonomy import ATTRIBUTE_VOCAB, sample_garment
from fashion_vl.data.synth.text import relative_captions


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path: Path, synth_dir: Path) -> None:
    again = tmp_path / "again"
    generate(again, size="tiny", seed=0, image_size=64, workers=1)  # other worker count, same bytes
    assert tree_digest(again) == tree_digest(synth_dir)
    other = tmp_path / "other"
    generate(other, size="tiny", seed=1, image_size=64, workers=2)
    assert tree_digest(other) != tree_digest(synth_dir)


def test_refuses_to_overwrite_without_flag(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(out, size="tiny")
    assert (out / "keep.txt").read_text() == "mine"


def test_every_reader_loads_the_synthetic_output(synth_dir: Path) -> None:
    assert len(FashionGenSource(synth_dir, "train").read()) == 48
    assert len(FashionGenSource(synth_dir, "val").read()) == 24
    assert (
        len(BigFACADSource(synth_dir, "train").read()) > 0
        and len(BigFACADSource(synth_dir, "val").read()) > 0
    )
    assert (
        len(Fashion200kSource(synth_dir, "train").read()) > 0
        and len(Fashion200kSource(synth_dir, "test").read()) > 0
    )
    assert len(PolyvoreItemSource(synth_dir).read()) > 0
    meta = read_polyvore_metadata(synth_dir)
    for variant in ("disjoint", "nondisjoint"):
        for split in ("train", "test"):
            for q in read_ocir(synth_dir, variant, split):
                assert q.blank in meta and all(i in meta for i in q.question)
    for category in FASHIONIQ_CATEGORIES:
        assert read_fashioniq(synth_dir, category, "train")
        val = read_fashioniq(synth_dir, category, "val")
        queries = [e for e in val if not e.fake_data]
        assert len(queries) == 8 and {e.garment_class for e in val} == {FASHIONIQ_CATEGORIES.index(category)}
        # every image of the val split is in the gallery, once, with one target_id
        split_images = json.loads(
            (synth_dir / "FashionIQ" / "image_splits" / f"split.{category}.val.json").read_text()
        )
        assert sorted({e.target for e in val}) == sorted(split_images)
        assert len({e.target_id for e in val}) == len(split_images)


def test_disjoint_split_shares_no_items(synth_dir: Path) -> None:
    train = {i for q in read_ocir(synth_dir, "disjoint", "train") for i in (*q.question, q.blank)}
    test = {i for q in read_ocir(synth_dir, "disjoint", "test") for i in (*q.question, q.blank)}
    assert not train & test
    nd_test = {
        i
        for q in read_ocir(synth_dir, "nondisjoint", "test")
        if not q.fake_data
        for i in (*q.question, q.blank)
    }
    assert nd_test & train  # the non-disjoint split reuses training items


def test_text_states_the_attributes_that_drew_the_picture(synth_dir: Path) -> None:
    for product in FashionGenSource(synth_dir, "train").read().products:
        words = product.text.lower()
        for attribute in product.attributes:
            name = ATTRIBUTE_VOCAB[attribute]
            assert name in words, f"{name!r} not in {product.text!r}"


def test_fashion200k_families_differ_by_one_title_word(synth_dir: Path) -> None:
    titles = [p.text.split() for p in Fashion200kSource(synth_dir, "test").read().products]
    one_word_pairs = sum(
        1
        for i, a in enumerate(titles)
        for b in titles[i + 1 :]
        if len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    )
    assert one_word_pairs >= 8


def test_relative_captions_describe_the_change() -> None:
    rng = random.Random(0)
    source = sample_garment(rng)
    target = source.changed(rng, ("colour",))
    captions = relative_captions(source, target, ("colour",), rng)
    assert len(captions) == 2 and any(target.colour in c or "darker" in c or "lighter" in c for c in captions)


def test_llava_captions_have_the_reference_quirks(synth_dir: Path) -> None:
    entries = [
        e
        for split in ("train", "val")
        for c in FASHIONIQ_CATEGORIES
        for e in json.loads(
            (synth_dir / "FashionIQ-Cap" / f"next_llava.{split}.{c}.caption.json").read_text()
        )
    ]
    assert all(
        e["caption"].startswith("\n") and set(e) == {"image", "caption", "text_guidance"} for e in entries
    )
