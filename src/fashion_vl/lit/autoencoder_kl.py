"""Fitting the diffusion branch's VAE (diffusers ``AutoencoderKL``) on the training images.

Real runs read Stable Diffusion's trained VAE by hub name. A tiny randomly initialised VAE does not
invert itself: latent diffusion on it learns to draw latents whose decoding is noise, so every CPU run
that judges pictures (keep-region PSNR, attribute accuracy) first fits the tiny VAE with this module
(``experiment=demo_diffusion_vae``) and loads it with ``vae_from`` (``build_diffusion_branch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.models.unifashion.diffusion import to_vae_range


class AutoencoderKLModule(FashionLitModule):
    """Train an ``AutoencoderKL`` to reconstruct ``batch[image_key]``.

    Loss = L1 of the reconstruction (of a posterior sample) in ``[-1, 1]``, foreground pixels weighted
    ``foreground_weight``, + ``kl_weight`` x the KL
    divergence to N(0, I) per latent element (SD's VAE recipe without its perceptual and GAN terms,
    which need pretrained networks). Logged: ``{split}/recon_loss``, ``{split}/kl``, ``train/loss``;
    validation also ``val/psnr`` (dB, of the posterior mean's reconstruction, higher is better).

    The buffer ``latent_std`` follows the standard deviation of the training latents (a moving average,
    momentum 0.98); it is saved with the weights, and ``load_fitted_vae`` sets the VAE's
    ``scaling_factor`` to its inverse, so that scaled latents have unit variance as the noise schedule
    assumes (how SD's 0.18215 was chosen). ``train/latent_std`` logs it.

    Args:
        net: the ``AutoencoderKL``.
        kl_weight: weight of the KL term (1e-6, SD's).
        foreground_weight: L1 weight of pixels that are not background, relative to background ones
            (1: plain L1). Small garments shot on white are mostly background: with plain L1 a tiny
            VAE learns their luminance long before their hue (measured: the attribute judge found the
            asked colour in 14% of its reconstructions after 300 steps; 52% with weight 10).
        background_level: a pixel is background when every channel is at or above it (in ``[-1, 1]``;
            0.9: near white).
        image_key: batch key of the images.
        mean, std: their normalisation (0.5 / 0.5: the data is already in ``[-1, 1]``, as try-on data).
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    def __init__(
        self,
        net: AutoencoderKL,
        optimizer: Any,
        scheduler: Any = None,
        kl_weight: float = 1e-6,
        foreground_weight: float = 1.0,
        background_level: float = 0.9,
        image_key: str = "image",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        if foreground_weight < 1:
            raise ValueError(f"lit.foreground_weight must be >= 1, not {foreground_weight}")
        self.kl_weight = kl_weight
        self.foreground_weight = foreground_weight
        self.background_level = background_level
        self.image_key = image_key
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("latent_std", torch.tensor(0.0))  # 0: no training step yet

    def batch_size_of(self, batch: dict) -> int:
        return int(batch[self.image_key].shape[0])

    def pixels(self, batch: dict) -> torch.Tensor:
        if self.image_key not in batch:
            raise KeyError(f"lit.image_key={self.image_key!r} is not a batch key ({sorted(batch)})")
        return to_vae_range(batch[self.image_key], self.mean, self.std)

    def _losses(
        self, batch: dict, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pixels(batch)
        posterior = self.net.encode(x).latent_dist
        z = posterior.sample() if sample else posterior.mode()
        recon = self.net.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()  # per latent element
        return recon, self.recon_loss(recon, x), kl, z

    def recon_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L1, foreground pixels weighted ``foreground_weight`` (normalised by the mean weight)."""
        if self.foreground_weight == 1:
            return F.l1_loss(recon, x)
        foreground = (x < self.background_level).any(dim=1, keepdim=True)
        weight = 1 + (self.foreground_weight - 1) * foreground.to(x.dtype)
        return (weight * (recon - x).abs()).mean() / weight.mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, recon_loss, kl, z = self._losses(batch, sample=True)
        with torch.no_grad():
            std = z.float().std()
            self.latent_std.copy_(std if self.latent_std == 0 else 0.98 * self.latent_std + 0.02 * std)
        self.log("train/latent_std", self.latent_std, batch_size=self.batch_size_of(batch))
        loss = recon_loss + self.kl_weight * kl
        bs = self.batch_size_of(batch)
        self.log_dict({"train/recon_loss": recon_loss, "train/kl": kl}, batch_size=bs)
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        recon, recon_loss, kl, _ = self._losses(batch, sample=False)
        x = self.pixels(batch)
        mse = ((recon.clamp(-1, 1) - x) ** 2).flatten(1).mean(1)
        psnr = (10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean()  # peak-to-peak 2 in [-1, 1]
        bs = self.batch_size_of(batch)
        self.log_dict(
            {"val/recon_loss": recon_loss, "val/kl": kl, "val/psnr": psnr}, batch_size=bs, sync_dist=True
        )
