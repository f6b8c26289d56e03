"""Masked language modelling over the fusion of the masked text and the (unmasked) image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.data.masking import IGNORE_INDEX
from fashion_vl.losses.objective import StepContext, output, zero_loss
from fashion_vl.models.fashionvil import FashionViL


class MlmLoss(nn.Module):
    """MLM: predict the original ids of the whole-word-masked tokens (``batch["mlm_labels"]``) from the
    text positions of ``fusion([masked text ; image])`` through the network's
    :class:`~fashion_vl.models.heads.MlmHead` (``net.heads[head]``, its decoder tied to BERT's word
    embeddings). Only masked positions go through the head (same loss, less work than all positions).
    """

    def __init__(self, head: str = "mlm") -> None:
        super().__init__()
        self.head = head

    def forward(self, net: FashionViL, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        fused = net.encode_fused(batch["mlm_input_ids"], batch["attention_mask"], batch["image"])
        labels = batch["mlm_labels"]
        chosen = labels != IGNORE_INDEX
        if not chosen.any():
            return output(zero_loss(fused.text), acc=torch.zeros(()))
        logits = net.heads[self.head](fused.text[chosen])
        targets = labels[chosen]
        loss = F.cross_entropy(logits, targets)
        return output(loss, acc=(logits.argmax(dim=1) == targets).float().mean())
