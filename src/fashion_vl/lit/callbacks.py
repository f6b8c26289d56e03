"""Lightning callbacks that make runs resumable and data problems visible."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from fashion_vl.utils.speed import compile_units

log = logging.getLogger(__name__)


class RngStateCallback(Callback):
    """Saves the global RNG states (python, numpy, torch CPU and CUDA) in every checkpoint and restores
    them when the first batch of a resumed run starts.

    Lightning restores weights, optimizer, loops and (stateful) dataloaders but not the global
    generators that dropout and task sampling draw from. Restoring them at the first batch, after
    the resumed dataloader iterator has been created, puts the resumed run on exactly the stream the
    uninterrupted run had at that step. (Our datasets draw from per-sample seeds, not the global
    generators, so fetching batches consumes nothing from them.)
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Only tensors, numbers and strings: checkpoints must load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        numpy_state = state["numpy"]
        np.random.set_state(
            (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
             numpy_state["has_gauss"], numpy_state["gauss"])
        )  # fmt: skip
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class BadImageMonitor(Callback):
    """Counts and reports images the datasets skipped (missing or corrupt files).

    Logs ``data/bad_images`` (cumulative, this rank) and warns with the first ``max_reported`` paths.
    """

    def __init__(self, max_reported: int = 20) -> None:
        self.max_reported = max_reported
        self.count = 0
        self.reported = 0

    def _see(self, pl_module: LightningModule, batch: Any, train: bool) -> None:
        bad = batch.get("bad_images", []) if isinstance(batch, dict) else []
        if bad:
            self.count += len(bad)
            for path in bad:
                if self.reported < self.max_reported:
                    log.warning("skipped image %s", path)
                    self.reported += 1
                    if self.reported == self.max_reported:
                        log.warning("further skipped images are counted in data/bad_images, not listed")
        if train:
            pl_module.log("data/bad_images", float(self.count), reduce_fx="max", batch_size=1)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._see(pl_module, batch, train=True)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._see(pl_module, batch, train=False)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._see(pl_module, batch, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count = state_dict.get("count", 0)


class CompileModules(Callback):
    """``torch.compile`` the network's compile units (``net.compile_units()``) in place at set-up.

    Args:
        enabled: ``auto`` compiles when the trainer runs on CUDA; on CPU the compiler's start-up (a
            minute or more per graph) costs more than tests and demos gain. ``true``/``false`` force it.
        mode, dynamic, fullgraph, backend: passed to ``torch.compile``.
    """

    def __init__(
        self,
        enabled: bool | str = "auto",
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
        backend: str = "inductor",
    ) -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.compile.enabled must be true, false or auto, not {enabled!r}")
        self.enabled = enabled
        self.options = dict(mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
        self.compiled: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        on_cuda = trainer.strategy.root_device.type == "cuda"
        if self.enabled is False or (self.enabled == "auto" and not on_cuda):
            return
        net = getattr(pl_module, "net", None)
        if net is None:
            return
        self.compiled += compile_units(net, **self.options)
        if self.compiled:
            log.info("torch.compile (%s): %s", self.options["backend"], ", ".join(self.compiled))


class ConfigInCheckpoint(Callback):
    """Stores the run's resolved config in every checkpoint (``checkpoint["fvl_config"]``), so a
    checkpoint says which experiment, data and model produced it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["fvl_config"] = self.config


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps and when training ends.

    Lightning's ``ModelCheckpoint`` with a step interval writes ``last.ckpt`` only on those steps, so
    after 90 steps with an interval of 50 it would hold step 50; here it always ends as the final state
    (what ``fvl-eval ckpt_path=.../last.ckpt`` and ``ckpt_path=last`` expect).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, **kwargs: Any) -> None:
        super().__init__(
            dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True, **kwargs
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = Path(self.dirpath or ".") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if trainer.global_step != self._last_global_step_saved or not last.exists():
            trainer.save_checkpoint(str(last))
