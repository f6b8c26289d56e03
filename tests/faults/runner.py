"""A tiny training run in a process of its own, for the fault tests to kill (``python -m
tests.faults.runner <output_dir> <data_dir> [override ...]``, from the repository root).

``FVL_FAULT=during:<n>`` stops inside the n-th save of ``last.ckpt`` with half of the file written to its
temporary file; ``FVL_FAULT=after:<n>`` stops right after the n-th save. Either way the process writes
``<output_dir>/fault.marker`` and waits to be killed (``kill -9``), as a SLURM time limit or a pre-empted
node would. Without ``FVL_FAULT`` it trains to the end and prints its final step.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fashion_vl.cli import train as train_module
from fashion_vl.lit import checkpoint_io
from fashion_vl.utils.atomic import atomic_write
from tests.conftest import TINY_TRAIN, compose_config

MARKER = "fault.marker"

# The kill tests' run: 12 steps (two epochs of 6), last.ckpt every 4 steps, exact resume settings.
KILL_RUN = [
    *TINY_TRAIN,
    "trainer.max_steps=12",
    "trainer.max_epochs=-1",
    "trainer.deterministic=true",
    "callbacks.checkpoint_last.every_n_train_steps=4",
    "ckpt_path=last",
]


def install_fault(spec: str, output_dir: Path) -> None:
    mode, _, count = spec.partition(":")
    target = int(count)
    real_save = checkpoint_io.save_atomic
    saves = {"n": 0}

    def wait_to_be_killed(what: str) -> None:
        (output_dir / MARKER).write_text(what)
        time.sleep(600)
        raise SystemExit("not killed")

    def save(obj: Any, path: str | Path, *, keep_previous: bool = False) -> Path:
        if Path(path).name != "last.ckpt":
            return real_save(obj, path, keep_previous=keep_previous)
        saves["n"] += 1
        if mode == "during" and saves["n"] == target:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getvalue()
            with atomic_write(path, keep_previous=keep_previous) as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                wait_to_be_killed(f"inside save {target}")
        result = real_save(obj, path, keep_previous=keep_previous)
        if mode == "after" and saves["n"] == target:
            wait_to_be_killed(f"after save {target}")
        return result

    checkpoint_io.save_atomic = save


def main(argv: list[str]) -> int:
    output_dir, data_dir, *overrides = argv
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FVL_FAULT"):
        install_fault(os.environ["FVL_FAULT"], output_dir)
    cfg = compose_config("train", overrides or KILL_RUN, output_dir, Path(data_dir))
    _, objects = train_module.train(cfg)
    print(f"finished at step {objects['trainer'].global_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
