"""Checkpoint files that are either complete or absent, and never hold a non-finite weight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashion_vl.lit.nonfinite import refuse_nonfinite_checkpoint
from fashion_vl.utils.atomic import save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, fsyncs it, then renames it over
    the target. Lightning's default writes the target in place, so a run killed mid-write (a SLURM
    time limit, a pre-empted node) leaves a truncated ``last.ckpt`` that cannot be resumed.

    A checkpoint whose weights, buffers, optimizer state or averaged weights hold a NaN or an infinity
    is refused (:class:`~fashion_vl.lit.nonfinite.NonFiniteCheckpointError`) and the file on disk is
    kept. Files named in ``keep_previous`` keep their previous version as ``<stem>.prev<suffix>``
    (``last.prev.ckpt``), the fallback of ``ckpt_path=last`` when the newest cannot be read. A full disk
    raises :class:`~fashion_vl.utils.atomic.DiskFullError` naming the file and the free space.
    """

    def __init__(self, keep_previous: Sequence[str] = ("last.ckpt",)) -> None:
        super().__init__()
        self.keep_previous = tuple(keep_previous)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        refuse_nonfinite_checkpoint(checkpoint, path)
        save_atomic(checkpoint, path, keep_previous=Path(path).name in self.keep_previous)
