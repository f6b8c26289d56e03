"""Reading annotation files as UTF-8 with errors that name the file and the entry: a byte that is not
UTF-8 (a release re-saved as Latin-1 or cp1252) otherwise surfaces as a bare ``UnicodeDecodeError`` with a
byte offset and no file name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fashion_vl.data.formats._json import DataFormatError


def read_utf8(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path`` (``encoding``: ``utf-8``, or ``utf-8-sig`` to drop a byte-order mark); a
    byte that is not UTF-8 raises :class:`DataFormatError` naming the file, the line, the JSON entry and
    field when the file is JSON, and the bytes."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataFormatError(describe_decode_error(Path(path), data, err)) from None


def describe_decode_error(path: Path, data: bytes, err: UnicodeDecodeError) -> str:
    line = data.count(b"\n", 0, err.start) + 1
    bad = data[err.start : err.end].hex(" ")
    start = data.rfind(b"\n", 0, err.start) + 1
    end = data.find(b"\n", err.start)
    context = data[start : end if end != -1 else len(data)].decode("utf-8", errors="replace").strip()
    where = json_entry_with_bad_bytes(data) if path.suffix.lower() in (".json", ".jsonl") else None
    return (
        f"{path}: line {line}{f', {where}' if where else ''}: not UTF-8 (byte(s) {bad} at offset "
        f"{err.start}) in {context[:80]!r}; re-save the file as UTF-8"
    )


def json_entry_with_bad_bytes(data: bytes) -> str | None:
    """``entry 12 (id=4031), field 'title'`` for the first JSON string holding an undecodable byte, or
    ``None`` when the file does not parse even with the bytes replaced (one JSON document per line is
    tried too)."""
    text = data.decode("utf-8", errors="replace")
    try:
        documents = [json.loads(text)]
    except ValueError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            return None
        documents = [documents]
    return _find_replaced(documents[0], ())


def _find_replaced(value: Any, trail: tuple[Any, ...]) -> str | None:
    if isinstance(value, str):
        return _describe(trail) if "\ufffd" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_replaced(key, trail) if "\ufffd" in str(key) else None
            found = found or _find_replaced(item, (*trail, (key, value)))
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_replaced(item, (*trail, (i, value)))
            if found:
                return found
    return None


def _describe(trail: tuple[Any, ...]) -> str:
    """``entry 3 (id=17), field 'title'`` from the (key, container) steps down to a string."""
    parts = []
    for key, container in trail:
        if isinstance(key, int):
            entry = container[key]
            ident = f" (id={entry['id']})" if isinstance(entry, dict) and "id" in entry else ""
            parts.append(f"entry {key}{ident}")
        else:
            parts.append(f"field {key!r}")
    return ", ".join(parts) or "the document"
