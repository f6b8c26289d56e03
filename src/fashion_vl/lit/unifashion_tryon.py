"""UniFashion try-on editing (``shared/reference/unifashion.md`` §1 and §3, the StableVITON fork):
train :class:`~fashion_vl.models.unifashion.tryon.TryOnEditor` on VITON-HD / Dress Code batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.losses._dist import rank
from fashion_vl.models.unifashion.diffusion import DiffusionBranch
from fashion_vl.models.unifashion.tryon import TryOnEditor


class UniFashionTryOnModule(FashionLitModule):
    """Training step = the editor's noise-prediction loss (``train/loss``) with condition drop-out.
    Validation: the same loss with nothing dropped and a fixed generator per batch (``val/loss``, lower
    is better), so that its curve is comparable between evaluations. Sampling-based metrics (FID, KID,
    LPIPS, SSIM on try-on images) are not computed here.

    The caption conditions the UNet through the CLIP text encoder; the Q-Former's query outputs are not
    wired in yet (the editor takes them: ``training_loss(batch, query_outputs)``).

    Args:
        net: the editor, or a diffusion branch to wrap in one (its UNet is widened to 13 channels and
            a sketch ControlNet built from it).
        condition_drop: the editor's drop-out when ``net`` is a branch (0.2, the reference's).
        seed: seeds the per-step noise, timesteps and drop-out (with the step and the rank).
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    def __init__(
        self,
        net: TryOnEditor | DiffusionBranch,
        optimizer: Any,
        scheduler: Any = None,
        condition_drop: float = 0.2,
        seed: int = 0,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
    ) -> None:
        if isinstance(net, DiffusionBranch):
            net = TryOnEditor(net, condition_drop=condition_drop)
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.seed = seed

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["image"].shape[0])

    def _generator(self, step: int, stream: int = 0) -> torch.Generator:
        """Seeded by (seed, step, rank, stream): a resumed run draws what the uninterrupted one would."""
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1009 + rank()) * 2 + stream)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.net.training_loss(batch, None, self._generator(self.global_step))
        self.log("train/loss", loss, batch_size=self.batch_size_of(batch), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.net.training_loss(batch, None, self._generator(batch_idx, stream=1), condition_drop=0.0)
        self.log("val/loss", loss, batch_size=self.batch_size_of(batch), sync_dist=True)
