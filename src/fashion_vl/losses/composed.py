"""UniFashion phase 2 objectives (``docs/reference.md`` UniFashion §3) on a
:class:`~fashion_vl.models.outputs.ComposedEncoding`: ITC composed <-> target, TTC composed <-> target
caption, ITM on (target image, target caption) or on (reference + target image, modification text) with
hard negatives. Each is called as every objective is, ``objective(net, batch, step)``, with the step's
:class:`~fashion_vl.models.outputs.ComposedEncoding` as ``step.encoding``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.dist import gather_no_grad, gather_with_grad, rank
from fashion_vl.losses.itc import MultiQueryContrastiveLoss, max_over_queries
from fashion_vl.losses.itm import (
    QueryItmLoss,
    gathered_texts,
    mine_negatives,
    negative_mode,
    triplet_itm_loss,
)
from fashion_vl.losses.objective import StepContext, output, zero_loss
from fashion_vl.models.outputs import ComposedEncoding, ImageTextEncoding

if TYPE_CHECKING:
    from fashion_vl.models.unifashion import UniFashion


class ComposedItcLoss(nn.Module):
    """ITC between composed queries and target images: :class:`MultiQueryContrastiveLoss` over the max
    over the target's prompt-query features, both directions, negatives gathered from every rank, at the
    Q-Former's learnable temperature (``enc.temperature``, shared with TTC)."""

    def __init__(self, loss: MultiQueryContrastiveLoss | None = None) -> None:
        super().__init__()
        self.loss = loss or MultiQueryContrastiveLoss()

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ComposedEncoding = step.encoding
        loss = self.loss(enc.target_feats, enc.composed_feat, enc.temperature)
        return output(loss, temperature=enc.temperature)


def masked_contrastive(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``a [B, E]`` and ``b [B, E]`` (logits ``a b^T / temperature``,
    columns from every rank) averaged over the rows where ``valid [B]``; rows without a pair still serve
    as negatives. Zero (with graph) when no row of this rank is valid."""
    n = a.shape[0]
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(n, device=a.device) + rank() * n
    a2b = F.cross_entropy(a @ b_all.T / temperature, labels, reduction="none")
    b2a = F.cross_entropy(b @ a_all.T / temperature, labels, reduction="none")
    weight = valid.to(a2b.dtype)
    if not bool(valid.any()):
        return zero_loss(a2b, b2a)
    return 0.5 * ((a2b + b2a) * weight).sum() / weight.sum()


class TtcLoss(nn.Module):
    """TTC: the composed feature against the target caption's text [CLS] feature (symmetric InfoNCE at
    the Q-Former's temperature), so the fusion also matches a description of the wanted item. Pairs whose
    target has no caption are left out of the average (:func:`masked_contrastive`).

    Args:
        source: ``cls`` (ours): the composed feature (the fused [CLS] through ``text_projection``), both
            directions, negatives from every rank; ``queries`` (the reference's ``loss_ttc``,
            ``blip2_qformer_cir_rerank``; the ``fidelity=reference`` preset): the query outputs of the
            same fusion pass through ``vision_projection``, max over queries against each caption,
            composed -> caption only, negatives from this rank's batch (one more fusion pass here:
            the encoding keeps only the [CLS]). Its scale is the reference's single cross-entropy, so
            its loss weight is 1 where ours (the mean of two directions) is 2.
    """

    def __init__(self, source: str = "cls") -> None:
        super().__init__()
        if source not in ("cls", "queries"):
            raise ValueError(f"lit.objectives.ttc.source must be 'cls' or 'queries', not {source!r}")
        self.source = source

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ComposedEncoding = step.encoding
        if enc.caption_feat is None:
            raise KeyError("TTC needs target captions: set data.target_captions=true")
        valid = batch["has_target_caption"].to(enc.composed_feat.device)
        if self.source == "queries":
            if enc.reference_tokens is None:
                raise KeyError("TTC on query outputs needs the reference image's tokens")
            qformer = net.qformer
            fused = qformer.fused_states(enc.reference_tokens, batch["input_ids"], batch["attention_mask"])
            queries = qformer.project_image(fused[:, : qformer.num_query_tokens])
            logits = max_over_queries(queries, enc.caption_feat) / enc.temperature
            labels = torch.arange(logits.shape[0], device=logits.device)
            rows = F.cross_entropy(logits, labels, reduction="none")
            weight = valid.to(rows.dtype)
            loss = (rows * weight).sum() / weight.sum() if bool(valid.any()) else zero_loss(rows)
            return output(loss, captioned=gather_no_grad(valid.float()).mean())
        loss = masked_contrastive(enc.composed_feat, enc.caption_feat, valid, enc.temperature)
        covered = gather_no_grad(valid.float()).mean()
        return output(loss, captioned=covered)


class TargetItmLoss(nn.Module):
    """ITM for re-ranking: phase 1's :class:`~fashion_vl.losses.itm.QueryItmLoss` (hard negatives both
    ways, 3B pairs, ``itm_head`` over the phase-1 query outputs) on (target image, target caption) pairs.
    Negatives are mined from the similarities of the targets' prompt-query features and the captions'
    features, positives masked by target image (``target_key``). A target without a caption is paired
    with the empty text (the DataModule logs how many).

    Args:
        negatives: ``argmax``, ``sample`` or ``uniform`` (:func:`~fashion_vl.losses.itm.mine_negatives`).
        mining: ``caption`` (ours, above); ``composed`` (the reference's ``blip2_qformer_cir_rerank``
            ``loss_itm``; the ``fidelity=reference`` preset): both negatives are mined from the
            composed <-> target ITC similarities of this rank's batch with only the diagonal masked
            (b's negative text from row b of composed -> target, a target index used as a text index;
            b's negative target from row b of target -> composed), and the negative texts are other
            samples' *modification texts* while the positives read target captions: the text style
            alone gives the answer away.
        query_set: the query set the pairs are read with: ``queries`` (ours, the phase-1 queries) or
            ``prompts`` (the reference's ``prompt_tokens``).
    """

    def __init__(
        self, negatives: str = "argmax", mining: str = "caption", query_set: str = "queries"
    ) -> None:
        super().__init__()
        self.itm = QueryItmLoss(negatives)
        if mining not in ("caption", "composed"):
            raise ValueError(f"lit.objectives.itm.mining must be 'caption' or 'composed', not {mining!r}")
        if query_set not in ("queries", "prompts"):
            raise ValueError(
                f"lit.objectives.itm.query_set must be 'queries' or 'prompts', not {query_set!r}"
            )
        self.mining = mining
        self.query_set = query_set

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ComposedEncoding = step.encoding
        if enc.caption_feat is None:
            raise KeyError("ITM on target captions needs them: set data.target_captions=true")
        query_tokens = net.qformer.prompt_tokens if self.query_set == "prompts" else None
        if self.mining == "composed":
            return self._reference(net, enc, batch, step.generator, query_tokens)
        if query_tokens is not None:
            raise ValueError("lit.objectives.itm.query_set=prompts needs mining=composed")
        pairs = ImageTextEncoding(enc.target_tokens, enc.target_states, enc.target_feats, enc.caption_feat)
        caption_batch = {
            "input_ids": batch["target_input_ids"],
            "attention_mask": batch["target_attention_mask"],
            "product_id": batch["target_key"],
        }
        return self.itm(net, caption_batch, dataclasses.replace(step, encoding=pairs))

    def _reference(
        self,
        net: UniFashion,
        enc: ComposedEncoding,
        batch: dict,
        generator: torch.Generator,
        query_tokens: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The reference's pairs, per rank: (target, caption), (negative target, caption), (target,
        negative modification text)."""
        with torch.no_grad():
            sim_c2t = max_over_queries(enc.target_feats, enc.composed_feat).T / enc.temperature
            own = torch.arange(sim_c2t.shape[0], device=sim_c2t.device)  # only the diagonal is masked
            negative_text = mine_negatives(sim_c2t, own, own, self.itm.negatives, generator)
            negative_target = mine_negatives(sim_c2t.T, own, own, self.itm.negatives, generator)
        pair_tokens = torch.cat([enc.target_tokens, enc.target_tokens[negative_target], enc.target_tokens])
        ids, mask = batch["target_input_ids"], batch["target_attention_mask"]
        texts = (batch["input_ids"], batch["attention_mask"])
        length = max(ids.shape[1], texts[0].shape[1])  # triplet_itm_loss pads captions to the texts' width
        texts = tuple(F.pad(t, (0, length - t.shape[1])) for t in texts)
        return triplet_itm_loss(net, pair_tokens, ids, mask, texts, negative_text, query_tokens)


class ComposedItmLoss(nn.Module):
    """ITM on what re-ranking scores at test time in the reference (``inference_rerank``): the learned
    queries and the modification text, cross-attending to the reference image's tokens followed by a
    candidate target's, ``itm_head`` averaged over the queries. Per query, three pairs (labels 1/0/0):
    (reference + its target, text), (reference + another target, text) and (reference + its target,
    another query's text). The other target is mined from the composed query's ITC similarities to
    every rank's targets (the candidates re-ranking reorders), the other text from the target's
    similarities to every rank's composed queries; both skip entries with the same ``target_key``.

    Why next to :class:`TargetItmLoss`: the reference trains its ITM head on (target image, target
    caption) and then asks it about (reference + candidate, modification text), pairs it never saw. Here
    the head can be trained on the question it is asked (``lit.rerank_with_reference=true`` asks it).
    At CPU demo scale it does not learn them in 300 steps (``docs/tasks.md``).

    Args:
        negatives: ``argmax`` (the hardest), ``sample`` (BLIP-2's draw from the softmax) or ``uniform``.
    """

    def __init__(self, negatives: str = "argmax") -> None:
        super().__init__()
        self.negatives = negative_mode(negatives)

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ComposedEncoding = step.encoding
        if enc.reference_tokens is None:
            raise KeyError(
                "composed ITM needs the reference image's tokens (ComposedEncoding.reference_tokens)"
            )
        ids, mask, keys = batch["input_ids"], batch["attention_mask"], batch["target_key"]
        with torch.no_grad():
            all_keys = gather_no_grad(keys)
            sim_q2t = (
                max_over_queries(gather_no_grad(enc.target_feats), enc.composed_feat).T / enc.temperature
            )
            sim_t2q = max_over_queries(enc.target_feats, gather_no_grad(enc.composed_feat)) / enc.temperature
            other_target = mine_negatives(sim_q2t, keys, all_keys, self.negatives, step.generator)
            other_text = mine_negatives(sim_t2q, keys, all_keys, self.negatives, step.generator)
        all_targets = gather_with_grad(enc.target_tokens)
        own = torch.cat([enc.reference_tokens, enc.target_tokens], dim=1)
        swapped = torch.cat([enc.reference_tokens, all_targets[other_target]], dim=1)
        pair_tokens = torch.cat([own, swapped, own])
        return triplet_itm_loss(net, pair_tokens, ids, mask, gathered_texts(ids, mask), other_text)


class ItmOnModificationText(nn.Module):
    """Runs an ITM objective written for (target image, target caption) pairs
    (:class:`~fashion_vl.losses.TargetItmLoss`) on (target image, modification text) pairs instead: the
    pairs re-ranking scores at test time, where the query's only text is its modification text. Hard
    negatives are mined from the modification texts' own text [CLS] features (computed without
    gradient); positives are still masked by target image (``target_key``)."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            text_feat = net.encode_text(ids, mask)
        enc = dataclasses.replace(step.encoding, caption_feat=text_feat)
        return self.objective(
            net,
            {**batch, "target_input_ids": ids, "target_attention_mask": mask},
            dataclasses.replace(step, encoding=enc),
        )
