"""The demo's results table: pre-training, then every fine-tuning task from random init and from the
pre-trained checkpoint, with each task's chance level computed from the data.

Usage:
  python scripts/demo_report.py --data data/synthetic --pretrain logs/train/runs/demo_pretrain \\
      --pretrain-random logs/eval/runs/demo_pretrain_random --finetune logs/train/multiruns/demo_finetune

Exits non-zero when a check fails: pre-training zero-shot text->image R@10 must reach 3x random init
and 3x chance; each fine-tuning task's main metric must beat both random-init fine-tuning and chance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

from fashion_vl.data.composed import fashion200k_eval_items, fashioniq_eval_items
from fashion_vl.data.formats import (
    FASHIONIQ_CATEGORIES,
    Fashion200kSource,
    FashionGenSource,
    read_ocir,
    read_polyvore_metadata,
)
from fashion_vl.utils.rich_utils import print_table, results_table

# experiment -> (task, protocol, main metric key, other metric keys)
TASKS = {
    "demo_finetune_retrieval": ("cross-modal retrieval (FashionGen)", "sample100", "test/sample100/t2i_r@10",
                                ["test/sample100/rsum", "test/full/t2i_r@10", "test/full/rsum"]),
    "demo_finetune_composed_fashioniq": ("text-guided retrieval (FashionIQ)", "per category", "test/mean_r@10", ["test/mean_r@50"]),
    "demo_finetune_composed_fashion200k": ("composed retrieval (Fashion200k)", "TIRG queries", "test/r@10", ["test/r@1", "test/r@50"]),
    "demo_finetune_classification": ("sub-category recognition (FashionGen)", "all val images", "test/acc", ["test/macro_f1"]),
    "demo_finetune_outfit": ("outfit completion (Polyvore, disjoint)", "class-balanced", "test/r@10", ["test/r@30", "test/r@50"]),
}  # fmt: skip


def hit_chance(gallery: int, positives: int, k: int) -> float:
    """P(at least one of ``positives`` items in the top ``k`` of a random order of ``gallery``)."""
    if k >= gallery:
        return 1.0
    return 1.0 - math.comb(gallery - positives, k) / math.comb(gallery, k)


def chance_levels(data: Path) -> dict[str, float]:
    val = FashionGenSource(data, "val").read()
    n_images = sum(len(p.images) for p in val.products)
    # zero-shot full gallery t2i R@10: each text has its product's images as positives
    zero_shot = sum(hit_chance(n_images, len(p.images), 10) for p in val.products) / len(val.products)
    fiq = fashioniq_eval_items(data, FASHIONIQ_CATEGORIES)
    per_cat = []
    for gid in range(3):
        gallery = {i.gallery.key for i in fiq if i.gallery and i.gallery.group == gid}
        per_cat.append(hit_chance(len(gallery), 1, 10))
    f200k = fashion200k_eval_items(Fashion200kSource(data, "test").read())
    gallery = [i.gallery for i in f200k if i.gallery]
    by_title = Counter(g.positive for g in gallery)
    queries = [i.query for i in f200k if i.query]
    f200k_chance = sum(hit_chance(len(gallery) - 1, by_title[q.positive], 10) for q in queries) / len(queries)
    labels = Counter(p.subcategory_id for p in val.products for _ in p.images)
    categories = read_polyvore_metadata(data)
    entries = read_ocir(data, "disjoint", "test")
    gallery_per_cat = Counter(categories[b] for b in {e.blank for e in entries})
    query_cats = {categories[e.blank] for e in entries if not e.fake_data}
    ocir = sum(hit_chance(gallery_per_cat[c], 1, 10) for c in query_cats) / len(query_cats)
    return {
        "zero_shot": 100 * zero_shot,
        "demo_finetune_retrieval": 100 * hit_chance(101, 1, 10),
        "demo_finetune_composed_fashioniq": 100 * sum(per_cat) / 3,
        "demo_finetune_composed_fashion200k": 100 * f200k_chance,
        "demo_finetune_classification": 100 * max(labels.values()) / sum(labels.values()),
        "demo_finetune_outfit": 100 * ocir,
    }


def load(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrain", type=Path, required=True)
    parser.add_argument("--pretrain-random", type=Path, required=True)
    parser.add_argument("--finetune", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    chance = chance_levels(args.data)
    rows, failures = [], []
    pre = load(args.pretrain)["metrics"]["val/full/t2i_r@10"]
    rnd = load(args.pretrain_random)["metrics"]["test/full/t2i_r@10"]
    rows.append(dict(task="pre-training, zero-shot retrieval (FashionGen)", protocol="full gallery", metric="t2i R@10",
                     chance=chance["zero_shot"], random_init=rnd, pretrained=pre))  # fmt: skip
    if not (pre >= 3 * rnd and pre >= 3 * chance["zero_shot"]):
        failures.append("pre-training: zero-shot t2i R@10 below 3x random init or 3x chance")
    jobs = {}
    for job in sorted(p for p in args.finetune.iterdir() if (p / "metrics.json").is_file()):
        payload = load(job)
        jobs[(payload["experiment"], payload["init_from"] is not None)] = payload["metrics"]
    for experiment, (task, protocol, main_key, others) in TASKS.items():
        if (experiment, True) not in jobs or (experiment, False) not in jobs:
            failures.append(f"{experiment}: missing the random-init or the pre-trained run")
            continue
        for i, key in enumerate([main_key, *others]):
            r, p = jobs[(experiment, False)].get(key), jobs[(experiment, True)].get(key)
            rows.append(dict(task=task if i == 0 else "", protocol=protocol if i == 0 else "", metric=key.split("/", 1)[1],
                             chance=chance[experiment] if i == 0 else None, random_init=r, pretrained=p))  # fmt: skip
        r, p = jobs[(experiment, False)][main_key], jobs[(experiment, True)][main_key]
        if not (p > r and p > chance[experiment]):
            failures.append(
                f"{experiment}: pre-trained {p:.2f} does not beat random init {r:.2f} and chance {chance[experiment]:.2f}"
            )
    print_table(results_table("fashion-vl demo: tiny FashionViL on synthetic data (%; first row of each task = its main metric)", rows,
                              ["task", "protocol", "metric", "chance", "random_init", "pretrained"]))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    for f in failures:
        print(f"FAIL {f}")
    print("PASS: every check" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
