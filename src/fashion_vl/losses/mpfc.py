"""Masked patch feature classification: predict VQ codebook indices of masked grid cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses.objective import StepContext, output, zero_loss
from fashion_vl.models.fashionvil import FashionViL


class MpfcLoss(nn.Module):
    """MPFC: grid features of the masked cells (``batch["patch_mask"]``) are zeroed *before* the
    projection (pixels are not masked); the fusion with the unmasked text predicts, at each masked
    visual position, the codebook index a frozen VQ tokenizer gives that cell of the same augmented
    image, through the network's :class:`~fashion_vl.models.heads.MpfcHead` (``net.heads[head]``).
    Cross-entropy over masked cells only.

    Targets come from ``batch["patch_labels"]`` when the data provides precomputed indices, otherwise
    from the network's frozen tokenizer (``net.image_tokenizer``, a
    :class:`~fashion_vl.models.vqvae.VQTokenizer`: images ``[B,3,H,W]`` -> indices ``[B, N]``) run on the
    same batch of images (the reference; exact for any augmentation).
    """

    def __init__(self, head: str = "mpfc") -> None:
        super().__init__()
        self.head = head

    def forward(self, net: FashionViL, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        images, mask = batch["image"], batch["patch_mask"]
        targets = batch.get("patch_labels")
        if targets is None:
            if net.image_tokenizer is None:
                raise ValueError(
                    "MPFC needs targets: set model.image_tokenizer or give batch['patch_labels']"
                )
            with torch.no_grad():
                targets = net.image_tokenizer(images)
        grid = net.image_grid(images, grid_mask=mask)
        if targets.shape != mask.shape:
            raise ValueError(
                f"VQ tokenizer gives {tuple(targets.shape)} indices for a {tuple(mask.shape)} grid mask"
            )
        fused = net.encode_fused(batch["input_ids"], batch["attention_mask"], grid=grid)
        if not mask.any():
            return output(zero_loss(fused.visual), acc=torch.zeros(()))
        logits = net.heads[self.head](fused.visual[mask])
        labels = targets[mask].long()
        loss = F.cross_entropy(logits, labels)
        return output(loss, acc=(logits.argmax(dim=1) == labels).float().mean())
