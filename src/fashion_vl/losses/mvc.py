"""Multi-view contrastive learning (the reference's ``icc`` task, the paper's MVC)."""

from __future__ import annotations

import torch
from torch import nn

from fashion_vl.losses.itc import ContrastiveLoss
from fashion_vl.losses.objective import StepContext, output
from fashion_vl.models.fashionvil import FashionViL


def dropout_positions(
    num_text: int, num_visual: int, max_text_length: int, ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions dropped for the whole batch, drawn with replacement as in the reference:
    ``int(ratio * max_text_length)`` text positions (those past this batch's padded length ``num_text``
    fall on padding and are discarded) and ``int(ratio * num_visual)`` visual positions."""
    text = torch.randint(max_text_length, (int(ratio * max_text_length),), generator=generator)
    visual = torch.randint(num_visual, (int(ratio * num_visual),), generator=generator)
    return text[text < num_text], visual


class MvcLoss(nn.Module):
    """MVC: the image-only embedding of view 0 against the fusion of the text with view 1 under token
    drop-out (attention-masked), contrasted with symmetric InfoNCE across the global batch.

    The composed vector zeroes the outputs at dropped visual positions and divides the sum of the
    visual outputs by ``N - int(ratio * N)`` (37 of 49), as the reference does, even when the drawn
    positions repeat.

    Args:
        ratio: share of positions dropped (0.25).
        max_text_length: the text length the drop count is based on (75, the reference's padding).
    """

    def __init__(
        self,
        loss: ContrastiveLoss | None = None,
        ratio: float = 0.25,
        max_text_length: int = 75,
    ) -> None:
        super().__init__()
        self.loss = loss or ContrastiveLoss()
        self.ratio = ratio
        self.max_text_length = max_text_length

    def forward(self, net: FashionViL, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        anchor = net.encode_image(batch["image"], normalize=True)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        grid = net.image_grid(batch["image_view1"])
        num_visual = grid.shape[1]
        text_drop, visual_drop = dropout_positions(
            ids.shape[1], num_visual, self.max_text_length, self.ratio, step.generator
        )
        text_mask = mask.clone()
        text_mask[:, text_drop.to(mask.device)] = 0
        visual_keep = torch.ones(num_visual, dtype=torch.bool, device=mask.device)
        visual_keep[visual_drop.to(mask.device)] = False
        visual_mask = visual_keep[None].expand(ids.shape[0], -1).to(mask.dtype)
        fused = net.encode_fused(ids, text_mask, grid=grid, visual_attention_mask=visual_mask)
        kept = fused.visual * visual_keep[None, :, None]
        composed = kept.sum(dim=1) / (num_visual - int(self.ratio * num_visual))
        return output(self.loss(anchor, net.normalize(composed)))
