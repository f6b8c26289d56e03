"""UniFashion's LLM caption loss: the LLM writes the product text after the image's projected query
outputs and an instruction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fashion_vl.losses.objective import output

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


class CaptionLoss(nn.Module):
    """Next-token cross-entropy of the LLM on the text (``batch["text"]``, so the DataModule needs
    ``return_text: true``), with ``[projected query outputs ; instruction]`` as the prefix.

    The LLM reads the image-only query outputs. (The reference's ``blip2_cir_full`` feeds it the
    outputs of a pass with the target text as Q-Former input, which leaks the answer into the prefix.)

    Args:
        prompts: instructions; each sample draws one at random (the reference draws one per batch).
    """

    def __init__(self, prompts: Sequence[str]) -> None:
        super().__init__()
        if not prompts:
            raise ValueError("lit.objectives.caption.prompts is empty")
        self.prompts = list(prompts)

    def draw_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        picks = torch.randint(len(self.prompts), (n,), generator=generator)
        return [self.prompts[int(i)] for i in picks]

    def forward(
        self, net: UniFashion, enc: ImageTextEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        if "text" not in batch:
            raise KeyError("the caption loss needs the raw texts: set data.return_text=true")
        texts = batch["text"]
        loss = net.caption_loss(enc.query_states, self.draw_prompts(len(texts), generator), texts)
        return output(loss)
