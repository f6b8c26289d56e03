"""The errors ``fvl-train`` and ``fvl-eval`` report in one line instead of a traceback: a config
mistake, a run stopped by the non-finite guard, a full disk, unreadable checkpoints, bad annotations.
Their messages already say what went wrong and what to do; a traceback would only bury that.
``HYDRA_FULL_ERROR=1`` restores the traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("fashion_vl")

# module -> error classes reported in one line, and the exit status. Looked up in sys.modules rather than
# imported: most of these modules import torch, and a config error must be reported before torch is
# imported (an error class whose module was never imported cannot have been raised).
REPORTED: dict[str, tuple[tuple[str, ...], int]] = {
    "fashion_vl.config_schema": (("ConfigError",), 2),
    "fashion_vl.lit.nonfinite": (("NonFiniteTrainingError", "NonFiniteCheckpointError"), 1),
    "fashion_vl.utils.atomic": (("DiskFullError",), 1),
    "fashion_vl.cli.run_files": (("CheckpointUnreadableError",), 1),
    "fashion_vl.data.formats._json": (("DataFormatError", "MissingDataFileError"), 1),
    "fashion_vl.data.check": (("DataCheckError",), 1),
}


def _status(err: BaseException) -> int | None:
    for module_name, (names, status) in REPORTED.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, tuple(getattr(module, n) for n in names)):
            return status
    return None


@contextmanager
def reported_errors(command: str) -> Iterator[None]:
    """Turn the errors of :data:`REPORTED` into ``<command>: error: <message>`` on stderr (and in the
    run's log file) and an exit status (2: config, 1: run), without a traceback."""
    try:
        yield
    except Exception as err:
        status = _status(err)
        if status is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = f"{command}: error: {err}"
        print(message, file=sys.stderr, flush=True)
        _to_log_files(message)
        sys.exit(status)


def _to_log_files(message: str) -> None:
    """The error in the run's log file (Hydra's file handler) too; the console already has it."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
