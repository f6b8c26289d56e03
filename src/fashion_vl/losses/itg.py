"""Image-grounded text generation (BLIP-2's ITG): the Q-Former decodes the text causally over the
image's query states."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.data.masking import IGNORE_INDEX
from fashion_vl.losses.objective import StepContext, output

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


def decoder_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, bos_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LAVIS's decoder input: the text with [CLS] replaced by the decoder's BOS ([DEC]); labels are the
    inputs with padding ignored. Logits at position t predict label t + 1."""
    ids = input_ids.clone()
    ids[:, 0] = bos_token_id
    return ids, ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


class ItgLoss(nn.Module):
    """ITG: next-token cross-entropy of the Q-Former decoder (see
    :meth:`~fashion_vl.models.unifashion.qformer.QFormer.decoder_logits`) over the text, [SEP] included.

    Args:
        label_smoothing: 0.1 as LAVIS's ``BertLMHeadModel``.
    """

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ImageTextEncoding = step.encoding
        ids, labels = decoder_inputs(batch["input_ids"], batch["attention_mask"], net.qformer.bos_token_id)
        logits = net.qformer.decoder_logits(enc.image_tokens, ids, batch["attention_mask"])
        logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        loss = F.cross_entropy(
            logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing
        )
        chosen = labels != IGNORE_INDEX
        acc = (logits[chosen].argmax(dim=1) == labels[chosen]).float().mean()
        return output(loss, acc=acc)
