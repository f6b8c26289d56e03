"""Loading annotation JSON and checking fields, with errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MissingDataFileError(FileNotFoundError):
    """An annotation file a loader needs does not exist."""


class DataFormatError(ValueError):
    """An annotation file exists but does not follow the expected format."""


def how_to_produce(dataset: str, data_dir: Path | str) -> str:
    return (
        f"Produce it with `fvl-data synth --out {data_dir}` (synthetic data in the real formats) or "
        f"`fvl-data prepare {dataset.lower()} --raw <official release> --out {data_dir}`."
    )


def load_json(path: Path, *, dataset: str, data_dir: Path) -> Any:
    if not path.is_file():
        raise MissingDataFileError(
            f"{dataset} annotation file not found: {path}\n{how_to_produce(dataset, data_dir)}"
        )
    from fashion_vl.data.formats._text import read_utf8  # (imports this module)

    text = read_utf8(path)  # a byte that is not UTF-8: DataFormatError naming the entry
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err


def load_entries(path: Path, *, dataset: str, data_dir: Path) -> list[dict[str, Any]]:
    """A JSON list of objects (every annotation file of the FashionViL formats is one)."""
    data = load_json(path, dataset=dataset, data_dir=data_dir)
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}: entry {i} is {type(entry).__name__}, expected an object")
    return data


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "list[int]": (list,),
    "list[str]": (list,),
    "str|list[str]": (str, list),
}


def get_field(entry: dict[str, Any], name: str, kind: str, path: Path, index: int) -> Any:
    """``entry[name]`` checked against ``kind``; a clear error names file, entry and field."""
    where = f"{path}: entry {index}" + (f" (id={entry['id']})" if "id" in entry and name != "id" else "")
    if name not in entry:
        raise DataFormatError(f"{where}: required field '{name}' is missing (expected {kind})")
    value = entry[name]
    ok = isinstance(value, _KINDS[kind]) and not (kind == "int" and isinstance(value, bool))
    if ok and isinstance(value, list):
        inner = int if kind == "list[int]" else str
        ok = all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
    if not ok:
        raise DataFormatError(f"{where}: field '{name}' should be {kind}, found {value!r:.80}")
    return value
