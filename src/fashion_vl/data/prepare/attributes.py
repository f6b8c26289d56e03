"""Pseudo-attributes for PAC: mining an attribute vocabulary from product texts and rewriting ids.

FashionViL's PAC task classifies each product's ``attributes_id`` (ids in ``[0, 2232)`` of attribute
words and noun phrases mined from the product texts; the authors' miner and threshold are unknown).
This module rebuilds such ids for data that lacks good ones (``fvl-data attributes``).

Mining rule (:func:`candidates`, :func:`mine_vocabulary`):

1. The text (the product text the readers build, e.g. FashionGen ``title. description``) is
   lower-cased and accent-stripped by scikit-learn's ``CountVectorizer`` preprocessor; apostrophes
   are deleted (``women's`` -> ``womens``).
2. It is cut into *phrases* at every run of characters that are not letters, digits, whitespace,
   hyphens or apostrophes (full stops, commas, ``/``, ``&``, ``_``, brackets, ...).
3. Each phrase is tokenized with :data:`TOKEN_PATTERN`: letters/digits, possibly joined by single
   hyphens, so ``v-neck``, ``a-line``, ``t-shirt`` and ``two-button`` stay one token.
4. A token is a *content* token if it has at least two characters, contains a letter and is not in
   :data:`STOP_WORDS` (scikit-learn's English list minus words that name garment parts or
   attributes: ``top``, ``bottom``, ``front``, ``back``, ``side``, ``full``, ``thick``, ``thin``,
   ``detail``).
5. The candidates of a text are the distinct 1..``max_ngram``-grams of *consecutive content tokens
   inside one phrase*, joined by single spaces. So a stop word or a number breaks a phrase
   (``sleeve in black`` gives ``sleeve`` and ``black``, not ``sleeve black``) and n-grams never span
   a sentence boundary. N-grams made only of stop words or numbers (``in the``, ``100``, ``2 3``)
   are thus never candidates: they name no visual property, yet they occur in nearly every text and
   would otherwise fill the top of a frequency-ranked vocabulary.
6. The document frequency of a candidate is the number of *training* products whose text contains
   it (``CountVectorizer(analyzer=candidates, binary=True, min_df=min_count)``). Candidates with
   frequency >= ``min_count`` are sorted by descending frequency, ties alphabetically, and the first
   ``vocab_size`` are kept; an attribute's id is its position in that list. The result depends only
   on the multiset of training texts, not on their order or on the platform.

A product's ids (:func:`assign_attributes`) are the sorted ids of the vocabulary entries among its
text's candidates (the same analysis as in mining), so an entry is present only where it occurs as
a whole phrase piece (``a-line`` does not match ``line``).

Why not ``CountVectorizer(stop_words="english", ngram_range=..., max_features=...)`` directly: it
drops stop words *before* forming n-grams (``sleeve in black`` -> ``sleeve black``), forms n-grams
across sentences, and ``max_features`` breaks frequency ties at the cut-off in an unspecified order.
spaCy / NLTK noun chunking was not used: their models and corpora (``en_core_web_sm``, punkt,
averaged perceptron tagger) are separate downloads that are not available offline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from fashion_vl.data.formats import (
    NUM_PSEUDO_ATTRIBUTES,
    BigFACADSource,
    Fashion200kSource,
    FashionGenSource,
    PolyvoreItemSource,
    ProductSource,
)
from fashion_vl.data.formats._json import load_entries

log = logging.getLogger(__name__)

VOCAB_FILE = "attributes_vocab.json"
TOKEN_PATTERN = r"(?u)[^\W_]+(?:-[^\W_]+)*"
# scikit-learn's list has words that are garment parts or attributes in product texts.
KEEP_WORDS = frozenset({"back", "bottom", "detail", "front", "full", "side", "thick", "thin", "top"})
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS - KEEP_WORDS)

_BOUNDARY = re.compile(r"[^\w\s'\u2019-]+|_+")
_APOSTROPHE = re.compile(r"['\u2019]")
_VECTORIZER = CountVectorizer(lowercase=True, strip_accents="unicode", token_pattern=TOKEN_PATTERN)
_preprocess = _VECTORIZER.build_preprocessor()
_tokenize = _VECTORIZER.build_tokenizer()

# dataset name (CLI) -> (source class, train splits, other splits)
DATASETS: dict[str, tuple[type[ProductSource], tuple[str, ...], tuple[str, ...]]] = {
    "fashiongen": (FashionGenSource, ("train",), ("val",)),
    "bigfacad": (BigFACADSource, ("train",), ("val",)),
    "fashion200k": (Fashion200kSource, ("train",), ("test",)),
    "polyvore": (PolyvoreItemSource, ("train",), ()),
}


def _is_content(token: str) -> bool:
    return len(token) > 1 and token not in STOP_WORDS and any(c.isalpha() for c in token)


def candidates(text: str, max_ngram: int = 2) -> list[str]:
    """The distinct candidate attributes of ``text`` in order of appearance (module docstring)."""
    text = _APOSTROPHE.sub("", _preprocess(text))
    found: dict[str, None] = {}
    for phrase in _BOUNDARY.split(text):
        run: list[str] = []
        for token in [*_tokenize(phrase), ""]:  # "" ends the last run
            if _is_content(token):
                run.append(token)
                continue
            for i in range(len(run)):
                for n in range(1, min(max_ngram, len(run) - i) + 1):
                    found.setdefault(" ".join(run[i : i + n]))
            run = []
    return list(found)


def _document_frequencies(texts: Sequence[str], min_count: int, max_ngram: int) -> dict[str, int]:
    vectorizer = CountVectorizer(
        analyzer=partial(candidates, max_ngram=max_ngram), binary=True, min_df=min_count, dtype=np.int64
    )
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError as err:  # "empty vocabulary" / "After pruning, no terms remain"
        raise ValueError(
            f"no attribute occurs in >= {min_count} of the {len(texts)} training texts ({err}); "
            "lower --min-count"
        ) from err
    df = np.asarray(counts.sum(axis=0)).ravel()
    return {term: int(df[j]) for term, j in vectorizer.vocabulary_.items()}


def mine_vocabulary(
    texts: Iterable[str], vocab_size: int = NUM_PSEUDO_ATTRIBUTES, min_count: int = 5, max_ngram: int = 2
) -> list[str]:
    """The attribute vocabulary of ``texts``: the ``vocab_size`` most frequent candidates.

    Args:
        texts: one text per product (the documents whose frequencies are counted).
        vocab_size: at most this many entries (the PAC head's number of classes).
        min_count: keep candidates found in at least this many texts.
        max_ngram: longest n-gram (1 = single words).

    Returns:
        Entries sorted by descending document frequency, then alphabetically; ids are positions.
    """
    return list(_mine(list(texts), vocab_size, min_count, max_ngram))


def _mine(texts: list[str], vocab_size: int, min_count: int, max_ngram: int) -> dict[str, int]:
    if vocab_size < 1 or min_count < 1 or max_ngram < 1:
        raise ValueError(
            f"vocab_size, min_count and max_ngram must be >= 1 (got {vocab_size}, {min_count}, {max_ngram})"
        )
    if not texts:
        raise ValueError("no training texts to mine attributes from")
    df = _document_frequencies(texts, min_count, max_ngram)
    ranked = sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]
    return dict(ranked)


def assign_attributes(text: str, vocabulary: Sequence[str]) -> list[int]:
    """Sorted ids (positions in ``vocabulary``) of the vocabulary entries among ``text``'s candidates."""
    return _Assigner(vocabulary)(text)


class _Assigner:
    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.index = {term: i for i, term in enumerate(vocabulary)}
        self.max_ngram = max((term.count(" ") + 1 for term in vocabulary), default=1)

    def __call__(self, text: str) -> list[int]:
        return sorted(self.index[c] for c in candidates(text, self.max_ngram) if c in self.index)


@dataclass
class SplitSummary:
    """What happened to one annotation file."""

    dataset: str
    split: str
    path: Path
    status: str  # "written", "dry run" or "absent"
    products: int = 0
    with_attributes: int = 0
    mean_attributes: float = 0.0

    def row(self) -> dict[str, object]:
        return dict(
            dataset=self.dataset,
            split=self.split,
            products=self.products if self.status != "absent" else None,
            with_attrs=self.with_attributes if self.status != "absent" else None,
            mean_attrs=self.mean_attributes if self.status != "absent" else None,
            status=self.status,
        )


@dataclass
class AttributesSummary:
    """Result of :func:`write_attributes`."""

    vocabulary: list[str]
    document_frequency: list[int]
    vocab_path: Path
    fitted_on: list[str]
    splits: list[SplitSummary] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    dry_run: bool = False

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


@dataclass
class _Pending:
    summary: SplitSummary
    entries: list[dict[str, Any]]
    is_train: bool
    texts: list[str]


def _write_temp(target: Path, payload: Any) -> Path:
    """``payload`` as JSON in a new temporary file beside ``target`` (same file system)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _copy_temp(source: Path, target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _commit(replacements: list[tuple[Path, Path]]) -> None:
    """Move every temporary onto its target, all or nothing.

    Phase 1 (temporaries) already happened; here each existing target is first hard-linked (or
    copied) aside, so if a later ``os.replace`` fails the ones already done are put back.
    """
    saved: list[tuple[Path, Path | None]] = []  # (target, its old content or None if it was new)
    done: list[tuple[Path, Path | None]] = []
    try:
        for _, target in replacements:
            if target.exists():
                fd, old = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
                os.close(fd)
                os.unlink(old)
                try:
                    os.link(target, old)
                except OSError:
                    shutil.copyfile(target, old)
                saved.append((target, Path(old)))
            else:
                saved.append((target, None))
        for (tmp, target), entry in zip(replacements, saved):
            os.replace(tmp, target)
            done.append(entry)
    except BaseException:
        for target, old in reversed(done):
            if old is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(old, target)
        for tmp, _ in replacements:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for _, old in saved:
            if old is not None:
                old.unlink(missing_ok=True)


def _resolve_datasets(datasets: Iterable[str]) -> list[str]:
    names = [d.strip().lower() for d in datasets if d.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown or not names:
        raise ValueError(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    return list(dict.fromkeys(names))


def write_attributes(
    data_dir: str | Path,
    datasets: Iterable[str] = tuple(DATASETS),
    vocab_size: int = NUM_PSEUDO_ATTRIBUTES,
    min_count: int = 5,
    max_ngram: int = 2,
    out_vocab: str | Path | None = None,
    backup: bool = False,
    dry_run: bool = False,
) -> AttributesSummary:
    """Mine a vocabulary on the train splits and rewrite ``attributes_id`` in every split.

    Args:
        data_dir: the ``datasets/`` folder.
        datasets: names among :data:`DATASETS`; a dataset whose files are absent is skipped.
        vocab_size: at most this many attributes; the PAC head's classes (``data.num_attributes``)
            must be at least the vocabulary size.
        min_count: minimum number of training products an attribute occurs in.
        max_ngram: longest attribute, in words.
        out_vocab: where to save the vocabulary (default ``<data_dir>/attributes_vocab.json``).
        backup: keep each original file as ``<name>.orig.json`` (an existing backup is kept).
        dry_run: compute everything, write nothing.

    Only ``attributes_id`` changes; every other field and the order of entries stay. All files are
    written to temporaries first and then moved into place, so a failure leaves the folder as it was.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    names = _resolve_datasets(datasets)
    if vocab_size > NUM_PSEUDO_ATTRIBUTES:
        log.warning(
            "vocab_size %d > %d: set data.num_attributes (the PAC head's classes) to at least the "
            "vocabulary size, and pass it to `fvl-data check --num-attributes`",
            vocab_size,
            NUM_PSEUDO_ATTRIBUTES,
        )
    vocab_path = Path(out_vocab).expanduser() if out_vocab is not None else data_dir / VOCAB_FILE

    pending: list[_Pending] = []
    splits: list[SplitSummary] = []
    for name in names:
        cls, train_splits, other_splits = DATASETS[name]
        for split in (*train_splits, *other_splits):
            source = cls(data_dir, split)
            path = source.annotation_path()
            summary = SplitSummary(cls.dataset, split, path, "dry run" if dry_run else "written")
            if not path.is_file():
                summary.status = "absent"
                splits.append(summary)
                log.debug("%s/%s: %s not found, skipped", cls.dataset, split, path)
                continue
            table = source.read()  # validates the file; texts built exactly as for training
            entries = load_entries(path, dataset=cls.dataset, data_dir=data_dir)
            texts = [p.text for p in table.products]
            pending.append(_Pending(summary, entries, split in train_splits, texts))
            splits.append(summary)
    if not pending:
        raise FileNotFoundError(
            f"none of the datasets {', '.join(names)} found under {data_dir} "
            f"(looked for {', '.join(str(s.path) for s in splits)})"
        )
    train = [p for p in pending if p.is_train]
    if not train:
        raise FileNotFoundError(f"no training split found under {data_dir} to mine attributes from")

    mined = _mine([t for p in train for t in p.texts], vocab_size, min_count, max_ngram)
    vocabulary = list(mined)
    assign = _Assigner(vocabulary)
    for p in pending:
        ids = [assign(text) for text in p.texts]
        for entry, attribute_ids in zip(p.entries, ids):
            entry["attributes_id"] = attribute_ids  # same key, same position in the object
        p.summary.products = len(ids)
        p.summary.with_attributes = sum(bool(i) for i in ids)
        p.summary.mean_attributes = sum(map(len, ids)) / max(len(ids), 1)

    fitted_on = [p.summary.path.relative_to(data_dir).as_posix() for p in train]
    summary = AttributesSummary(
        vocabulary=vocabulary,
        document_frequency=list(mined.values()),
        vocab_path=vocab_path,
        fitted_on=fitted_on,
        splits=splits,
        dry_run=dry_run,
    )
    if dry_run:
        return summary

    vocab_payload = {
        "vocab_size": len(vocabulary),
        "min_count": min_count,
        "max_ngram": max_ngram,
        "fitted_on": fitted_on,
        "attributes": vocabulary,
        "document_frequency": summary.document_frequency,
    }
    replacements: list[tuple[Path, Path]] = []  # (temporary, target)
    try:
        for p in pending:
            path = p.summary.path
            if backup:
                original = path.with_name(f"{path.stem}.orig.json")
                if original.exists():
                    log.warning("keeping the existing backup %s (it holds the earliest ids)", original)
                else:
                    replacements.append((_copy_temp(path, original), original))
                    summary.backups.append(original)
            replacements.append((_write_temp(path, p.entries), path))
        vocab_path.parent.mkdir(parents=True, exist_ok=True)
        replacements.append((_write_temp(vocab_path, vocab_payload), vocab_path))
    except BaseException:
        for tmp, _ in replacements:
            tmp.unlink(missing_ok=True)
        raise
    _commit(replacements)
    return summary
