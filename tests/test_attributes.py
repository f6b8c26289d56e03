"""Pseudo-attribute mining (``fvl-data attributes``): vocabulary, assignment, rewriting files."""

from __future__ import annotations

import json
import random
import shutil
from functools import partial
from pathlib import Path

import pytest
from sklearn.feature_extraction.text import CountVectorizer

from fashion_vl.cli.data import main as fvl_data
from fashion_vl.data.check import check_data_dir
from fashion_vl.data.formats import BigFACADSource, Fashion200kSource, FashionGenSource, PolyvoreItemSource
from fashion_vl.data.prepare import attributes
from fashion_vl.data.prepare.attributes import (
    assign_attributes,
    candidates,
    mine_vocabulary,
    write_attributes,
)

TEXTS = [
    "Black v-neck dress. Made in Italy.",
    "black V-neck sweater, 100% wool",
    "Black a-line skirt in wool",
    "white a-line skirt; 100% wool",
    "the black wool coat",
    "pleated skirt in the wool of the lamb",
]
# document frequencies: wool 5, black 4, skirt 3, then five entries with 2 (alphabetical)
EXPECTED = ["wool", "black", "skirt", "a-line", "a-line skirt", "black v-neck", "v-neck"]

PRODUCT_FILES = [
    "FashionGen/train_info.json",
    "FashionGen/val_info.json",
    "BigFACAD/train_info.json",
    "Fashion200k/train_info.json",
    "Fashion200k/test_info.json",
    "PolyvoreOutfits/train_info.json",
]
TRAIN_FILES = [f for f in PRODUCT_FILES if f.endswith("train_info.json")]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(root: Path, rel: str) -> list[dict]:
    return json.loads((root / rel).read_text())


# --- mining ---------------------------------------------------------------------------------------


def test_vocabulary_order_ties_and_filters() -> None:
    vocab = mine_vocabulary(TEXTS, min_count=2)
    assert vocab == EXPECTED
    # deterministic: the order of the texts does not matter
    shuffled = TEXTS[:]
    random.Random(0).shuffle(shuffled)
    assert mine_vocabulary(shuffled, min_count=2) == EXPECTED
    # the cut-off breaks the tie among the 2s alphabetically
    assert mine_vocabulary(TEXTS, vocab_size=4, min_count=2) == EXPECTED[:4]
    assert mine_vocabulary(TEXTS, min_count=3) == ["wool", "black", "skirt"]
    assert mine_vocabulary(TEXTS, min_count=2, max_ngram=1) == ["wool", "black", "skirt", "a-line", "v-neck"]


def test_stop_words_numbers_and_sentence_boundaries_make_no_candidates() -> None:
    vocab = mine_vocabulary(TEXTS, min_count=1, max_ngram=3)
    assert {"in", "the", "in the", "100", "of"}.isdisjoint(vocab)  # each in >= 2 texts
    # plain CountVectorizer(stop_words="english") would count "skirt wool" twice (texts 3 and 6)
    plain = CountVectorizer(stop_words="english", ngram_range=(1, 2)).fit(TEXTS)
    assert "skirt wool" in plain.vocabulary_ and "skirt wool" not in vocab
    assert "dress italy" not in vocab  # "dress. Made in Italy": sentence boundary and stop words
    assert "black a-line skirt" in vocab and "v-neck" in vocab and "line" not in vocab
    assert candidates("Women's 3-button top, 100% cotton") == [
        "womens",
        "womens 3-button",
        "3-button",
        "3-button top",
        "top",
        "cotton",
    ]
    with pytest.raises(ValueError, match="lower --min-count"):
        mine_vocabulary(TEXTS, min_count=7)


def test_assign_attributes() -> None:
    vocab = ["black", "wool", "a-line", "a-line skirt", "skirt", "v-neck", "long sleeve"]
    assert assign_attributes("Long-sleeve black wool skirt", vocab) == [0, 1, 4]
    assert assign_attributes("SKIRT, a-line. Black!", vocab) == [0, 2, 4]
    assert assign_attributes("A-LINE SKIRT", vocab) == [2, 3, 4]
    assert assign_attributes("line skirt", vocab) == [4]
    assert assign_attributes("long sleeve", vocab) == [6]
    assert assign_attributes("long. sleeve", vocab) == []
    assert assign_attributes("long in sleeve", vocab) == []
    assert assign_attributes("", vocab) == []
    # the same analysis as the vectorizer used for mining
    mined = mine_vocabulary(TEXTS, min_count=1)
    vectorizer = CountVectorizer(analyzer=partial(candidates, max_ngram=2), vocabulary=mined, binary=True)
    rows = vectorizer.transform(TEXTS)
    for i, text in enumerate(TEXTS):
        assert assign_attributes(text, mined) == sorted(rows[i].indices.tolist())


# --- rewriting a data folder ----------------------------------------------------------------------


def test_write_attributes_on_the_fixture_folder(fixture_data: Path) -> None:
    before = snapshot(fixture_data)
    summary = write_attributes(fixture_data, min_count=1)
    vocab = summary.vocabulary
    saved = json.loads((fixture_data / "attributes_vocab.json").read_text())
    assert saved["attributes"] == vocab and saved["vocab_size"] == len(vocab)
    assert (saved["min_count"], saved["max_ngram"]) == (1, 2)
    assert saved["fitted_on"] == TRAIN_FILES
    # fitted on train only: words only in FashionGen val texts are not attributes
    assert {"denim", "jacket", "trousers", "grey", "straight-leg"}.isdisjoint(vocab)
    assert {"wool", "navy", "a-line", "sleeveless", "a-line dress"} <= set(vocab)
    old_by_file = {rel: json.loads(before[rel]) for rel in PRODUCT_FILES}
    for rel in PRODUCT_FILES:
        new = load(fixture_data, rel)
        old = old_by_file[rel]
        assert len(new) == len(old)
        for o, n in zip(old, new):
            assert list(n) == list(o)  # same fields in the same order
            assert {k: v for k, v in n.items() if k != "attributes_id"} == {
                k: v for k, v in o.items() if k != "attributes_id"
            }
            assert n["attributes_id"] == sorted(set(n["attributes_id"]))
            assert all(0 <= a < len(vocab) for a in n["attributes_id"])
    val = load(fixture_data, "FashionGen/val_info.json")
    assert val[1]["attributes_id"] == [vocab.index("wool")]  # "Grey wool trousers. Straight-leg ..."
    assert (
        load(fixture_data, "Fashion200k/test_info.json")[0]["attributes_id"] == []
    )  # "pink pleated mini skirt"
    # every file not of a product dataset is untouched, nothing else was added
    after = snapshot(fixture_data)
    assert set(after) == set(before) | {"attributes_vocab.json"}
    assert all(after[k] == v for k, v in before.items() if k not in PRODUCT_FILES)
    # the readers still accept the files
    assert len(FashionGenSource(fixture_data, "val").read()) == 2
    assert len(BigFACADSource(fixture_data, "train").read()) == 2
    assert len(Fashion200kSource(fixture_data, "test").read()) == 1
    assert PolyvoreItemSource(fixture_data, "train").read().products[0].attributes
    rows = {(s.dataset, s.split): s for s in summary.splits}
    assert rows["BigFACAD", "val"].status == "absent"
    assert rows["FashionGen", "train"].products == 3 and rows["FashionGen", "train"].with_attributes == 3


def test_vocab_size_bounds_the_ids(fixture_data: Path) -> None:
    summary = write_attributes(fixture_data, vocab_size=3, min_count=1)
    assert len(summary.vocabulary) == 3
    ids = [a for rel in PRODUCT_FILES for e in load(fixture_data, rel) for a in e["attributes_id"]]
    assert ids and max(ids) == 2


def test_rewritten_synthetic_data_still_passes_check(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "datasets"
    shutil.copytree(synth_dir, data)
    summary = write_attributes(data, min_count=2)
    assert 50 < len(summary.vocabulary) <= 2232
    assert all(s.status == "written" and s.with_attributes == s.products for s in summary.splits)
    reports = [r for r in check_data_dir(data, decode=False, workers=2) if not r.absent]
    assert reports and all(r.ok for r in reports), [(r.dataset, r.split, r.problems) for r in reports]
    table = FashionGenSource(data, "train").read()
    vocab = summary.vocabulary
    assert all(
        [vocab[a] for a in p.attributes] == [t for t in vocab if t in candidates(p.text)]
        for p in table.products
    )


def test_a_failure_while_writing_leaves_the_folder_unchanged(fixture_data: Path, monkeypatch) -> None:
    before = snapshot(fixture_data)
    real = attributes._write_temp
    calls = []

    def fail_on_second(target: Path, payload) -> Path:
        calls.append(target)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(target, payload)

    monkeypatch.setattr(attributes, "_write_temp", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_attributes(fixture_data, min_count=1, backup=True)
    assert len(calls) == 2
    assert snapshot(fixture_data) == before  # no file changed, no temporary left


def test_a_failure_while_replacing_rolls_back(fixture_data: Path, monkeypatch) -> None:
    before = snapshot(fixture_data)
    real = attributes.os.replace
    calls = []

    def fail_on_third(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("replace failed")
        real(src, dst)

    monkeypatch.setattr(attributes.os, "replace", fail_on_third)
    with pytest.raises(OSError, match="replace failed"):
        write_attributes(fixture_data, min_count=1)
    assert len(calls) > 3  # the two done replacements were undone
    assert snapshot(fixture_data) == before


def test_backup_keeps_the_first_original(fixture_data: Path) -> None:
    original = (fixture_data / "FashionGen" / "train_info.json").read_bytes()
    write_attributes(fixture_data, min_count=1, backup=True)
    backup = fixture_data / "FashionGen" / "train_info.orig.json"
    assert backup.read_bytes() == original
    write_attributes(fixture_data, min_count=2, backup=True)
    assert backup.read_bytes() == original


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_dry_run_writes_nothing(fixture_data: Path, capsys) -> None:
    before = snapshot(fixture_data)
    assert fvl_data(["attributes", str(fixture_data), "--min-count", "1", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "dry run" in out.out and "FashionGen" in out.out
    assert "76 attributes" in out.err and "a-line dress" in out.err and "nothing written" in out.err
    assert snapshot(fixture_data) == before


def test_cli_writes_the_chosen_datasets(fixture_data: Path) -> None:
    before = snapshot(fixture_data)
    code = fvl_data(
        ["attributes", str(fixture_data), "--datasets", "fashion200k", "--min-count", "1", "--max-ngram", "3"]
    )
    assert code == 0
    after = snapshot(fixture_data)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {"Fashion200k/train_info.json", "Fashion200k/test_info.json", "attributes_vocab.json"}
    vocab = json.loads(after["attributes_vocab.json"])
    assert vocab["fitted_on"] == ["Fashion200k/train_info.json"] and vocab["max_ngram"] == 3
    assert "sleeveless a-line dress" in vocab["attributes"]


def test_cli_errors(tmp_path: Path, fixture_data: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert fvl_data(["attributes", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fvl_data(["attributes", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "none of the datasets" in err and str(empty) in err
    assert fvl_data(["attributes", str(fixture_data), "--datasets", "fashioniq"]) == 2
    assert "unknown datasets" in capsys.readouterr().err
    before = snapshot(fixture_data)
    assert fvl_data(["attributes", str(fixture_data), "--min-count", "50"]) == 2
    assert "lower --min-count" in capsys.readouterr().err
    assert snapshot(fixture_data) == before
