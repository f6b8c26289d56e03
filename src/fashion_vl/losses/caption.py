"""UniFashion's LLM caption loss: the LLM writes the product text after the image's projected query
outputs and an instruction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fashion_vl.losses.objective import StepContext, output

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


class CaptionLoss(nn.Module):
    """Next-token cross-entropy of the LLM on the text (``batch["text"]``, so the DataModule needs
    ``return_text: true``), with ``[projected query outputs ; instruction]`` as the prefix.

    Args:
        prompts: instructions; each sample draws one at random (the reference draws one per batch).
        prefix: ``queries`` (ours): the LLM reads the image-only query outputs; ``fused`` (the
            reference's ``blip2_qformer_cir_full``; the ``fidelity=reference`` preset): every output,
            queries and text, of a Q-Former pass that also reads the caption (``batch["input_ids"]``),
            which leaks the answer into the prefix.
        append_eos: end each target with EOS (ours) or not (the reference).
    """

    def __init__(self, prompts: Sequence[str], prefix: str = "queries", append_eos: bool = True) -> None:
        super().__init__()
        if not prompts:
            raise ValueError("lit.objectives.caption.prompts is empty")
        if prefix not in ("queries", "fused"):
            raise ValueError(f"lit.objectives.caption.prefix must be 'queries' or 'fused', not {prefix!r}")
        self.prompts = list(prompts)
        self.prefix = prefix
        self.append_eos = append_eos

    def draw_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        picks = torch.randint(len(self.prompts), (n,), generator=generator)
        return [self.prompts[int(i)] for i in picks]

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if "text" not in batch:
            raise KeyError("the caption loss needs the raw texts: set data.return_text=true")
        enc: ImageTextEncoding = step.encoding
        texts = batch["text"]
        states = enc.query_states
        if self.prefix == "fused":
            states = net.qformer.fused_states(enc.image_tokens, batch["input_ids"], batch["attention_mask"])
        loss = net.caption_loss(states, self.draw_prompts(len(texts), step.generator), texts, self.append_eos)
        return output(loss)
