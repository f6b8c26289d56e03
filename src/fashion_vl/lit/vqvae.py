"""Training the MPFC image tokenizer: a VQ-VAE (diffusers ``VQModel``) on the training images.

The authors' VQ-VAE cannot be downloaded, so ``fvl-train experiment=vqvae_fashionall`` trains ours;
``model/image_tokenizer/vq_ckpt`` then turns its checkpoint into the frozen MPFC tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import VQModel
from torchmetrics import Metric

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.models.encoders.pixels import FASHION_MEAN, FASHION_STD, ImageNormalize

RECON_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
}


class CodebookUsage(Metric):
    """How much of the codebook the encoder uses: counts of each index over an epoch (summed over
    ranks), reported as the perplexity of the index distribution (``exp`` of its entropy: 1 when one
    entry takes everything, ``num_codes`` when all are used equally) and the fraction of entries used."""

    full_state_update = False

    def __init__(self, num_codes: int) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.add_state("counts", default=torch.zeros(num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.flatten(), minlength=self.num_codes)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.counts.sum()
        p = self.counts.double() / total.clamp(min=1)
        entropy = -(p * p.clamp(min=1e-12).log()).sum()
        return {
            "codebook_perplexity": entropy.exp().float(),
            "codebook_usage": (self.counts > 0).float().mean(),
        }


class VQVAEModule(FashionLitModule):
    """Train a ``VQModel`` to reconstruct ``batch["image"]`` (dataset-normalised, as the data gives it).

    Loss = ``recon_loss(reconstruction, image)`` + ``vq_loss_weight * commit_loss`` (the quantizer's
    codebook + commitment term, see ``models.vqvae.build_vqmodel``). Logged: ``{split}/recon_loss``,
    ``{split}/vq_loss``, ``{split}/loss``; in validation also ``val/codebook_perplexity`` and
    ``val/codebook_usage`` (fraction of entries used over the validation set). Validation batches may
    be gallery batches (every image of their products); batches without images are skipped.

    Args:
        net: the ``VQModel`` (``conf/model/vqvae*.yaml``).
        recon_loss: ``l1`` or ``mse``, on normalised pixels.
        vq_loss_weight: weight of the quantizer's loss.
        mean, std: the dataset normalisation of the ``uint8`` batches (FashionViL's: the MPFC tokenizer
            reads what the image encoder reads), applied on the device before the ``VQModel``.
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    def __init__(
        self,
        net: VQModel,
        optimizer: Any,
        scheduler: Any = None,
        recon_loss: str = "l1",
        vq_loss_weight: float = 1.0,
        lr_multiplier: float = 1.0,
        fast_modules: tuple[str, ...] = (),
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        # diffusers' VQModel has no input step of its own; non-persistent: checkpoints keep their keys
        self.input_norm = ImageNormalize(mean, std)
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"lit.recon_loss must be one of {sorted(RECON_LOSSES)}, not {recon_loss!r}")
        # the full resolved config is in every checkpoint (ConfigInCheckpoint); keep hparams to plain values
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.recon_loss = RECON_LOSSES[recon_loss]
        self.vq_loss_weight = vq_loss_weight
        self.val_usage = CodebookUsage(int(net.config.num_vq_embeddings))

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["image"].shape[0])

    def _losses(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Losses and the latents before quantization ``[B, D, h, w]``."""
        images = self.input_norm(images)
        latents = self.net.encode(images).latents
        decoded = self.net.decode(latents)
        recon = self.recon_loss(decoded.sample.float(), images.float())
        vq = decoded.commit_loss.mean()  # a scalar in diffusers' quantizer; mean() in case it becomes [B]
        losses = {"recon_loss": recon, "vq_loss": vq, "loss": recon + self.vq_loss_weight * vq}
        return losses, latents

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, _ = self._losses(batch["image"])
        bs = self.batch_size_of(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        self.log("train/recon_loss", losses["recon_loss"], batch_size=bs)
        self.log("train/vq_loss", losses["vq_loss"], batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        if images.numel() == 0:  # every image of these products failed to load
            return
        losses, latents = self._losses(images)
        _, _, (_, _, indices) = self.net.quantize(latents)
        self.val_usage.update(indices)
        bs = self.batch_size_of(batch)
        for name, value in losses.items():
            self.log(f"val/{name}", value, batch_size=bs, sync_dist=True, prog_bar=name == "recon_loss")

    def on_validation_epoch_end(self) -> None:
        if not self.val_usage.update_called and self.trainer.world_size == 1:
            return  # no image in the whole validation set (every rank must compute: it syncs)
        values = self.val_usage.compute()
        self.val_usage.reset()
        self.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=False, rank_zero_only=False)
