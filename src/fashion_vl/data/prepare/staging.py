"""Atomic output for converters: build a dataset folder beside its destination, then move it in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputExistsError(FileExistsError):
    pass


@contextmanager
def staged_output(out: Path | str, folder: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``<out>/<folder>`` only if the block succeeds.

    The staging folder sits in ``out`` itself so the final step is a same-filesystem rename; on any
    error it is removed and an existing ``<out>/<folder>`` is left untouched.
    """
    out = Path(out)
    final = out / folder
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise OutputExistsError(f"{final} already exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.partial-", dir=out))
    # mkdtemp makes the folder private (0700); a dataset folder is usually shared, so give it the
    # permissions a plain mkdir would (0777 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{folder}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
