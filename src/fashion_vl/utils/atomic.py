"""Files that are either complete or absent, saves that fail in one line when the disk is full, and
the temporary files a killed save leaves behind.

Every save writes a temporary file beside its target (``.<name>.<random>.tmp``), fsyncs it, gives it
the permissions a plain ``open()`` would (``0666`` less the umask: the same as every other file of a run
folder; ``mkstemp`` alone would leave it ``0600``) and renames it over the target. A file listed in
``keep_previous`` (``last.ckpt``) first has its current version hard-linked to ``<stem>.prev<suffix>``
(``last.prev.ckpt``), so a target that was damaged after it was written (a full quota elsewhere, a bad
copy) still has a fallback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """A save ran out of space (ENOSPC, or EDQUOT: a full quota); the message names the file and the
    free space left, and the previous version of the file, if any, is untouched."""


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` behind ``err``, if any. ``torch.save`` reports a failed write as
    ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``, with the ``OSError``
    only in the exception's context, so the chain is searched."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def free_space(path: str | Path) -> str:
    """Free space on the filesystem holding ``path`` (its nearest existing folder), e.g. ``12.0 MiB``."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return human_bytes(free)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_full_error(path: str | Path, err: OSError, note: str = "") -> DiskFullError:
    """The one-line error for a save of ``path`` that ran out of space (``note`` appended)."""
    reason = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
    error = DiskFullError(f"{reason} writing {path} ({free_space(path)} free there){note}")
    error.errno = err.errno  # set after: OSError(errno, message) would print "[Errno 28] ..."
    return error


@functools.cache
def default_file_mode() -> int:
    """``0666`` less the process umask: what ``open(path, "w")`` gives a new file (read once: reading
    the umask means setting it, which is not thread-safe)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def previous_path(path: str | Path) -> Path:
    """Where the previous version of a kept file lives: ``last.ckpt`` -> ``last.prev.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def temp_prefix(path: str | Path) -> str:
    return f".{Path(path).name}."


TEMP_SUFFIX = ".tmp"
KEPT = "; the previous file, if any, is kept"


@contextmanager
def atomic_write(path: str | Path, *, keep_previous: bool = False, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; when the block ends without error the file
    is fsynced and renamed over ``path``; on error it is removed and ``path`` is untouched. A full
    disk raises :class:`DiskFullError` naming ``path`` and the free space."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, err, KEPT) from err
        raise
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        if keep_previous and path.is_file():
            _keep_previous(path)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = disk_full_cause(err)
        if cause is not None and not isinstance(err, DiskFullError):
            raise disk_full_error(path, cause, KEPT) from err
        raise


def _keep_previous(path: Path) -> None:
    """Point ``previous_path(path)`` at the current ``path`` (a hard link: no copy, and ``path`` itself
    never goes missing); where links are not supported, rename it (``path`` is then briefly absent, which
    the resume fallback covers)."""
    previous = previous_path(path)
    link = previous.with_name(f"{temp_prefix(previous)}link{TEMP_SUFFIX}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        link.unlink(missing_ok=True)
        os.replace(path, previous)


def save_atomic(obj: Any, path: str | Path, *, keep_previous: bool = False) -> Path:
    """``torch.save`` ``obj`` to ``path`` through :func:`atomic_write`: the file is either the complete
    new one or untouched (a run killed mid-write keeps its previous file)."""
    import torch

    with atomic_write(path, keep_previous=keep_previous) as f:
        torch.save(obj, f)
    return Path(path).expanduser()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path, mode="w") as f:
        f.write(text)
    return Path(path).expanduser()


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=1))


def stale_temp_files(folder: str | Path) -> list[Path]:
    """The temporary files of saves that never finished (``.<name>.<random>.tmp``) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file())


def remove_stale_temp_files(folder: str | Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Delete :func:`stale_temp_files` (a killed run's half-written checkpoints, GBs for a real model).
    Call it only when no save can be running into ``folder`` (at the start of a run, on rank zero)."""
    removed = []
    for path in stale_temp_files(folder):
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        removed.append(path)
        if log is not None:
            log(f"removed {path} ({human_bytes(size)}), left by a save that did not finish")
    return removed
