"""Lightning callbacks that make runs resumable and data problems visible."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

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


class EMA(WeightAveraging):
    """Exponential moving average of the weights: Lightning's ``WeightAveraging`` with torch's
    ``get_ema_multi_avg_fn(decay)`` (one foreach ``lerp`` per device and dtype), updated after every
    ``update_every_n_steps``-th optimizer step from ``update_starting_at_step`` (zero-based) on.

    What ``WeightAveraging`` does (Lightning 2.6): at ``setup("fit")`` it deep-copies the whole
    LightningModule into an ``AveragedModel`` (frozen parts too: the VAE and text encoder of a
    diffusion run, a frozen LLM; ``device="cpu"`` keeps the copy off the GPU); the first update
    copies the weights, later ones average. The averaged weights are swapped in for validation and
    copied into the module when fit ends. Checkpoints written during fit hold the averaged weights
    in ``state_dict`` (what ``fvl-eval`` and ``load_state_dict`` read) and the raw ones in
    ``current_model_state``; resuming restores both.

    Why a subclass and not ``WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))`` from the
    config alone: with ``use_buffers`` torch's EMA also "averages" integer buffers (position ids of
    the text encoders) in float and truncates them (``11*0.9999 + 11*0.0001`` -> 10); here integer
    buffers follow the model instead. ``should_update`` gives the start step and interval. And a
    checkpoint written after fit ends (``LastCheckpoint``'s final ``last.ckpt``) keeps the raw weights
    in ``current_model_state``: ``WeightAveraging`` has overwritten them with the average by then, so
    extending a finished run (``ckpt_path=last``, more steps) would silently continue from the EMA.
    Loading a checkpoint to validate/test after a fit (``train`` with ``test=true``) keeps its averaged
    weights, as ``fvl-eval`` does (``WeightAveraging`` would load the raw ones there).
    """

    def __init__(
        self,
        decay: float = 0.9999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int = 0,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
    ) -> None:
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, not {update_every_n_steps}")
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=_ema_multi_avg_fn(decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self._raw_at_end: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._raw_at_end = None
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raw_at_end = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)  # the module now holds the average

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._raw_at_end is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._raw_at_end

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Only resuming a fit restores the raw weights. WeightAveraging would do it for any load after a
        # fit, so `train` with test=true would test the best checkpoint's raw weights where fvl-eval
        # tests its averaged ones (state_dict, already in the module).
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:  # per step only, never again at the epoch end
            return False
        since = step_idx - self.update_starting_at_step
        return since >= 0 and since % self.update_every_n_steps == 0


def _ema_multi_avg_fn(decay: float):
    ema = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel groups the tensors by device and dtype: each call sees one dtype
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            ema(averaged, current, num_averaged)
        else:
            torch._foreach_copy_(averaged, current)

    return update
