"""File placement and JSON writing shared by the converters that copy images."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

LINK_MODES = ("copy", "hardlink", "symlink")


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    """``--link``, ``--strict`` and ``--workers``, shared with the other image-copying converters."""
    parser.add_argument(
        "--link",
        choices=LINK_MODES,
        default="copy",
        help="how images reach the output: copy (default), hardlink (same filesystem) or symlink "
        "(absolute links: keep the release where it is)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="a listed image that does not exist is an error, not skipped"
    )
    parser.add_argument("--workers", type=int, default=8, help="threads copying images (default 8)")


def place_file(src: Path, dst: Path, mode: str) -> None:
    """Put ``src`` at ``dst`` by ``mode`` (one of :data:`LINK_MODES`), creating parent folders."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        shutil.copyfile(src, dst)
    elif mode == "hardlink":
        os.link(src, dst)
    elif mode == "symlink":
        os.symlink(src.resolve(), dst)
    else:
        raise ValueError(f"unknown link mode {mode!r}; choose one of {LINK_MODES}")


def place_files(
    jobs: Iterable[tuple[Path, Path]],
    mode: str,
    workers: int,
    progress: Callable[[int, int], None],
) -> None:
    """Copy/link every ``(src, dst)`` on a thread pool, reporting progress."""
    jobs = list(jobs)
    progress(0, len(jobs))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(lambda job: place_file(*job, mode), jobs), start=1):
            if done % 256 == 0 or done == len(jobs):
                progress(done, len(jobs))


def safe_relative(path: str) -> PurePosixPath | None:
    """``path`` as a relative POSIX path inside its root, or ``None`` if it is absolute or climbs out."""
    rel = PurePosixPath(path.replace("\\", "/"))
    if not path or rel.is_absolute() or ".." in rel.parts:
        return None
    return rel


def write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """A JSON list with one product per line (readable with ``head``, diff-friendly)."""
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(e, ensure_ascii=False) for e in entries))
        f.write("\n]\n")
