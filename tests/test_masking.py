"""Masking for MLM and MPFC, and PAC targets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_vl.data.masking import IGNORE_INDEX, BlockMasking, WholeWordMasking, soft_attribute_targets
from fashion_vl.hub import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(synth_dir: Path):
    return load_tokenizer(str(synth_dir / "tokenizer"))


def encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding="longest", return_tensors="pt", return_token_type_ids=False)
    return enc["input_ids"], enc["attention_mask"]


def test_whole_word_masking_statistics(tokenizer) -> None:
    texts = [
        "Navy wool blazer. Long sleeve wool blazer in navy. Notched lapel with zigzagged quux trims."
    ] * 400
    ids, mask = encode(tokenizer, texts)
    masking = WholeWordMasking(0.15).bind(tokenizer)
    masked, labels = masking(ids, mask, seeds=range(400))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any() and not (chosen & (mask == 0)).any()
    assert torch.equal(labels[chosen], ids[chosen])
    # words, not tokens, are the unit: a continuation piece is chosen exactly when its word head is
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    for j, tok in enumerate(tokens):
        if tok.startswith("##"):
            assert torch.equal(chosen[:, j], chosen[:, j - 1])
    heads = [
        j
        for j, t in enumerate(tokens)
        if not t.startswith("##") and ids[0, j] not in tokenizer.all_special_ids
    ]
    word_rate = chosen[:, heads].float().mean().item()
    assert 0.13 < word_rate < 0.17
    replaced = masked[chosen]
    original = ids[chosen]
    mask_share = (replaced == tokenizer.mask_token_id).float().mean().item()
    kept_share = (replaced == original).float().mean().item()
    assert 0.74 < mask_share < 0.86 and 0.05 < kept_share < 0.16
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_masking_is_a_function_of_the_seed(tokenizer) -> None:
    ids, mask = encode(tokenizer, ["red silk dress with long sleeves"] * 2)
    masking = WholeWordMasking().bind(tokenizer)
    a = masking(ids, mask, seeds=[11, 12])
    b = masking(ids, mask, seeds=[11, 99])
    assert torch.equal(a[1][0], b[1][0])  # row 0 has the same seed in both batches


def test_unbound_masking_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        WholeWordMasking()(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), [0])


def test_block_masks_cover_about_eight_cells_in_rectangles() -> None:
    masking = BlockMasking(grid=(7, 7), num_masked=8, min_block=4, max_block=8, min_aspect=0.3)
    masks = masking(range(2000)).view(-1, 7, 7)
    counts = masks.sum(dim=(1, 2))
    assert counts.max() <= 8 + 8 - 1  # never past the target by more than one block's overlap budget
    assert 7.0 < counts.float().mean() < 9.0  # about 16% of the 49 cells
    assert (counts >= 4).all()  # at least one block of min_block cells
    assert torch.equal(masking([5, 6]), masking([5, 6]))


def test_each_placed_block_is_a_rectangle_within_the_budget() -> None:
    masking = BlockMasking(grid=(7, 7), min_block=4, max_block=8, min_aspect=0.3)
    for seed in range(300):
        mask = [False] * 49
        added = masking._place_block(mask, budget=8, rng=random.Random(seed))
        cells = np.argwhere(np.array(mask).reshape(7, 7))
        if added == 0:
            assert len(cells) == 0
            continue
        (r0, c0), (r1, c1) = cells.min(0), cells.max(0)
        assert (r1 - r0 + 1) * (c1 - c0 + 1) == len(cells) == added <= 8


def test_soft_targets_sum_to_one_and_check_range() -> None:
    targets = soft_attribute_targets([(3, 5, 7), (), (1,)], num_classes=10, product_ids=[1, 2, 3])
    assert torch.allclose(targets.sum(1), torch.tensor([1.0, 0.0, 1.0]))
    assert targets[0, 3] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="product 9: attribute id 12"):
        soft_attribute_targets([(12,)], num_classes=10, product_ids=[9])


def test_soft_targets_count_a_repeated_attribute_id_once() -> None:
    """A product whose ids repeat one gets a distribution over its distinct attributes (the reference's
    renormalised row), not weights summing below 1."""
    targets = soft_attribute_targets([(3, 3, 7), (4, 4)], num_classes=10, product_ids=[1, 2])
    assert torch.allclose(targets.sum(1), torch.ones(2))
    assert targets[0, 3] == targets[0, 7] == pytest.approx(0.5)
    assert targets[1, 4] == 1.0
