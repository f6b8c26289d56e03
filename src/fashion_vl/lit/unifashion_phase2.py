"""UniFashion phase 2 (``docs/reference.md`` UniFashion §3): composed multimodal fine-tuning on
FashionIQ, evaluated as FashionViL's composed retrieval and again after ITM re-ranking."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.dist import rank, world_size
from fashion_vl.lit.base import FashionLitModule, SplitRecallHooks
from fashion_vl.lit.objectives import Objectives
from fashion_vl.lit.unifashion_phase1 import OneCycleFromRun, SharedEncodingObjectives
from fashion_vl.losses.composed import ComposedItmLoss, ItmOnModificationText
from fashion_vl.metrics.composed import ComposedGalleryRecall
from fashion_vl.metrics.retrieval import candidate_scores
from fashion_vl.models.outputs import ComposedEncoding
from fashion_vl.models.unifashion import UniFashion

ITM_TEXTS = ("caption", "modification")


class UniFashionComposedModule(SharedEncodingObjectives, OneCycleFromRun, SplitRecallHooks, FashionLitModule):
    """Phase 2: the composed query (the learned queries and the modification text over the reference
    image, fused [CLS] -> ``text_projection``) against the target (the prompt queries over the target
    image -> ``vision_projection``, one vector per prompt query).

    Objectives (``objective(net, batch, step)`` with one
    :class:`~fashion_vl.models.outputs.ComposedEncoding` per step as ``step.encoding``, weighted and
    summed): ``itc``
    (:class:`~fashion_vl.losses.ComposedItcLoss`), ``ttc`` (:class:`~fashion_vl.losses.TtcLoss`) and
    ``itm`` (:class:`~fashion_vl.losses.TargetItmLoss`); the last two need target captions
    (``data.target_captions=true``).

    Evaluation is FashionViL's composed retrieval's (:class:`ComposedGalleryRecall`: the same queries,
    gallery of every val ``target_id`` incl. fake entries, per-category R@10/R@50, means and ``avg``),
    logged as ``{split}/...``, then once more with the top ``rerank_top_k`` of each query re-scored by
    the ITM head, as ``{split}/rerank/...``.

    Args:
        net: a :class:`~fashion_vl.models.unifashion.UniFashion` whose Q-Former has prompt queries.
        objectives: name -> objective; task_weights: name -> weight (0 or absent: off); mode: ``sum``
            (the reference) or ``sample`` (:class:`~fashion_vl.lit.objectives.TaskSampler`).
        score_with_caption: the reference's test score when target captions exist:
            sim(composed, target image) + sim(composed, target caption). Implemented by adding the
            caption feature to every target vector, so the max over them gains exactly that term.
            Needs gallery captions (``data.target_captions=true``); gallery images without one add 0.
        rerank_top_k: candidates re-scored per query; 0 turns re-ranking off. The reference's active
            FashionIQ re-ranking re-scores 40 with ``inference_rerank`` (``rerank_with_reference``); its
            depth-100 ``compute_itm`` block is commented out.
        rerank_itc_weight: re-ranking score = ITM match score + this x the ITC score (the reference
            re-scores with the ITM head alone: 0; BLIP's re-ranking adds the ITC cosine: 1).
        rerank_itc_score: the ITC score added: ``cosine`` (BLIP's) or ``logit``, the cosine over the
            learned temperature: the logit the ITC loss trained, on the scale of the ITM's logit, so the
            sum is (up to constants) the log of the product of the two models' probabilities. With
            the cosine, top-K candidates differ by a few hundredths while ITM logits differ by units,
            and a weak ITM head overrules the ranking it is meant to refine.
        rerank_itm_score: the ITM match score: ``logit`` (the reference's and LAVIS's ``compute_itm``,
            BLIP's re-ranking: ``itm_head``'s match-class logit averaged over the queries, unbounded like
            the scores it is added to) or ``probability`` (its softmax match probability, squashed into
            [0, 1]: not the scale BLIP's sum adds to the ITC cosine; kept to reproduce older figures).
        rerank_with_reference: the ITM reads the reference image's tokens followed by the candidate's
            (the reference's ``inference_rerank``; train the head on such pairs with
            :class:`~fashion_vl.losses.ComposedItmLoss`) instead of the candidate's alone (its
            ``compute_itm``). Keeps every query's ViT tokens too, as it keeps the gallery's.
        rerank_batch_size: (candidate image, text) pairs per ITM forward.
        itm_text: the text of the ITM objective's pairs: ``caption`` (the reference: the target caption,
            needs ``data.target_captions=true``) or ``modification`` (the modification text, wrapped by
            :class:`~fashion_vl.losses.composed.ItmOnModificationText`): the (target image, modification text) pairs are the ones
            re-ranking scores at test time, so the head is trained on what it is asked; with ``caption``
            it scores relative texts ("is shorter", "is red instead of blue") it never saw.
        seed: seeds the objectives' random choices.
        gallery_queries: the query set that reads gallery images at evaluation: ``prompts`` (ours, as
            training reads targets) or ``queries`` (the reference's ``extract_target_features`` reads
            them with ``query_tokens`` although training uses ``prompt_tokens``; the
            ``fidelity=reference`` preset).
        drop_last_queries: 0 scores every query (ours); 4 scores only the first ``4 * (n // 4)`` of each
            category, as the reference's FashionIQ loader (``batch_size=4, drop_last=True``) does, and
            logs ``{split}/dropped_queries`` (the ``fidelity=reference`` preset).
        ks, group_names: see :class:`ComposedGalleryRecall`.
        optimizer, scheduler, lr_multiplier, fast_modules: see
            :class:`~fashion_vl.lit.base.FashionLitModule` (``OneCycleLR`` as in phase 1).

    The ITM re-scores (candidate target image, modification text) pairs, the query's only text at test
    time; with ``rerank_with_reference``, (reference image + candidate, modification text). Re-ranking
    keeps every gallery image's ViT tokens (on CPU, in the ViT's dtype) until the end of the evaluation.
    Under DDP each rank keeps its own gallery rows' tokens and scores the candidates among them (query
    texts are shared, scores summed: the figures of one process); ``rerank_with_reference`` runs in a
    single process only, and under DDP it is skipped with a warning.
    """

    no_decay_below_2d = True  # LAVIS's weight-decay exemptions (optim.param_groups)

    def __init__(
        self,
        net: UniFashion,
        objectives: Mapping[str, nn.Module],
        task_weights: Mapping[str, float],
        optimizer: Any,
        scheduler: Any = None,
        mode: str = "sum",
        seed: int = 0,
        score_with_caption: bool = False,
        rerank_top_k: int = 100,
        rerank_itc_weight: float = 0.0,
        rerank_itm_score: str = "logit",
        rerank_itc_score: str = "cosine",
        rerank_with_reference: bool = False,
        rerank_batch_size: int = 256,
        itm_text: str = "caption",
        gallery_queries: str = "prompts",
        drop_last_queries: int = 0,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
        ks: Sequence[int] = (10, 50),
        group_names: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "objectives", "optimizer", "scheduler"])
        if net.qformer.prompt_tokens is None:
            raise ValueError("UniFashion phase 2 needs prompt queries: set model.qformer.num_prompt_tokens")
        if itm_text not in ITM_TEXTS:
            raise ValueError(f"lit.itm_text must be one of {ITM_TEXTS}, not {itm_text!r}")
        self.itm_text = itm_text
        chosen = dict(objectives)
        wrap = itm_text == "modification" and "itm" in chosen
        if wrap and not isinstance(chosen["itm"], ComposedItmLoss):  # that one reads the texts itself
            chosen["itm"] = ItmOnModificationText(chosen["itm"])
        self.objectives = Objectives(chosen, task_weights, mode, seed)
        self.seed = seed
        self.score_with_caption = score_with_caption
        self.rerank_top_k = rerank_top_k
        self.rerank_itc_weight = rerank_itc_weight
        if rerank_itm_score not in ("logit", "probability"):
            raise ValueError(
                f"lit.rerank_itm_score must be 'logit' or 'probability', not {rerank_itm_score!r}"
            )
        self.rerank_itm_score = rerank_itm_score
        if rerank_itc_score not in ("cosine", "logit"):
            raise ValueError(f"lit.rerank_itc_score must be 'cosine' or 'logit', not {rerank_itc_score!r}")
        self.rerank_itc_score = rerank_itc_score
        self.rerank_with_reference = rerank_with_reference
        self.rerank_batch_size = rerank_batch_size
        if gallery_queries not in ("prompts", "queries"):
            raise ValueError(f"lit.gallery_queries must be 'prompts' or 'queries', not {gallery_queries!r}")
        self.gallery_queries = gallery_queries
        self.val_recall = ComposedGalleryRecall(ks, group_names, drop_last_batch=drop_last_queries)
        self.test_recall = ComposedGalleryRecall(ks, group_names, drop_last_batch=drop_last_queries)
        self._reset_rerank_inputs()

    def _reset_rerank_inputs(self) -> None:
        """Empties what re-ranking keeps during an evaluation: per gallery row its ViT tokens, per query
        its modification text and (``rerank_with_reference``) its reference image's ViT tokens."""
        self._gallery_tokens: list[torch.Tensor] = []
        self._query_texts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._query_tokens: list[torch.Tensor] = []
        self._gallery_offset = 0  # where this rank's gallery rows start among every rank's (DDP)

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def encode(self, batch: dict) -> ComposedEncoding:
        """The passes every objective reads, run once per step."""
        qformer = self.net.qformer
        reference = self.net.image_tokens(batch["reference_image"])
        composed = qformer.composed_feature(reference, batch["input_ids"], batch["attention_mask"])
        tokens = self.net.image_tokens(batch["target_image"])
        states = qformer.prompt_states(tokens)
        caption = None
        if "target_input_ids" in batch:
            caption = self.net.encode_text(batch["target_input_ids"], batch["target_attention_mask"])
        # clamped once here: a second in-place clamp after the first loss read it would break backward
        temperature = qformer.temperature()
        return ComposedEncoding(
            composed, tokens, states, qformer.project_image(states), caption, temperature, reference
        )

    # ----------------------------------------------------------------------------------- evaluation
    def _reranking(self) -> bool:
        """Whether this evaluation re-ranks (and keeps what that reads): not with ``rerank_top_k: 0``,
        nor under DDP with ``rerank_with_reference`` (each pair would need the reference's tokens from
        the query's rank and the candidate's from another)."""
        return self.rerank_top_k > 0 and not (self.rerank_with_reference and world_size() > 1)

    def _evaluate(self, batch: dict, metric: ComposedGalleryRecall) -> None:
        if batch["query_image"].numel():
            reference = self.net.image_tokens(batch["query_image"])
            query = self.net.qformer.composed_feature(reference, batch["input_ids"], batch["attention_mask"])
            metric.update_queries(
                query, batch["query_positive"], batch["query_group"], batch["query_exclude"]
            )
            if self._reranking():
                if self.rerank_with_reference:
                    self._query_tokens.extend(reference.detach().cpu().unbind(0))
                self._query_texts.extend(
                    (ids[m.bool()].cpu(), m[m.bool()].cpu())
                    for ids, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
                )
        if batch["gallery_image"].numel():
            tokens = self.net.image_tokens(batch["gallery_image"])
            qformer = self.net.qformer
            read = qformer.prompt_states if self.gallery_queries == "prompts" else qformer.query_states
            gallery = qformer.project_image(read(tokens))
            if self.score_with_caption:
                if "gallery_input_ids" not in batch:
                    raise KeyError(
                        "lit.score_with_caption needs gallery captions: set data.target_captions=true"
                    )
                caption = self.net.encode_text(batch["gallery_input_ids"], batch["gallery_attention_mask"])
                caption = caption * batch["gallery_has_caption"].to(caption)[:, None]
                gallery = gallery + caption[:, None]
            metric.update_gallery(
                gallery, batch["gallery_key"], batch["gallery_positive"], batch["gallery_group"]
            )
            if self._reranking():
                self._gallery_tokens.extend(tokens.detach().cpu().unbind(0))

    @torch.no_grad()
    def itm_rescore(self, query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
        """ITM match scores ``[n, k]`` (``rerank_itm_score``: the match-class logit or its probability) of
        (candidate target image, query's modification text) pairs; indices in the order the evaluation saw
        queries and gallery images (every rank's, rank after rank, under DDP).

        Under DDP each rank scores the pairs whose candidate it encoded (its gallery rows' ViT tokens never
        leave it) and the scores are summed across ranks: every pair is scored once, by its owner. Every
        rank must call this with the same indices (:meth:`_log_recall` does)."""
        n_local = len(self._gallery_tokens)
        flat = gallery_index.reshape(-1)
        local = (flat >= self._gallery_offset) & (flat < self._gallery_offset + n_local)
        positions = local.nonzero().squeeze(1)
        queries = query_index.repeat_interleave(gallery_index.shape[1])
        pairs = [(int(queries[i]), int(flat[i]) - self._gallery_offset) for i in positions]
        scores = torch.zeros(flat.shape[0])
        device, dtype = self.device, self.net.qformer.query_tokens.dtype
        # outside the step hooks: run under the trainer's precision (bf16 autocast) ourselves
        context = (
            self._trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        )
        with context:
            for start in range(0, len(pairs), self.rerank_batch_size):
                chunk = pairs[start : start + self.rerank_batch_size]
                tokens = torch.stack([self._gallery_tokens[g] for _, g in chunk]).to(device, dtype)
                if self.rerank_with_reference:  # the reference image's tokens, then the candidate's
                    reference = torch.stack([self._query_tokens[q] for q, _ in chunk]).to(device, dtype)
                    tokens = torch.cat([reference, tokens], dim=1)
                texts = [self._query_texts[q] for q, _ in chunk]
                length = max(len(ids) for ids, _ in texts)
                ids = torch.zeros(len(chunk), length, dtype=torch.long)
                mask = torch.zeros(len(chunk), length, dtype=torch.long)
                for row, (t, m) in enumerate(texts):
                    ids[row, : len(t)], mask[row, : len(m)] = t, m
                logits = self.net.qformer.itm_logits(tokens, ids.to(device), mask.to(device))
                logits = logits.float()
                if self.rerank_itm_score == "probability":
                    logits = logits.softmax(dim=-1)
                scores[positions[start : start + len(chunk)]] = logits[:, 1].cpu()
        if world_size() > 1:
            summed = scores.to(device)
            torch.distributed.all_reduce(summed)
            scores = summed.cpu()
        return scores.view(gallery_index.shape)

    def _share_rerank_inputs(self) -> None:
        """Under DDP: every rank's query texts, in rank order (the order of the synced metric's
        queries), and where this rank's gallery rows start among every rank's."""
        self._gallery_offset = 0
        if world_size() == 1:
            return
        counts: list[Any] = [None] * world_size()
        torch.distributed.all_gather_object(counts, len(self._gallery_tokens))
        self._gallery_offset = sum(counts[: rank()])
        texts: list[Any] = [None] * world_size()
        torch.distributed.all_gather_object(texts, self._query_texts)
        self._query_texts = [pair for part in texts for pair in part]

    @torch.no_grad()
    def rerank_scores(
        self,
        queries: torch.Tensor,
        gallery: torch.Tensor,
        query_index: torch.Tensor,
        gallery_index: torch.Tensor,
    ) -> torch.Tensor:
        """Re-ranking scores ``[n, k]`` of each query's candidates: the ITM match score
        (:meth:`itm_rescore`) + ``rerank_itc_weight`` x the ITC cosine, or the ITC logit (the cosine over
        the learned temperature) with ``rerank_itc_score: logit``."""
        scores = self.itm_rescore(query_index, gallery_index)
        if self.rerank_itc_weight:
            itc = candidate_scores(queries[query_index], gallery, gallery_index).float()
            if self.rerank_itc_score == "logit":
                itc = itc / self.net.qformer.temperature().float()
            scores = scores + self.rerank_itc_weight * itc.cpu()
        return scores

    def _log_recall(self, split: str) -> None:
        super()._log_recall(split)
        metric = getattr(self, f"{split}_recall")
        if self.rerank_top_k > 0 and not self._reranking() and rank() == 0:
            warnings.warn(
                "UniFashion ITM re-ranking with lit.rerank_with_reference runs in a single process only: "
                "skipped",
                stacklevel=1,
            )
        if self._reranking():
            # every rank's queries and gallery (rank after rank), on every rank: the same top K everywhere
            with metric.sync_context(should_sync=world_size() > 1):
                gallery = dim_zero_cat(metric.gallery_emb)  # update order, as the indices rescore gets
                queries = dim_zero_cat(metric.query_emb)
                self._share_rerank_inputs()

                def rescore(query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
                    return self.rerank_scores(queries, gallery, query_index, gallery_index)

                values = metric.compute_reranked(rescore, self.rerank_top_k)
            self.log_dict({f"{split}/rerank/{k}": v for k, v in values.items()})
        self._reset_rerank_inputs()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._reset_rerank_inputs()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._reset_rerank_inputs()
