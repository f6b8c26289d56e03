"""The non-finite guard: a NaN or infinite loss or gradient norm skips that optimiser step instead of
spoiling the weights, and no checkpoint with a non-finite tensor is written.

What a skipped step does (:class:`NonFiniteGuard`, between backward and the optimiser step):

- the gradients are dropped (``zero_grad(set_to_none=True)``), so AdamW, which only touches parameters
  that have a gradient, leaves every weight and its state (moments, step count) as they were;
- the buffers (BatchNorm running statistics and batch counts, updated by the forward pass that
  produced the NaN) are put back as they were before the batch;
- Lightning still counts the step: ``global_step`` and a per-step LR schedule advance as if the step
  had been taken with a zero update, so a run keeps its configured length and schedule, the per-step
  task draw of pre-training moves on to the next draw, and a resumed run stays aligned;
- the step, the task(s) the step trained (``step_tasks`` of the module, set by pre-training) and the
  batch's sample ids are logged, and ``train/skipped_nonfinite`` counts the skips;
- after ``max_consecutive_skips`` skips in a row the run stops with :class:`NonFiniteTrainingError`.

Under DDP the decision is taken by all ranks together (one rank's bad loss skips the step everywhere).
With a ``GradScaler`` (``precision=16-mixed``) infinite gradients from a too-large loss scale are the
scaler's business (it skips the step and lowers the scale, routinely in the first steps), so only a
non-finite loss counts there; ``bf16-mixed`` and ``32-true`` have no scaler and check both.

Cost: one device-to-host sync per optimiser step (the decision; under DDP a 1-element all-reduce), one
fused norm over the gradients, and a copy of the module's buffers per step (kilobytes to a few MB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

# Batch keys that identify a batch's samples, most specific first (see data/collate.py and the other
# collators): products, outfit blanks, try-on persons, composed targets, gallery images.
SAMPLE_ID_KEYS = ("product_id", "blank_id", "person_id", "target_key", "image_key")


class NonFiniteTrainingError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient norm."""


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint about to be written holds a NaN or an infinity; the file on disk is kept."""


def batch_sample_ids(batch: Any, limit: int = 8) -> str:
    """The ids of a batch's samples as text (``product_id [12, 40, ...] (+24 more)``)."""
    if not isinstance(batch, Mapping):
        return "no ids (the batch is not a mapping)"
    for key in SAMPLE_ID_KEYS:
        if key in batch:
            value = batch[key]
            ids = value.tolist() if isinstance(value, torch.Tensor) else list(value)
            more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
            return f"{key} {ids[:limit]}{more}"
    return f"no id key in the batch (looked for {', '.join(SAMPLE_ID_KEYS)})"


def _buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in module.buffers() if b.numel()]


class NonFiniteGuard(Callback):
    """Skips optimiser steps whose loss or gradient norm is not finite (see the module docstring).

    Every :class:`~fashion_vl.lit.base.FashionLitModule` gets one with the defaults unless the
    trainer's callbacks hold one (``callbacks.nonfinite`` in the default callbacks).

    Args:
        max_consecutive_skips: stop the run after this many skipped steps in a row.
        check_grad_norm: also skip a step whose gradient norm is not finite when the loss is (always
            left to the scaler under ``16-mixed``).
        restore_buffers: put the buffers back as they were before a skipped batch.
        max_logged: warn for the first this many skips; later ones are only counted.
    """

    def __init__(
        self,
        max_consecutive_skips: int = 10,
        check_grad_norm: bool = True,
        restore_buffers: bool = True,
        max_logged: int = 20,
    ) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(
                f"callbacks.nonfinite.max_consecutive_skips must be >= 1, not {max_consecutive_skips}"
            )
        self.max_consecutive_skips = max_consecutive_skips
        self.check_grad_norm = check_grad_norm
        self.restore_buffers = restore_buffers
        self.max_logged = max_logged
        self.skipped = 0  # total over the run (restored on resume)
        self.consecutive = 0
        self.last_skipped_step: int | None = None
        self._bad_loss: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._batch: Any = None
        self._batch_idx = -1
        self._buffers: list[torch.Tensor] = []
        self._snapshot: list[torch.Tensor] = []

    # -- the batch -----------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._batch_idx = batch, batch_idx
        if self.restore_buffers and not self._snapshot:
            # at the first micro-batch of each optimiser step (the decision clears the snapshot)
            self._buffers = _buffers(pl_module)
            self._snapshot = [b.detach().clone() for b in self._buffers]

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        self._loss = loss.detach()

    # -- the decision --------------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        checks = []
        if self._bad_loss is not None:
            checks.append(self._bad_loss)
        norm = None
        if self.check_grad_norm and scaler is None and grads:
            norm = _grad_norm(grads)
            checks.append(~torch.isfinite(norm))
        bad = bool(torch.stack(checks).any()) if checks else False  # the one host sync per step
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        loss = self._loss
        self._bad_loss = self._loss = None
        if not bad:
            self.consecutive = 0
            self._snapshot = []
            return
        optimizer.zero_grad(set_to_none=True)
        if self.restore_buffers and self._snapshot:
            with torch.no_grad():
                torch._foreach_copy_(self._buffers, self._snapshot)
        self._snapshot = []
        self.skipped += 1
        self.consecutive += 1
        step = trainer.global_step
        self.last_skipped_step = step
        tasks = getattr(pl_module, "step_tasks", None)
        what = (
            f"step {step} (epoch {trainer.current_epoch}, batch {self._batch_idx}"
            + (f", task {'+'.join(tasks)}" if tasks else "")
            + f"): non-finite {_describe(loss, norm)}; {batch_sample_ids(self._batch)}"
        )
        if self.skipped <= self.max_logged:
            log.warning(
                "%s: optimiser step skipped (%d in a row, %d in all)", what, self.consecutive, self.skipped
            )
            if self.skipped == self.max_logged:
                log.warning("further skipped steps are counted in train/skipped_nonfinite, not listed")
        if self.consecutive >= self.max_consecutive_skips:
            raise NonFiniteTrainingError(
                f"{self.consecutive} optimiser steps in a row had a non-finite loss or gradient norm, the last "
                f"at {what}; the run stops (no checkpoint of this state is written). Lower lit.optimizer.lr, "
                "check the data, or resume from the last good checkpoint "
                f"(limit: callbacks.nonfinite.max_consecutive_skips={self.max_consecutive_skips})"
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None
        pl_module.log("train/skipped_nonfinite", float(self.skipped), reduce_fx="max", batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of ``grads`` in float32 (one fused norm per device and dtype)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    norms = [
        torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs)).float()).to(grads[0].device)
        for gs in by_device.values()
    ]
    return torch.linalg.vector_norm(torch.stack(norms))


def _describe(loss: torch.Tensor | None, norm: torch.Tensor | None) -> str:
    parts = []
    if loss is not None:
        parts.append(f"loss {float(loss):.4g}" if loss.numel() == 1 else "loss")
    if norm is not None:
        parts.append(f"gradient norm {float(norm):.4g}")
    return ", ".join(parts) or "gradients"


# -- checkpoints -----------------------------------------------------------------------------------------
# Checkpoint entries holding weights and optimiser state. Callback states are left out on purpose: a
# ModelCheckpoint's best_model_score starts at +inf with mode=min.
CHECKED_KEYS = ("state_dict", "optimizer_states", "current_model_state", "averaging_state")


def _named_tensors(obj: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}[{i}]")


def nonfinite_tensors(checkpoint: Mapping[str, Any]) -> tuple[list[str], int]:
    """Names of the floating-point tensors of ``checkpoint`` (:data:`CHECKED_KEYS`) that hold a NaN
    or an infinity, and how many tensors were checked."""
    named = [
        (name, t)
        for key in CHECKED_KEYS
        if key in checkpoint
        for name, t in _named_tensors(checkpoint[key], key)
        if (torch.is_floating_point(t) or torch.is_complex(t)) and t.numel()
    ]
    if not named:
        return [], 0
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    finite = [True] * len(named)
    for indices in by_device.values():  # one host sync per device
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).tolist()
        for i, ok in zip(indices, flags):
            finite[i] = ok
    return [name for (name, _), ok in zip(named, finite) if not ok], len(named)


def refuse_nonfinite_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`NonFiniteCheckpointError` when ``checkpoint`` holds a non-finite tensor."""
    bad, total = nonfinite_tensors(checkpoint)
    if bad:
        raise NonFiniteCheckpointError(
            f"refusing to write {path}: {len(bad)} of {total} tensors hold NaN/inf (first: {bad[0]}); "
            "the file on disk is kept"
        )
