"""The id -> metadata table of an index: one SQLite row per indexed item, keyed by its vector row.

SQLite (the standard library's) rather than a JSON file so a million-item catalogue is looked up by
row or id without loading it whole; the file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fashion_vl.search.catalogue import CatalogueItem

_SCHEMA = (
    "CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, image TEXT, text TEXT, meta TEXT)"
)


def write_item_table(path: Path, items: Iterable[CatalogueItem]) -> int:
    """Write ``items`` (in vector-row order) to ``path``; returns how many."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute(_SCHEMA)
        rows = ((i, it.id, it.image, it.text, json.dumps(it.meta)) for i, it in enumerate(items))
        con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows)
        count = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return count


class ItemTable:
    """Read-only lookups; safe to share between the service's threads."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"item table not found: {path}")
        self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def by_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The items at ``rows``, in that order."""
        wanted = [int(r) for r in rows]
        if not wanted:
            return []
        with self._lock:
            found = self._con.execute(
                f"SELECT row, id, image, text, meta FROM items WHERE row IN ({','.join('?' * len(wanted))})",
                wanted,
            ).fetchall()
        by_row = {r[0]: _item(r) for r in found}
        return [by_row[r] for r in wanted]

    def row_of(self, item_id: str) -> int | None:
        with self._lock:
            found = self._con.execute("SELECT row FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if found is None else found[0]

    def meta_values(self, key: str) -> list[tuple[int, Any]]:
        """``(row, meta[key])`` of every item whose metadata has ``key``, in row order."""
        with self._lock:
            found = self._con.execute("SELECT row, meta FROM items ORDER BY row").fetchall()
        out = []
        for row, meta in found:
            values = json.loads(meta)
            if key in values:
                out.append((row, values[key]))
        return out

    def close(self) -> None:
        self._con.close()


def _item(row: tuple) -> dict[str, Any]:
    return {"row": row[0], "id": row[1], "image": row[2], "text": row[3], "meta": json.loads(row[4])}
