"""UniFashion phase 1 (``docs/reference.md`` UniFashion §2): ITC, ITM with hard negatives and ITG on
the Q-Former, plus the LLM caption loss; validated by FashionGen cross-modal retrieval and captioning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.data.transforms import CLIP_MEAN, CLIP_STD
from fashion_vl.lit.objectives import Objectives, step_generator
from fashion_vl.lit.retrieval import GalleryRetrievalModule
from fashion_vl.metrics.captioning import CaptionScores
from fashion_vl.metrics.generation import AttributeAccuracy
from fashion_vl.models.attribute_judge import load_attribute_judge
from fashion_vl.models.encoders.pixels import to_unit
from fashion_vl.models.outputs import ImageTextEncoding
from fashion_vl.models.unifashion import UniFashion
from fashion_vl.models.unifashion.model import DEFAULT_CAPTION_PROMPT

# Test-time generation by the diffusion branch (when the run trains one): image+text-guided, from the
# query outputs of a product's first image and its text, as the branch trains.
DEFAULT_GENERATION_EVAL: dict[str, Any] = {
    "max_images": 0,  # per rank and test run; 0 turns it off
    "num_steps": 50,
    "guidance_scale": 7.5,
    "guidance_rescale": 0.0,  # phi of Lin et al. (2024) against over-saturation; 0: off (SD v1.5's)
    "judge": None,  # an attribute-judge checkpoint (experiment=demo_attribute_judge): attribute accuracy
    # what each prompt asks for in the judge's classes: a callable texts -> {attribute: [N] class ids},
    # from config (the synthetic taxonomy's parser, data/garment_labels.py asked_from_texts)
    "asked": None,
    "num_examples": 8,  # pictures kept for the result grid (fvl-eval +viz=true)
}

DEFAULT_CAPTION_EVAL = {
    "max_images": 256,  # per rank and evaluation; 0 turns captioning off
    "prompt": DEFAULT_CAPTION_PROMPT,
    "max_new_tokens": 30,
    "num_beams": 1,
}


def first_images(batch: dict, limit: int, purpose: str) -> tuple[torch.Tensor, list[str]]:
    """Indices of the first image of each product in a gallery batch (at most ``limit``) and those
    products' raw texts; ``purpose`` names the evaluation in the error when the texts are missing."""
    if "text" not in batch:
        raise KeyError(f"{purpose} evaluation needs the raw texts: set data.return_text=true")
    rows = batch["image_text_index"]
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    chosen = first.nonzero().squeeze(1)[:limit]
    return chosen, [batch["text"][int(i)] for i in rows[chosen]]


class OneCycleFromRun:
    """``configure_optimizers`` as the base class's, and for the reference's ``OneCycleLR``:
    ``total_steps: null`` becomes the run's number of optimisation steps and ``max_lr: null`` each
    parameter group's own learning rate (so ``lr_multiplier`` still applies). Mix in before the base."""

    def configure_optimizers(self) -> dict:
        factory = self.scheduler_factory
        self.scheduler_factory = None
        try:
            config = super().configure_optimizers()
        finally:
            self.scheduler_factory = factory
        if factory is None:
            return config
        optimizer = config["optimizer"]
        keywords = getattr(factory, "keywords", None) or {}
        filled = {}
        if "total_steps" in keywords and keywords["total_steps"] is None:
            filled["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if "max_lr" in keywords and keywords["max_lr"] is None:
            filled["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        scheduler = factory(optimizer=optimizer, **filled)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SharedEncodingObjectives:
    """The training step both phases share: one encoding per step (:meth:`encode`), read by every
    objective the step trains (:class:`~fashion_vl.lit.objectives.Objectives`, ``self.objectives``);
    their weighted sum is the loss. Logged: ``train/loss`` and every objective's outputs
    (``train/{name}_{key}``). Mix in before the base."""

    def weighted_loss(self, batch: dict) -> torch.Tensor:
        bs = self.batch_size_of(batch)
        total, outputs = self.objectives(self.net, batch, self.global_step, self.encode(batch))
        for name, out in outputs.items():
            for key, value in out.items():
                self.log(f"train/{name}_{key}", value, batch_size=bs)
        self.log("train/loss", total, batch_size=bs, prog_bar=True)
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.weighted_loss(batch)


class UniFashionPretrainModule(SharedEncodingObjectives, OneCycleFromRun, GalleryRetrievalModule):
    """Phase 1: every objective with a positive weight runs each step on one shared encoding (the frozen
    ViT, the query pass and the text pass run once); the loss is their weighted sum.

    Logged in training: ``train/loss``, ``train/{objective}_loss`` and the objectives' metrics
    (``train/itm_acc``, ``train/itc_temperature``...). Validation and test: cross-modal recall with
    max-over-queries similarity (``{split}/{protocol}/...`` as the other retrieval tasks) and, when the
    model has an LLM, captions of the first ``caption_eval.max_images`` products' first images scored
    against the product texts (``{split}/caption/bleu_4``, ``.../cider``...).

    Frozen parts (the ViT; the LLM unless it has LoRA adapters) have ``requires_grad=False``, so
    :func:`~fashion_vl.optim.param_groups` leaves them out of the optimizer, and stay in eval mode.

    Args:
        net: the :class:`~fashion_vl.models.unifashion.UniFashion` network.
        objectives: name -> objective (``itc``, ``itm``, ``itg``, ``caption``, ``diffusion``), each
            called as ``objective(net, batch, step)`` with the step's
            :class:`~fashion_vl.models.outputs.ImageTextEncoding` as ``step.encoding``.
        task_weights: name -> weight; 0 (or absent) switches an objective off.
        mode: ``sum`` (every objective each step, the reference) or ``sample`` (see
            :class:`~fashion_vl.lit.objectives.TaskSampler`).
        seed: seeds per-step random choices (sampled negatives, instructions).
        caption_eval: captioning during evaluation: ``max_images`` (per rank), ``prompt``,
            ``max_new_tokens``, ``num_beams`` and any other ``generate`` argument.
        generation_eval: test-time generation by the network's diffusion branch, see
            ``DEFAULT_GENERATION_EVAL``: the first image of each of the first ``max_images`` products
            is redrawn from its query outputs and the product text (DDIM, guidance, a generator seeded
            by seed, batch and rank); with a ``judge`` checkpoint, ``test/generation/{colour,category,
            pattern}_acc`` is the share of pictures the judge finds to have what the text asks for
            (``asked``, the config's parser of the prompts into the judge's classes), and
            ``test/generation/acc`` their mean.
        optimizer, scheduler, lr_multiplier, fast_modules, ks, protocols: see
            :class:`~fashion_vl.lit.retrieval.GalleryRetrievalModule`.
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
        caption_eval: Mapping[str, Any] | None = None,
        generation_eval: Mapping[str, Any] | None = None,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
        ks: Sequence[int] = (1, 5, 10),
        protocols: Sequence[str] = ("full", "sample100"),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules, ks, protocols)
        # plain values only (checkpoints load with weights_only=True): generation_eval holds a callable
        self.save_hyperparameters(
            logger=False, ignore=["net", "objectives", "optimizer", "scheduler", "generation_eval"]
        )
        self.objectives = Objectives(objectives, task_weights, mode, seed)
        if "caption" in self.objectives and net.llm is None:
            raise ValueError("lit.task_weights.caption > 0 needs an LLM (model.llm)")
        self.seed = seed
        self.caption_eval = {**DEFAULT_CAPTION_EVAL, **(caption_eval or {})}
        self.val_captions = CaptionScores()
        self.test_captions = CaptionScores()
        unknown = sorted(set(generation_eval or {}) - set(DEFAULT_GENERATION_EVAL))
        if unknown:
            raise KeyError(
                f"lit.generation_eval: unknown keys {unknown} (known: {sorted(DEFAULT_GENERATION_EVAL)})"
            )
        self.generation_eval = {**DEFAULT_GENERATION_EVAL, **(generation_eval or {})}
        if self.generation_eval["judge"] is not None and self.generation_eval["asked"] is None:
            raise ValueError(
                "lit.generation_eval.judge needs lit.generation_eval.asked: what each prompt asks for in "
                "the judge's classes (e.g. fashion_vl.data.garment_labels.asked_from_texts)"
            )
        if int(self.generation_eval["max_images"]) > 0 and net.diffusion is None:
            raise ValueError("lit.generation_eval.max_images > 0 needs a diffusion branch (model.diffusion)")
        self.generated = AttributeAccuracy()
        self.generated_count = 0
        self.test_examples: list[dict[str, Any]] = []
        # A plain dict, not a submodule: the judge must not enter this module's state dict.
        self.external_models: dict[str, nn.Module] = {}

    def encode(self, batch: dict) -> ImageTextEncoding:
        """The passes every phase-1 objective reads, run once per step."""
        return self.net.encode_pair(batch["image"], batch["input_ids"], batch["attention_mask"])

    # ----------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict, recall, captions: CaptionScores) -> None:
        text = self.net.encode_text(batch["input_ids"], batch["attention_mask"])
        queries = None
        if batch["image"].numel():
            queries = self.net.qformer.query_states(self.net.image_tokens(batch["image"]))
            image = self.net.qformer.project_image(queries)
        else:  # every image of these products failed to load
            image = text.new_zeros((0, self.net.qformer.num_query_tokens, text.shape[1]))
        recall.update(
            image, batch["image_product_id"], batch["image_key"], text, batch["product_id"],
            image_groups=batch["image_subcategory_id"], text_groups=batch["subcategory_id"],
        )  # fmt: skip
        budget = int(self.caption_eval["max_images"]) - len(captions)
        if self.net.llm is None or queries is None or budget <= 0:
            return
        chosen, texts = first_images(batch, budget, "captioning")
        options = {k: v for k, v in self.caption_eval.items() if k not in ("max_images", "prompt")}
        hypotheses = self.net.generate_from_queries(queries[chosen], self.caption_eval["prompt"], **options)
        captions.update(hypotheses, texts)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall, self.val_captions)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall, self.test_captions)
        budget = int(self.generation_eval["max_images"]) - self.generated_count
        if budget > 0 and batch["image"].numel():
            self._generate(batch, batch_idx, budget)

    # ----------------------------------------------------------------------------------- generation
    def _judge(self) -> nn.Module | None:
        path = self.generation_eval["judge"]
        if path is None:
            return None
        if "judge" not in self.external_models:
            self.external_models["judge"] = load_attribute_judge(path).to(self.device)
        return self.external_models["judge"]

    def _generate(self, batch: dict, batch_idx: int, budget: int) -> None:
        chosen, prompts = first_images(batch, budget, "generation")
        images = batch["image"][chosen]
        queries = self.net.qformer.query_states(self.net.image_tokens(images))
        generator = step_generator(self.seed, batch_idx, device=self.device)
        drawn = self.net.diffusion.sample(
            queries, prompts, num_steps=int(self.generation_eval["num_steps"]),
            guidance_scale=float(self.generation_eval["guidance_scale"]), generator=generator,
            guidance_rescale=float(self.generation_eval["guidance_rescale"]),
        )  # fmt: skip  # [B, 3, R, R] in [0, 1]
        judge = self._judge()
        if judge is not None:
            asked = self.generation_eval["asked"](prompts)
            self.generated.update(judge(judge.preprocess(drawn, (0.0, 1.0))), asked)
        self.generated_count += len(prompts)
        if images.dtype == torch.uint8:
            inputs = to_unit(images)
        else:  # normalised float images (a caller's own)
            mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
            inputs = (images.float() * std + mean).clamp(0, 1)
        room = int(self.generation_eval["num_examples"]) - len(self.test_examples)
        for i in range(min(room, len(prompts))):
            self.test_examples.append(
                {"input": inputs[i].cpu(), "prompt": prompts[i], "output": drawn[i].cpu()}
            )

    def _log_captions(self, split: str, captions: CaptionScores) -> None:
        if self.net.llm is None or int(self.caption_eval["max_images"]) <= 0:
            return
        values = captions.compute()
        if values:
            self.log_dict(
                {f"{split}/caption/{k}": v for k, v in values.items()}, sync_dist=False, rank_zero_only=False
            )

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.val_captions.reset()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_captions.reset()
        self.generated.reset()
        self.generated_count = 0
        self.test_examples = []

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_captions("val", self.val_captions)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_captions("test", self.test_captions)
        if int(self.generation_eval["max_images"]) > 0 and self.generation_eval["judge"] is not None:
            values = self.generated.compute()  # reduced across ranks by the metric
            self.log_dict({f"test/generation/{k}": v for k, v in values.items()}, sync_dist=False)
