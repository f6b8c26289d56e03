"""UniFashion try-on editing (``docs/reference.md`` UniFashion §1 and §3, the StableVITON fork):
train :class:`~fashion_vl.models.unifashion.tryon.TryOnEditor` on VITON-HD / Dress Code batches, and
evaluate the pictures it samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.lit.objectives import step_generator
from fashion_vl.metrics.generation import (
    GenerationCLIPScore,
    GenerationQuality,
    MaskedReconstruction,
    keep_mask_from_paint_mask,
)
from fashion_vl.models.encoders.pixels import to_signed
from fashion_vl.models.unifashion.diffusion import DiffusionBranch
from fashion_vl.models.unifashion.tryon import TryOnEditor

# Test-time sampling: the reference validates with 50 DDIM steps; guidance over caption + sketch.
DEFAULT_SAMPLING: dict[str, Any] = {
    "max_images": 256,  # per rank and test run; 0 turns sampling (and its metrics) off
    "num_steps": 50,
    "guidance_scale": 5.0,
    "eta": 0.0,
    "paste_back": False,  # False: the keep-region PSNR/SSIM measure the model, not a copy
    "num_examples": 8,  # sampled pictures kept for the result grid (fvl-eval +viz=true)
}


class UniFashionTryOnModule(FashionLitModule):
    """Training step = the editor's noise-prediction loss (``train/loss``) with condition drop-out.
    Validation: the same loss with nothing dropped and a fixed generator per batch (``val/loss``, lower
    is better), so that its curve is comparable between evaluations.

    Test (``fvl-eval``): the editor samples the first ``sampling.max_images`` items (DDIM, guidance,
    a generator seeded by seed, batch and rank, so two evaluations of one checkpoint agree) and scores
    them against the dataset's person image:

    - ``test/keep_psnr``, ``test/keep_ssim``: PSNR (dB) and SSIM outside the agnostic mask, i.e.
      whether the edit keeps the person and background (paired and unpaired alike);
    - ``test/fid``, ``test/kid_mean``, ``test/kid_std`` with ``quality`` (a
      :class:`~fashion_vl.metrics.generation.GenerationQuality`: Inception from a local file);
    - ``test/clip_score`` of picture and caption with ``clip_score`` (a
      :class:`~fashion_vl.metrics.generation.GenerationCLIPScore`).

    The conditioning caption reaches the UNet through the CLIP text encoder and, when the editor has
    a query encoder, through the Q-Former's query outputs of sketch and caption.

    Args:
        net: the editor, or a diffusion branch to wrap in one (its UNet is widened to 13 channels and
            a sketch ControlNet built from it).
        condition_drop: the editor's drop-out when ``net`` is a branch (0.2, the reference's).
        seed: seeds the per-step noise, timesteps and drop-out (with the step and the rank).
        sampling: test-time sampling, see ``DEFAULT_SAMPLING``.
        quality: FID/KID metric (``None``: not computed).
        clip_score: CLIP-score metric (``None``: not computed).
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    no_decay_below_2d = True  # LAVIS's weight-decay exemptions (optim.param_groups)

    def __init__(
        self,
        net: TryOnEditor | DiffusionBranch,
        optimizer: Any,
        scheduler: Any = None,
        condition_drop: float = 0.2,
        seed: int = 0,
        sampling: Mapping[str, Any] | None = None,
        quality: GenerationQuality | None = None,
        clip_score: GenerationCLIPScore | None = None,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
    ) -> None:
        if isinstance(net, DiffusionBranch):
            net = TryOnEditor(net, condition_drop=condition_drop)
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(
            logger=False, ignore=["net", "optimizer", "scheduler", "quality", "clip_score"]
        )
        self.seed = seed
        unknown = sorted(set(sampling or {}) - set(DEFAULT_SAMPLING))
        if unknown:
            raise KeyError(f"lit.sampling: unknown keys {unknown} (known: {sorted(DEFAULT_SAMPLING)})")
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.keep_region = MaskedReconstruction(value_range=(-1.0, 1.0))
        # Held in a plain dict, not as submodules: their feature extractors (Inception, CLIP) must not
        # enter the state dict, or a training checkpoint would not load strictly for evaluation.
        self.external_metrics: dict[str, nn.Module] = {
            name: metric
            for name, metric in (("quality", quality), ("clip_score", clip_score))
            if metric is not None
        }
        self.sampled = 0
        self.test_examples: list[dict[str, Any]] = []

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["image"].shape[0])

    # the random streams (lit/objectives.py step_generator): training noise, validation noise, test sampling
    TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 0, 1, 2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.net.training_loss(
            batch, None, step_generator(self.seed, self.global_step, stream=self.TRAIN_STREAM)
        )
        self.log("train/loss", loss, batch_size=self.batch_size_of(batch), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = step_generator(self.seed, batch_idx, stream=self.VAL_STREAM)
        loss = self.net.training_loss(batch, None, generator, condition_drop=0.0)
        self.log("val/loss", loss, batch_size=self.batch_size_of(batch), sync_dist=True)

    # ----------------------------------------------------------------------------------- testing
    def on_test_epoch_start(self) -> None:
        self.keep_region.reset()
        for metric in self.external_metrics.values():
            metric.to(self.device).reset()
        self.sampled = 0
        self.test_examples = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        budget = int(self.sampling["max_images"]) - self.sampled
        if budget <= 0:
            return
        batch = {k: v[:budget] for k, v in batch.items() if k != "bad_images"}
        options = {k: self.sampling[k] for k in ("num_steps", "guidance_scale", "eta", "paste_back")}
        # the generator lives on the latents' device (diffusers draws noise there when given one)
        generator = step_generator(self.seed, batch_idx, stream=self.TEST_STREAM, device=self.device)
        images = self.net.sample(batch, generator=generator, **options)
        person = to_signed(batch["image"]).to(images.dtype)
        self.keep_region.update(images, person, keep_mask_from_paint_mask(batch["agnostic_mask"]))
        if "quality" in self.external_metrics:
            self.external_metrics["quality"].update(person, real=True)
            self.external_metrics["quality"].update(images, real=False)
        if "clip_score" in self.external_metrics:
            self.external_metrics["clip_score"].update(images, batch["caption"])
        self.sampled += images.shape[0]
        room = int(self.sampling["num_examples"]) - len(self.test_examples)
        for i in range(min(room, images.shape[0])):
            self.test_examples.append(
                {
                    "agnostic": batch["agnostic"][i].cpu(),
                    "sketch": batch["sketch"][i].cpu(),
                    "mask": batch["agnostic_mask"][i].cpu(),
                    "output": images[i].cpu(),
                    "person": batch["image"][i].cpu(),
                    "caption": batch["caption"][i],
                }
            )

    def on_test_epoch_end(self) -> None:
        if int(self.sampling["max_images"]) <= 0:
            return
        values: dict[str, torch.Tensor] = {}
        keep = self.keep_region.compute()
        values["keep_psnr"], values["keep_ssim"] = keep["psnr"], keep["ssim"]
        if "quality" in self.external_metrics:
            values.update(self.external_metrics["quality"].compute())
        if "clip_score" in self.external_metrics:
            values["clip_score"] = self.external_metrics["clip_score"].compute()
        # already reduced across ranks by the metrics themselves
        self.log_dict({f"test/{k}": v for k, v in values.items()}, sync_dist=False)
