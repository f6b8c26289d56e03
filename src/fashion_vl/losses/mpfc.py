"""Masked patch feature classification: predict VQ codebook indices of masked grid cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses.objective import output, zero_loss
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import MpfcHead


class MpfcLoss(nn.Module):
    """MPFC: grid features of the masked cells (``batch["patch_mask"]``) are zeroed *before* the
    projection (pixels are not masked); the fusion with the unmasked text predicts, at each masked
    visual position, the codebook index a frozen VQ tokenizer gives that cell of the same augmented
    image. Cross-entropy over masked cells only.

    Targets come from ``batch["patch_labels"]`` when the data provides precomputed indices, otherwise
    from ``tokenizer`` run on the same batch of images (the reference; exact for any augmentation).

    Args:
        tokenizer: a frozen module mapping images ``[B,3,H,W]`` to indices ``[B, N]``, with a
            ``codebook_size`` attribute (``fashion_vl.models.vqvae.VQTokenizer``).
    """

    def __init__(self, net: FashionViL, tokenizer: nn.Module, codebook_size: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        size = codebook_size or getattr(tokenizer, "codebook_size", None)
        if size is None:
            raise ValueError("lit.objectives.mpfc: give codebook_size or a tokenizer with a codebook_size")
        self.head = MpfcHead(net.text_encoder, size)

    def forward(self, net: FashionViL, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, mask = batch["image"], batch["patch_mask"]
        targets = batch.get("patch_labels")
        if targets is None:
            with torch.no_grad():
                targets = self.tokenizer(images)
        grid = net.image_grid(images, grid_mask=mask)
        if targets.shape != mask.shape:
            raise ValueError(
                f"VQ tokenizer gives {tuple(targets.shape)} indices for a {tuple(mask.shape)} grid mask"
            )
        fused = net.encode_fused(batch["input_ids"], batch["attention_mask"], grid=grid)
        if not mask.any():
            return output(zero_loss(fused.visual), acc=torch.zeros(()))
        logits = self.head(fused.visual[mask])
        labels = targets[mask].long()
        loss = F.cross_entropy(logits, labels)
        return output(loss, acc=(logits.argmax(dim=1) == labels).float().mean())
