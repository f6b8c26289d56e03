"""Building result grids from a finished evaluation: the test metric's embeddings and the test dataset.

Supported: cross-modal retrieval (text queries against the image gallery) and composed retrieval
(reference image + text against the target gallery), whose images are read back from the dataset's
files, and try-on editing (condition, sketch, mask, output and the person), from the pictures the
module kept while testing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.data.composed import ComposedEvalDataset
from fashion_vl.data.datasets import ProductGalleryDataset
from fashion_vl.data.images import resolve_image
from fashion_vl.metrics.composed import ComposedGalleryRecall
from fashion_vl.metrics.gallery import CrossModalGalleryRecall, unique_rows
from fashion_vl.viz.grid import Row, draw_grid, draw_labelled_grid

TRYON_COLUMNS = ("agnostic", "sketch", "mask", "output", "person", "caption")
GENERATION_COLUMNS = ("input image", "prompt", "output")


def _open(image_dir: Path, name: str) -> Image.Image:
    with Image.open(resolve_image(image_dir, name)) as img:
        return img.convert("RGB")


def cross_modal_rows(
    metric: CrossModalGalleryRecall, dataset: ProductGalleryDataset, n: int = 8, k: int = 5
) -> list[Row]:
    """Text -> image rows for the first ``n`` products of the test split."""
    table = dataset.table
    keys = dim_zero_cat(metric.image_keys)
    keep = unique_rows(keys)
    image_emb, image_ids, keys = (
        dim_zero_cat(metric.image_emb)[keep],
        dim_zero_cat(metric.image_ids)[keep],
        keys[keep],
    )
    text_ids = dim_zero_cat(metric.text_ids)
    text_emb = dim_zero_cat(metric.text_emb)
    key_to_image = {}
    for p, product in enumerate(table.products):
        for i, name in enumerate(product.images):
            key_to_image[dataset.first_key[p] + i] = name
    by_id = {prod.id: prod for prod in table.products}
    rows = []
    for q in range(min(n, text_emb.shape[0])):
        top = (text_emb[q] @ image_emb.T).topk(min(k, image_emb.shape[0])).indices
        product = by_id[int(text_ids[q])]
        rows.append(
            Row(
                query_images=[],
                query_text=product.text,
                results=[_open(table.image_dir, key_to_image[int(keys[i])]) for i in top],
                correct=[bool(image_ids[i] == text_ids[q]) for i in top],
            )
        )
    return rows


def composed_rows(
    metric: ComposedGalleryRecall, dataset: ComposedEvalDataset, n: int = 8, k: int = 5
) -> list[Row]:
    """Composed-query rows for the first ``n`` queries of the test split (ranked within the group)."""
    keys = dim_zero_cat(metric.gallery_key)
    keep = unique_rows(keys)
    g_emb, g_key = dim_zero_cat(metric.gallery_emb)[keep], keys[keep]
    g_pos, g_group = dim_zero_cat(metric.gallery_positive)[keep], dim_zero_cat(metric.gallery_group)[keep]
    q_emb, q_pos, q_group = (
        dim_zero_cat(getattr(metric, f)) for f in ("query_emb", "query_positive", "query_group")
    )
    gallery_image = {
        item.gallery.key: item.gallery.image for item in dataset.items if item.gallery is not None
    }
    queries = [item.query for item in dataset.items if item.query is not None]
    rows = []
    for q in range(min(n, q_emb.shape[0], len(queries))):
        scores = (q_emb[q] @ g_emb.T).masked_fill(g_group != q_group[q], float("-inf"))
        top = scores.topk(min(k, int((g_group == q_group[q]).sum()))).indices
        query = queries[q]
        rows.append(
            Row(
                query_images=[_open(*query.reference)],
                query_text=query.text,
                results=[_open(*gallery_image[int(g_key[i])]) for i in top],
                correct=[bool(g_pos[i] == q_pos[q]) for i in top],
            )
        )
    return rows


def to_picture(image: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Image.Image:
    """``[C, H, W]`` ``uint8`` tensor, or float tensor in ``value_range`` (1 or 3 channels) -> RGB picture."""
    if image.dtype == torch.uint8:
        image, value_range = image.float(), (0.0, 255.0)
    low, high = value_range
    unit = ((image.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    if unit.shape[0] == 1:
        unit = unit.expand(3, -1, -1)
    return Image.fromarray((unit * 255).round().byte().permute(1, 2, 0).numpy())


def tryon_rows(examples: list[dict]) -> list[list[Image.Image | str]]:
    """One row per kept try-on sample: agnostic person, sketch, mask (white = painted), output,
    the dataset's person picture and the caption."""
    return [
        [
            to_picture(e["agnostic"]),
            to_picture(1 - e["sketch"], (0.0, 1.0)),  # dark lines on white
            to_picture(e["mask"], (0.0, 1.0)),
            to_picture(e["output"]),
            to_picture(e["person"]),
            e["caption"] or "(no caption)",
        ]
        for e in examples
    ]


def save_examples(lit: torch.nn.Module, datamodule: object, path: Path, n: int = 8) -> Path | None:
    """Write the grid for a module evaluated by ``trainer.test``; ``None`` if its task has no grid."""
    metric = getattr(lit, "test_recall", None)
    examples = getattr(lit, "test_examples", None)
    if examples:
        path.parent.mkdir(parents=True, exist_ok=True)
        if "agnostic" in examples[0]:
            grid = draw_labelled_grid(TRYON_COLUMNS, tryon_rows(examples[:n]), "try-on: condition -> output")
        else:
            rows = [[to_picture(e["input"], (0.0, 1.0)), e["prompt"], to_picture(e["output"], (0.0, 1.0))]
                    for e in examples[:n]]  # fmt: skip
            grid = draw_labelled_grid(GENERATION_COLUMNS, rows, "image + text -> generated")
        grid.save(path)
        return path
    if isinstance(metric, CrossModalGalleryRecall):
        rows, title = (
            cross_modal_rows(metric, datamodule.test_set, n),
            "text -> image: top 5 (green: correct)",
        )
    elif isinstance(metric, ComposedGalleryRecall) and isinstance(
        getattr(datamodule, "eval_set", None), ComposedEvalDataset
    ):
        rows, title = (
            composed_rows(metric, datamodule.eval_set, n),
            "reference + text -> target: top 5 (green: correct)",
        )
    else:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(rows, title).save(path)
    return path
