"""Writing files so that a crash never leaves a truncated one (see :mod:`fashion_vl.utils.atomic`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from fashion_vl.utils.atomic import atomic_write, save_atomic, write_json_atomic, write_text_atomic


def open_atomic(path: str | Path, mode: str = "wb") -> AbstractContextManager[IO[Any]]:
    """:func:`atomic_write` with ``mode`` positional: any writer (``json.dump``, ``np.save``,
    ``faiss.write_index``) with :func:`save_atomic`'s guarantee."""
    return atomic_write(path, mode=mode)


__all__ = ["atomic_write", "open_atomic", "save_atomic", "write_json_atomic", "write_text_atomic"]
