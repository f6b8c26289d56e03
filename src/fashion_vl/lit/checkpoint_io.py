"""Checkpoint files that are either complete or absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashion_vl.utils.io import save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, fsyncs it, then renames it over
    the target. Lightning's default writes the target in place, so a run killed mid-write (a SLURM
    time limit, a pre-empted node) leaves a truncated ``last.ckpt`` that cannot be resumed."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)
