"""What the try-on readers share: the record, pairs files and caption files.

Both VITON-HD (:mod:`~fashion_vl.data.formats.vitonhd`) and Dress Code
(:mod:`~fashion_vl.data.formats.dresscode`) produce :class:`TryOnRecord`, so one
:class:`~fashion_vl.data.tryon.TryOnDataset` reads either. A record holds paths only: nothing is
opened until an item is loaded (:func:`missing_files` checks existence on demand).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.formats._text import read_utf8

TRYON_MODES = ("paired", "unpaired")


@dataclass(frozen=True)
class TryOnRecord:
    """One try-on example: a person, the garment to put on them, and every map the model reads.

    A ``None`` map is derived by the dataset: ``agnostic`` from the person image greyed under the
    mask, the mask from ``label_map`` (pixels whose label is in ``mask_labels``), ``cloth_mask`` from
    the non-white pixels of the cloth image; a missing ``densepose`` or ``sketch`` is all zeros.
    """

    dataset: str  # "vitonhd" | "dresscode"
    split: str  # "train" | "test"
    person: str  # person image file name as in the pairs file ("00006_00.jpg")
    cloth: str  # cloth image file name ("00008_00.jpg"); the person's own in paired mode
    image: Path
    cloth_image: Path
    caption: str = ""
    agnostic: Path | None = None
    agnostic_mask: Path | None = None  # white = the area to paint
    cloth_mask: Path | None = None
    densepose: Path | None = None  # RGB rendering (VITON-HD) or part-id map (``densepose_labels``)
    densepose_labels: bool = False
    sketch: Path | None = None  # white lines on black (MGD)
    label_map: Path | None = None  # Dress Code human parsing (the mask is derived from it)
    mask_labels: tuple[int, ...] = ()
    keypoints: Path | None = None  # Dress Code OpenPose JSON (not read by the dataset)
    category: str = "upper_body"

    def paths(self) -> dict[str, Path]:
        """Every file the record names (the ``None`` ones left out)."""
        names = ("image", "cloth_image", "agnostic", "agnostic_mask", "cloth_mask", "densepose",
                 "sketch", "label_map")  # fmt: skip
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def read_pairs(path: Path, *, dataset: str, hint: str, max_columns: int = 2) -> list[tuple[int, list[str]]]:
    """``(line number, columns)`` for every non-blank line of a pairs file (``person.jpg cloth.jpg``).

    Lines need 2 to ``max_columns`` whitespace-separated columns; anything else is a
    :class:`DataFormatError` naming file and line. A missing file is a :class:`MissingDataFileError`
    that says how to produce one (``hint``).
    """
    if not path.is_file():
        raise MissingDataFileError(f"{dataset} pairs file not found: {path}\n{hint}")
    rows = []
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        columns = line.split()
        if not columns:
            continue
        if not 2 <= len(columns) <= max_columns:
            want = "'person.jpg cloth.jpg'" + (" [category]" if max_columns > 2 else "")
            raise DataFormatError(f"{path}:{number}: expected {want}, found {line.rstrip()!r:.120}")
        rows.append((number, columns))
    return rows


class CaptionTable:
    """Garment captions in either released form, looked up by cloth file name.

    * ``{"<id>_00.jpg": "caption"}`` (UniFashion's ``datasetcap.<split>.caption.json``): keyed by the
      full cloth file name.
    * ``{"<id>": ["phrase", ...]}`` (MGD's ``captions.json``, ``fine_captions.json``): keyed by the cloth
      name up to its first ``_`` (the first 5 characters for VITON-HD's ``00006_00.jpg``); the phrases
      are joined with ``", "``.
    """

    def __init__(self, entries: Mapping[str, str], by_prefix: bool, path: Path | None = None) -> None:
        self.entries = dict(entries)
        self.by_prefix = by_prefix
        self.path = path

    @classmethod
    def empty(cls) -> CaptionTable:
        return cls({}, False)

    @classmethod
    def load(cls, path: Path) -> CaptionTable:
        if not path.is_file():
            raise MissingDataFileError(f"try-on captions file not found: {path}")
        try:
            data = json.loads(read_utf8(path))
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise DataFormatError(f"{path}: expected a JSON object of captions, found {type(data).__name__}")
        kinds = {isinstance(v, str) for v in data.values()}
        entries = {}
        for key, value in data.items():
            if isinstance(value, list) and all(isinstance(p, str) for p in value):
                entries[key] = ", ".join(p.strip() for p in value if p.strip())
            elif isinstance(value, str):
                entries[key] = value.strip()
            else:
                raise DataFormatError(
                    f"{path}: caption of '{key}' should be a string or a list of strings, found {value!r:.80}"
                )
        if len(kinds) > 1:
            raise DataFormatError(
                f"{path}: mixes string captions and lists of phrases; use one form "
                "({'<id>_00.jpg': 'caption'} or {'<id>': ['phrase', ...]})"
            )
        return cls(entries, by_prefix=kinds == {False}, path=path)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, cloth: str) -> str | None:
        if self.by_prefix:
            found = self.entries.get(cloth.split("_")[0])
            return found if found is not None else self.entries.get(cloth[:5])
        found = self.entries.get(cloth)
        return found if found is not None else self.entries.get(Path(cloth).stem)


def find_captions(root: Path, explicit: str | Path | None, candidates: Iterable[str]) -> CaptionTable:
    """The captions file: ``explicit`` (relative to ``root`` unless absolute; must exist), else the
    first of ``candidates`` present under ``root``, else no captions (every caption ``""``)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        return CaptionTable.load(path if path.is_absolute() else root / path)
    for name in candidates:
        if (root / name).is_file():
            return CaptionTable.load(root / name)
    return CaptionTable.empty()


def check_mode(mode: str) -> None:
    if mode not in TRYON_MODES:
        raise ValueError(f"try-on mode must be one of {TRYON_MODES}, not {mode!r}")


def missing_files(records: Iterable[TryOnRecord], limit: int | None = 20) -> list[str]:
    """``"<path> (<field> of <person>)"`` for each file a record names that does not exist, at most
    ``limit`` of them (``None``: all). One ``stat`` per file, so a full VITON-HD split takes seconds."""
    missing: list[str] = []
    seen: set[Path] = set()
    for record in records:
        for name, path in record.paths().items():
            if path in seen:
                continue
            seen.add(path)
            if not path.is_file():
                missing.append(f"{path} ({name} of {record.person})")
                if limit is not None and len(missing) >= limit:
                    return missing
    return missing
