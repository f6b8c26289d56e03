"""Products whose caption is empty (no title and no description): counted by ``fvl-data check``, and kept
or skipped for training by ``data.empty_captions``. A product with an empty caption trains ITC/ITM/MLM on
``[CLS] [SEP]``, which teaches nothing about the product and pulls every image towards the same text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from fashion_vl.data.records import ProductTable

log = logging.getLogger(__name__)

EMPTY_CAPTION_POLICIES = ("keep", "skip")


def empty_caption_ids(table: ProductTable) -> list[int]:
    """Ids of the products of ``table`` whose text is empty or only whitespace."""
    return [p.id for p in table.products if not p.text.strip()]


def apply_empty_caption_policy(tables: Sequence[ProductTable], policy: str) -> list[ProductTable]:
    """``keep``: the tables as they are; ``skip``: without their empty-caption products. Either way a
    table with any is named in a warning, with its count and first ids."""
    if policy not in EMPTY_CAPTION_POLICIES:
        raise ValueError(f"data.empty_captions must be keep or skip, not {policy!r}")
    out = []
    for table in tables:
        empty = empty_caption_ids(table)
        if empty:
            action = "skipped" if policy == "skip" else "kept (data.empty_captions=skip drops them)"
            log.warning(
                "%s/%s: %d product(s) with an empty caption (e.g. id %s), %s",
                table.dataset, table.split, len(empty), ", ".join(map(str, empty[:5])), action,
            )  # fmt: skip
            if policy == "skip":
                drop = set(empty)
                table = replace(table, products=[p for p in table.products if p.id not in drop])
        out.append(table)
    return out
