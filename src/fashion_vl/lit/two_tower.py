"""Every protocol for a two-tower reading of any of our networks: a CLIP-family encoder
(:class:`~fashion_vl.models.openclip.ClipEncoder`), FashionViL's unimodal path, UniFashion's Q-Former
(multi-vector images). Each module needs only ``net.encode_image(images, normalize=True)`` and
``net.encode_text(input_ids, attention_mask, normalize=True)``, and feeds the metric objects FashionViL's
tasks feed, so the figures share their keys and protocols (``docs/compare.md``).

- :class:`TwoTowerModule`: image<->text gallery retrieval (FashionGen ``full``/``sample100``, Fashion200k
  text-to-image), Marqo's query types, and fine-tuning with our objectives (ITC, PAC);
- :class:`ZeroShotClassificationModule`: (sub-)category recognition by prompt;
- :class:`ComposedBaselineModule`: composed retrieval (FashionIQ, Fashion200k) by the zero-shot baselines;
- :class:`OutfitSimilarityModule`: Polyvore outfit completion by embedding similarity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fashion_vl.lit.base import FashionLitModule, SplitRecallHooks
from fashion_vl.lit.objectives import Objectives
from fashion_vl.lit.retrieval import GalleryRetrievalModule
from fashion_vl.metrics.composed import ComposedGalleryRecall
from fashion_vl.metrics.marqo import QUERY_TYPES, RelevanceRetrieval
from fashion_vl.metrics.retrieval import similarity

COMPOSED_QUERIES = ("image", "text", "sum")


def unit(x: torch.Tensor) -> torch.Tensor:
    """One L2-normalised vector per row: a multi-vector embedding ``[B, Q, D]`` (UniFashion's queries)
    becomes the normalised mean of its normalised vectors (the inference object's ``image_query``)."""
    if x.dim() == 3:
        x = F.normalize(x, dim=-1).mean(dim=1)
    return F.normalize(x, dim=-1)


def prompts(names: Sequence[str], template: str, lowercase: bool) -> list[str]:
    """``template.format(label=name)`` for every class name (FashionGen's names are upper case)."""
    return [template.format(label=n.lower() if lowercase else n) for n in names]


def _text_embeddings(module: FashionLitModule, texts: Sequence[str]) -> torch.Tensor:
    """Normalised text embeddings ``[N, D]`` of ``texts``, tokenised by the DataModule's tokenizer (the
    one the model reads), in batches of 256."""
    datamodule = module.trainer.datamodule if module._trainer is not None else None
    text = getattr(datamodule, "text", None)
    if text is None:
        raise RuntimeError("prompt embeddings need the DataModule's tokenizer (data.tokenizer)")
    out = []
    for start in range(0, len(texts), 256):
        tokens = text(list(texts[start : start + 256]))
        ids, mask = tokens["input_ids"].to(module.device), tokens["attention_mask"].to(module.device)
        out.append(unit(module.net.encode_text(ids, mask, normalize=True)))
    return torch.cat(out)


class TwoTowerModule(GalleryRetrievalModule):
    """Image<->text retrieval for a two-tower reading of ``net``, trainable with our objectives.

    Evaluation (on a product gallery: FashionGen, Fashion200k): ``{split}/{protocol}/...`` as
    :class:`~fashion_vl.lit.retrieval.CrossModalRetrievalModule` logs them, and for each of
    ``query_types`` Marqo's ``{split}/marqo/{type}/recall@K``, ``precision@K``, ``mrr``
    (:mod:`fashion_vl.metrics.marqo`): ``text`` (a product's text against every image), ``category`` and
    ``subcategory`` (the label's name through ``query_template`` against product documents,
    ``doc_weights[0] x image + doc_weights[1] x text``; they need ``label_names``).

    Training (fine-tuning): the objectives with a positive weight in ``task_weights``, under the one
    protocol (:class:`~fashion_vl.lit.objectives.Objectives`: ``objective(net, batch, step)``, every one
    each step with its loss weighted, ``mode: sum``). ITC (``losses.ItcLoss``) contrasts ``normalize``d
    embeddings, whose dot products are the model's logits; PAC (``losses.PacLoss``) classifies
    attributes from the unimodal embeddings with the network's head ``net.heads.pac`` (the network owns
    it: ``model.heads.pac``, ``conf/model/heads/pac.yaml``). MVC, ITM, MLM and MPFC read a fusion
    encoder a two-tower model does not have.
    Logged: ``train/loss``, ``train/{objective}_{key}``, ``train/logit_scale``.

    Args:
        net: a network with ``encode_image``/``encode_text`` (``normalize=``).
        objectives: name -> weight-free objective; none for evaluation only.
        task_weights: name -> loss weight; 0 or absent switches an objective off (none: evaluation only).
        mode: ``sum`` (every objective each step) or ``sample`` (:class:`~fashion_vl.lit.objectives.TaskSampler`).
        protocols, ks: of the gallery evaluation (see :class:`GalleryRetrievalModule`).
        query_types: Marqo's query types to evaluate, a subset of ``text``, ``category``, ``subcategory``.
        label_names: ``{"category": [...], "subcategory": [...]}`` names by id (FashionGen's
            ``categories.json``), for the label queries.
        query_template: how a label name becomes a query text (Marqo: the bare name).
        doc_weights: (image, text) weights of Marqo's product document.
        marqo_ks: the K of Marqo's recall and precision.
        seed: seeds the objectives' per-step random choices.
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`; weight decay
            spares every parameter below 2-d (biases, norms, the logit scale), as open_clip's training.
    """

    no_decay_below_2d = True

    def __init__(
        self,
        net: nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        objectives: Mapping[str, nn.Module] | None = None,
        task_weights: Mapping[str, float] | None = None,
        mode: str = "sum",
        protocols: Sequence[str] = ("full", "sample100"),
        ks: Sequence[int] = (1, 5, 10),
        query_types: Sequence[str] = (),
        label_names: Mapping[str, Sequence[str]] | None = None,
        query_template: str = "{label}",
        lowercase_labels: bool = True,
        doc_weights: Sequence[float] = (0.9, 0.1),
        marqo_ks: Sequence[int] = (1, 10),
        seed: int = 0,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules, ks, protocols)
        self.save_hyperparameters(logger=False, ignore=["net", "objectives", "optimizer", "scheduler"])
        self.objectives: Objectives | None = None
        if any(float(w) > 0 for w in (task_weights or {}).values()):
            self.objectives = Objectives(objectives or {}, task_weights, mode, seed)
            self.objectives.check_heads(net)
        self.seed = seed
        bad = sorted(set(query_types) - set(QUERY_TYPES))
        if bad:
            raise ValueError(f"lit.query_types: unknown {bad}; choose from {QUERY_TYPES}")
        self.query_types = tuple(query_types)
        self.label_names = {k: list(v) for k, v in (label_names or {}).items()}
        for label in self.query_types:
            if label != "text" and not self.label_names.get(label):
                raise ValueError(f"lit.query_types has {label!r} but lit.label_names.{label} is empty")
        self.query_template = query_template
        self.lowercase_labels = lowercase_labels
        if len(doc_weights) != 2:
            raise ValueError(f"lit.doc_weights must be (image, text) weights, not {list(doc_weights)}")
        self.doc_weights = tuple(float(w) for w in doc_weights)
        self.marqo = nn.ModuleDict(
            {
                split: nn.ModuleDict({t: RelevanceRetrieval(marqo_ks) for t in self.query_types})
                for split in ("val", "test")
            }
        )

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.objectives is None:
            raise RuntimeError("lit.task_weights: no objective has a positive weight; nothing to train")
        bs = self.batch_size_of(batch)
        total, outputs = self.objectives(self.net, batch, self.global_step)
        for name, out in outputs.items():
            for key, value in out.items():
                self.log(f"train/{name}_{key}", value, batch_size=bs)
        self.log("train/loss", total, batch_size=bs, prog_bar=True)
        scale = getattr(self.net, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            self.log("train/logit_scale", scale.detach(), batch_size=bs)
        return total

    # -- evaluation --------------------------------------------------------------------------------
    def _embed_gallery(self, batch: dict, metric: Any) -> None:
        text = self.net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        if batch["image"].numel():
            image = self.net.encode_image(batch["image"], normalize=True)
        else:  # every image of these products failed to load
            image = text.new_zeros((0, *text.shape[1:]))
        metric.update(
            image, batch["image_product_id"], batch["image_key"], text, batch["product_id"],
            image_groups=batch["image_subcategory_id"], text_groups=batch["subcategory_id"],
        )  # fmt: skip
        split = "test" if metric is self.test_recall else "val"
        if not self.query_types or not batch["image"].numel():
            return
        image_unit, text_unit = unit(image), unit(text)
        rows = batch["image_text_index"]
        for query_type, marqo in self.marqo[split].items():
            if query_type == "text":
                marqo.update_queries(text_unit, batch["product_id"], batch["product_id"])
                marqo.update_gallery(image_unit, batch["image_product_id"], batch["image_key"])
                continue
            labels = batch[f"{query_type}_id"][rows]
            documents = unit(self.doc_weights[0] * image_unit + self.doc_weights[1] * text_unit[rows])
            known = labels >= 0
            marqo.update_gallery(documents[known], labels[known], batch["image_key"][known])

    def _label_queries(self, split: str) -> None:
        """Each label's name as a query (once per evaluation; labels are their own keys)."""
        for query_type, marqo in self.marqo[split].items():
            if query_type == "text":
                continue
            names = self.label_names[query_type]
            emb = _text_embeddings(self, prompts(names, self.query_template, self.lowercase_labels))
            ids = torch.arange(len(names), device=emb.device)
            marqo.update_queries(emb, ids, ids)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        for metric in self.marqo["val"].values():
            metric.reset()
        self._label_queries("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        for metric in self.marqo["test"].values():
            metric.reset()
        self._label_queries("test")

    def _log_recall(self, split: str) -> None:
        super()._log_recall(split)
        for query_type, metric in self.marqo[split].items():
            self.log_dict({f"{split}/marqo/{query_type}/{k}": v for k, v in metric.compute().items()})


class ZeroShotClassificationModule(FashionLitModule):
    """(Sub-)category recognition by prompt: every val image against one prompt per class
    (``prompt_template`` with the class name), the best-scoring class predicted. Logged as the
    fine-tuned task: ``{split}/acc`` and ``{split}/macro_f1`` (percent; FashionGen data with
    ``data.label`` set, class names from ``categories.json``).

    Args:
        net: a network with ``encode_image``/``encode_text``.
        class_names: names by class id (:func:`~fashion_vl.data.formats.products.fashiongen_label_names`).
        prompt_template: e.g. ``"a photo of {label}"``; ``lowercase_labels`` lower-cases the names first.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        prompt_template: str = "a photo of {label}",
        lowercase_labels: bool = True,
        optimizer: Any = None,
        scheduler: Any = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        if not class_names:
            raise ValueError("lit.class_names is empty")
        self.class_names = list(class_names)
        self.prompt_template = prompt_template
        self.lowercase_labels = lowercase_labels
        num_classes = len(self.class_names)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._classes: torch.Tensor | None = None

    def _prepare(self) -> None:
        self._classes = _text_embeddings(
            self, prompts(self.class_names, self.prompt_template, self.lowercase_labels)
        )

    def _evaluate(self, batch: dict, metrics: MetricCollection) -> None:
        if not batch["image"].numel():
            return
        image = self.net.encode_image(batch["image"], normalize=True)
        image = image if image.dim() == 3 else unit(image)  # multi-vector: each class scores its best vector
        metrics.update(similarity(image.float(), self._classes.float()), batch["image_labels"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_validation_epoch_start(self) -> None:
        self._prepare()

    def on_test_epoch_start(self) -> None:
        self._prepare()

    def _log(self, metrics: MetricCollection) -> None:
        values = {k: 100.0 * float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log(self.test_metrics)


class ComposedBaselineModule(SplitRecallHooks, FashionLitModule):
    """Composed retrieval (reference image + modification text -> target image) by the two-tower
    zero-shot baselines, on FashionViL's queries, galleries and groups (``ComposedGalleryRecall``):

    - ``image``: the reference image's embedding alone;
    - ``text``: the modification text's embedding alone;
    - ``sum``: the sum of the two L2-normalised embeddings.

    Each mode in ``queries`` is logged under its name: ``{split}/{mode}/mean_r@10`` (FashionIQ, with
    ``group_names``), ``{split}/{mode}/r@10`` (Fashion200k). The gallery is the targets' image embeddings
    (multi-vector ones keep their vectors: an item scores its best).
    """

    def __init__(
        self,
        net: nn.Module,
        queries: Sequence[str] = ("sum",),
        ks: Sequence[int] = (10, 50),
        group_names: Mapping[int, str] | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        bad = sorted(set(queries) - set(COMPOSED_QUERIES)) or ([] if queries else ["(none)"])
        if bad:
            raise ValueError(f"lit.queries: {bad} not among {COMPOSED_QUERIES}")
        self.queries = tuple(queries)
        self.val_recall = nn.ModuleDict({q: ComposedGalleryRecall(ks, group_names) for q in self.queries})
        self.test_recall = nn.ModuleDict({q: ComposedGalleryRecall(ks, group_names) for q in self.queries})

    def _evaluate(self, batch: dict, metrics: nn.ModuleDict) -> None:
        if batch["query_image"].numel():
            image = unit(self.net.encode_image(batch["query_image"], normalize=True))
            text = unit(self.net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True))
            query = {"image": image, "text": text, "sum": F.normalize(image + text, dim=-1)}
            for mode, metric in metrics.items():
                metric.update_queries(
                    query[mode], batch["query_positive"], batch["query_group"], batch["query_exclude"]
                )
        if batch["gallery_image"].numel():
            gallery = self.net.encode_image(batch["gallery_image"], normalize=True)
            for metric in metrics.values():
                metric.update_gallery(
                    gallery, batch["gallery_key"], batch["gallery_positive"], batch["gallery_group"]
                )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall)

    def _log_recall(self, split: str) -> None:
        for mode, metric in getattr(self, f"{split}_recall").items():
            self.log_dict({f"{split}/{mode}/{k}": v for k, v in metric.compute().items()})

    def on_validation_epoch_start(self) -> None:
        for metric in self.val_recall.values():
            metric.reset()

    def on_test_epoch_start(self) -> None:
        for metric in self.test_recall.values():
            metric.reset()

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["query_image"].shape[0])


class OutfitSimilarityModule(SplitRecallHooks, FashionLitModule):
    """Polyvore outfit completion (OCIR) by embedding similarity, on CSA-Net's protocol: each test
    outfit's query is the normalised mean of its question items' normalised image embeddings, the gallery
    every blank's image embedding restricted to the blank's category; class-balanced ``{split}/r@K``."""

    def __init__(
        self, net: nn.Module, ks: Sequence[int] = (10, 30, 50), optimizer: Any = None, scheduler: Any = None
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.val_recall = ComposedGalleryRecall(ks, class_balanced=True)
        self.test_recall = ComposedGalleryRecall(ks, class_balanced=True)

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["blank_image"].shape[0])

    def _evaluate(self, batch: dict, metric: ComposedGalleryRecall) -> None:
        if not batch["blank_image"].numel():
            return
        entries = batch["blank_id"].shape[0]
        blank = self.net.encode_image(batch["blank_image"], normalize=True)
        metric.update_gallery(blank, batch["blank_id"], batch["blank_id"], batch["blank_category"])
        if not batch["question_image"].numel():
            return
        rows = batch["question_entry"]
        items = unit(self.net.encode_image(batch["question_image"], normalize=True))
        summed = items.new_zeros(entries, items.shape[1]).index_add_(0, rows, items)
        counts = torch.bincount(rows, minlength=entries)
        real = (~batch["fake_data"]) & (counts > 0)
        query = F.normalize(summed, dim=-1)
        metric.update_queries(query[real], batch["blank_id"][real], batch["blank_category"][real])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall)
