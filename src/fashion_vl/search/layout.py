"""The files of an index folder (``docs/search.md`` describes each)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IndexLayout:
    root: Path

    @property
    def info(self) -> Path:
        """``index.json``: model, catalogue, index kind and parameters; written last."""
        return self.root / "index.json"

    @property
    def vectors(self) -> Path:
        """``vectors.npy``: float32 ``[N, Q, D]``, row ``i`` = item ``i`` of the table."""
        return self.root / "vectors.npy"

    @property
    def faiss(self) -> Path:
        return self.root / "index.faiss"

    @property
    def items(self) -> Path:
        """``items.sqlite``: row, id, image path, text, metadata (JSON)."""
        return self.root / "items.sqlite"

    @property
    def skipped(self) -> Path:
        """``skipped.jsonl``: the catalogue rows left out, with the reason."""
        return self.root / "skipped.jsonl"

    @property
    def manifest(self) -> Path:
        """``build.json``: the shards embedded so far (only while a build is unfinished)."""
        return self.root / "build.json"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def remove_build_state(self) -> None:
        shutil.rmtree(self.shards, ignore_errors=True)
        self.manifest.unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Every file an index build writes (and nothing else in the folder)."""
        self.remove_build_state()
        for path in (self.info, self.vectors, self.faiss, self.items, self.skipped):
            path.unlink(missing_ok=True)
