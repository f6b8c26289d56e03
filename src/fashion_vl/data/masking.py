"""Masking for the pre-training tasks, drawn per sample from the sample's own seed.

- :class:`WholeWordMasking` (MLM): each word (a WordPiece token and its ``##`` continuations) is chosen
  with probability ``probability``; a chosen word's tokens become ``[MASK]`` (80%), a random token
  (10%) or stay (10%), decided once per word. Labels are the original ids on chosen tokens, -100
  elsewhere. As in the reference, a sample may have no chosen word; the MLM loss then ignores it.
- :class:`BlockMasking` (MPFC): BEiT-style rectangular blocks on the feature grid until about
  ``num_masked`` cells are covered: each block has an area drawn in ``[min_block, remaining]`` (at most
  ``max_block``) and a log-uniform aspect ratio in ``[min_aspect, 1/min_aspect]``; a block is placed
  only if it adds between 1 and the remaining number of new cells, with up to 10 attempts.

Both draw from Python's ``random.Random`` seeded with the sample's seed and a tag per task, in plain
Python: a batch's masks are a few hundred scalar draws, which NumPy's ``Generator`` made 4-5x slower
(about 37 us to create one per row, 1-4 us a scalar draw; the masks were a fifth of a loader
worker's time, ``scripts/bench_data.py``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class WholeWordMasking:
    """Whole-word masking for masked language modelling.

    Args:
        probability: chance that a word is chosen (0.15).
        mask_ratio, random_ratio: of the chosen words, the share replaced by ``[MASK]`` (0.8) and by a
            random token (0.1); the rest keep their tokens.
    """

    def __init__(self, probability: float = 0.15, mask_ratio: float = 0.8, random_ratio: float = 0.1) -> None:
        if not 0 < probability < 1 or mask_ratio + random_ratio > 1:
            raise ValueError("need 0 < probability < 1 and mask_ratio + random_ratio <= 1")
        self.probability = probability
        self.mask_ratio = mask_ratio
        self.random_ratio = random_ratio
        self._tokenizer_id: int | None = None

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> WholeWordMasking:
        """Read what masking needs from the tokenizer (continuation pieces, special ids)."""
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        self.is_continuation = np.zeros(size, dtype=bool)
        for token, index in vocab.items():
            self.is_continuation[index] = token.startswith("##")
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = size
        self._tokenizer_id = id(tokenizer)
        return self

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked ids and labels for a batch ``[B, L]``; row ``i`` draws from ``seeds[i]``."""
        if self._tokenizer_id is None:
            raise RuntimeError("call WholeWordMasking.bind(tokenizer) before masking")
        ids = input_ids.numpy().copy()
        labels = np.full_like(ids, IGNORE_INDEX)
        real = attention_mask.numpy().astype(bool) & ~np.isin(ids, self.special_ids)
        continuation = self.is_continuation[ids]
        for row, seed in enumerate(seeds):
            rng = random.Random(task_seed(seed, MLM_TAG))
            positions = np.flatnonzero(real[row]).tolist()
            for word in _group_words(positions, continuation[row, positions].tolist()):
                if rng.random() >= self.probability:
                    continue
                labels[row, word] = ids[row, word]
                action = rng.random()
                if action < self.mask_ratio:
                    ids[row, word] = self.mask_id
                elif action < self.mask_ratio + self.random_ratio:
                    ids[row, word] = [rng.randrange(self.vocab_size) for _ in word]
        return torch.from_numpy(ids), torch.from_numpy(labels)


MLM_TAG, MPFC_TAG = 0x4D4C4D, 0x4D5046  # "MLM", "MPF": each task's draws apart from the other's


def task_seed(seed: int, tag: int) -> int:
    """One ``random.Random`` seed per (sample seed, task): distinct for distinct pairs (the samplers'
    seeds are non-negative; tags are below 2**24)."""
    return (int(seed) << 24) ^ tag


def _group_words(positions: list[int], continuation: list[bool]) -> list[list[int]]:
    words: list[list[int]] = []
    for pos, cont in zip(positions, continuation):
        if cont and words and words[-1][-1] == pos - 1:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


class BlockMasking:
    """BEiT-style block masks on a ``grid`` (7x7 for a ResNet-50 at 224 px).

    Args:
        grid: (height, width) of the feature grid.
        num_masked: cells to cover (8 of 49 in FashionViL, about 16%).
        min_block, max_block: block area bounds in cells (4 and 8).
        min_aspect: smallest aspect ratio of a block; the largest is its inverse (0.3 and 3.33).
    """

    def __init__(
        self,
        grid: Sequence[int] = (7, 7),
        num_masked: int = 8,
        min_block: int = 4,
        max_block: int = 8,
        min_aspect: float = 0.3,
        attempts: int = 10,
    ) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_masked = num_masked
        self.min_block = min_block
        self.max_block = max_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.attempts = attempts

    def one(self, rng: random.Random) -> list[bool]:
        """One mask, row-major over the grid."""
        mask = [False] * (self.height * self.width)
        covered = 0
        while covered < self.num_masked:
            budget = min(self.num_masked - covered, self.max_block)
            added = self._place_block(mask, budget, rng)
            if added == 0:
                break
            covered += added
        return mask

    def _place_block(self, mask: list[bool], budget: int, rng: random.Random) -> int:
        for _ in range(self.attempts):
            # uniform between min_block and budget, also when budget < min_block (the last small block)
            area = self.min_block + (budget - self.min_block) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top = rng.randrange(self.height - h + 1)
            left = rng.randrange(self.width - w + 1)
            starts = range(top * self.width + left, (top + h) * self.width + left, self.width)
            new = h * w - sum(sum(mask[start : start + w]) for start in starts)
            if 0 < new <= budget:
                for start in starts:
                    mask[start : start + w] = [True] * w
                return new
        return 0

    def __call__(self, seeds: Sequence[int]) -> torch.Tensor:
        """``[B, H*W]`` bool masks, row ``i`` drawn from ``seeds[i]``."""
        rows = [self.one(random.Random(task_seed(s, MPFC_TAG))) for s in seeds]
        return torch.tensor(rows, dtype=torch.bool).view(len(rows), self.height * self.width)


def soft_attribute_targets(
    attributes: Sequence[Sequence[int]], num_classes: int, product_ids: Sequence[int]
) -> torch.Tensor:
    """``[B, num_classes]`` targets uniform over each product's *distinct* attribute ids (rows of zeros
    when none).

    A product whose ids repeat one (``[3, 3, 17]``) gets 1/2 on each of its two attributes: the reference
    writes ``1 / len(ids)`` per id, so its row sums below 1, and renormalises it in its soft-label
    cross-entropy; deduplicating first gives the same distribution.
    """
    targets = torch.zeros(len(attributes), num_classes)
    for row, (ids, pid) in enumerate(zip(attributes, product_ids)):
        distinct = sorted(set(ids))
        if not distinct:
            continue
        if distinct[-1] >= num_classes:
            raise ValueError(
                f"product {pid}: attribute id {distinct[-1]} >= data.num_attributes={num_classes}; "
                "re-mine the ids (fvl-data attributes) or raise num_attributes and the PAC head's classes"
            )
        targets[row, distinct] = 1.0 / len(distinct)
    return targets
