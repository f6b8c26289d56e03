"""A run folder's files across attempts: which checkpoint a resumed run starts from (the newest readable
``last.ckpt``, else the previous one), whether the run has already finished, and a ``metrics.json`` that is
written atomically and never replaced by an emptier one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fashion_vl.utils.atomic import previous_path, remove_stale_temp_files, write_json_atomic

log = logging.getLogger("fashion_vl")

LAST = "last.ckpt"


class CheckpointUnreadableError(RuntimeError):
    """Neither the newest ``last.ckpt`` nor the previous one can be read."""


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` of a checkpoint, read through a memory map (the weights are not read); any
    failure (a truncated or foreign file) raises."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint["global_step"])


def _unreadable_reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


def resume_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint ``ckpt_path=last`` resumes: ``last.ckpt`` when it can be read; else, saying so,
    ``last.prev.ckpt`` (the unreadable file is renamed ``last.ckpt.unreadable`` so that the next save
    does not make it the previous one); ``None`` when the run has no checkpoint yet."""
    last = Path(checkpoint_dir) / LAST
    previous = previous_path(last)
    reasons = []
    for path in (last, previous):
        if not path.is_file():
            continue
        try:
            step = checkpoint_step(path)
        except Exception as err:
            reasons.append(f"{path}: {_unreadable_reason(err)}")
            continue
        if path == previous:
            aside = last.with_name(LAST + ".unreadable")
            if last.is_file():
                last.replace(aside)
            log.warning(
                "%s cannot be read (%s); resuming from the previous checkpoint %s (step %d). The unreadable "
                "file is kept as %s",
                last, reasons[0].split(": ", 1)[1], previous, step, aside,
            )  # fmt: skip
        return path
    if reasons:
        raise CheckpointUnreadableError(
            "ckpt_path=last: no readable checkpoint (" + "; ".join(reasons) + "); start the run afresh "
            "(ckpt_path=null) or pass a checkpoint file"
        )
    return None


def clean_checkpoint_dir(checkpoint_dir: str | Path) -> None:
    """Remove the temporary files of saves a killed attempt never finished (start of a run, rank zero)."""
    remove_stale_temp_files(checkpoint_dir, log=log.info)


def finished_metrics(output_dir: str | Path, ckpt_path: str | None, max_steps: int | None) -> dict | None:
    """The saved ``metrics.json`` payload when resuming ``ckpt_path`` has nothing left to train (its
    step has reached ``max_steps``) and the run has already written its results; else ``None``."""
    if ckpt_path is None or not max_steps or max_steps < 0:
        return None
    saved = read_metrics(Path(output_dir) / "metrics.json")
    if not saved or not saved.get("metrics"):
        return None
    step = checkpoint_step(ckpt_path)
    return saved if step >= max_steps else None


def read_metrics(path: str | Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def write_metrics(path: str | Path, payload: dict[str, Any], keep_richer: bool = True) -> bool:
    """Write ``payload`` (with a ``metrics`` mapping) to ``path`` atomically. With ``keep_richer`` (an
    attempt that continues the run in this folder: a requeue, a rerun with ``ckpt_path=last``), a file
    holding metrics this payload lacks is kept instead (an attempt that trained nothing must not blank
    a finished run's results), with a warning; returns whether the file was written. A fresh run in the
    folder (``ckpt_path=null``) replaces the previous run's file whatever it holds."""
    path = Path(path)
    if not keep_richer:
        write_json_atomic(path, payload)
        return True
    old = read_metrics(path)
    old_metrics = (old or {}).get("metrics") or {}
    missing = sorted(set(old_metrics) - set(payload.get("metrics") or {}))
    if missing:
        log.warning(
            "kept %s: this attempt produced %d of its %d metrics (missing %s)",
            path, len(old_metrics) - len(missing), len(old_metrics), ", ".join(missing[:5]),
        )  # fmt: skip
        return False
    write_json_atomic(path, payload)
    return True
