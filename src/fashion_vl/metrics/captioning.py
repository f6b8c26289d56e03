"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, computed offline.

BLEU, ROUGE-L and CIDEr-D are pycocoevalcap's scorers (the coco-caption code the reference and the
captioning literature report), which are plain Python. Two parts of coco-caption need Java, so they
are replaced here:

- tokenisation (coco-caption's ``PTBTokenizer`` runs Stanford CoreNLP): :func:`tokenize` lower-cases,
  splits words and drops punctuation, which is what the PTB tokeniser plus coco-caption's punctuation
  filter do on ordinary captions;
- METEOR (coco-caption runs METEOR 1.5's jar): nltk's ``meteor_score`` (exact, Porter-stem and WordNet
  synonym matching, METEOR's default alpha/beta/gamma), averaged over captions. nltk's WordNet corpus is
  a separate download, not a pip package: where it is not installed the synonym stage is skipped
  (exact + stem matches only) and a warning says so. Neither variant has METEOR 1.5's paraphrase
  table, so METEOR here is close to, not equal to, published coco-caption METEOR.

All scores are fractions in [0, 1] except CIDEr (unbounded, x10 scale of coco-caption), as pycocoevalcap
reports them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import cache

from fashion_vl.dist import is_distributed

log = logging.getLogger(__name__)

METRIC_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped."""
    return " ".join(_WORD.findall(text.lower()))


class _NoSynonyms:
    """Stands in for nltk's WordNet reader when its corpus is not installed: no synonym matches."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


@cache
def _wordnet():
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        log.warning(
            "METEOR without synonyms: nltk's WordNet corpus is not installed "
            "(python -m nltk.downloader wordnet adds it); exact and stem matches only"
        )
        return _NoSynonyms()


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean sentence-level METEOR of tokenised captions (see the module docstring)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet = _wordnet()
    scores = [
        meteor_score([r.split() for r in refs], hyp.split(), wordnet=wordnet)
        for hyp, refs in zip(hypotheses, references)
    ]
    return sum(scores) / len(scores)


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus scores of generated captions against one or more references each.

    Args:
        hypotheses: one generated caption per image.
        references: the reference captions of each image (at least one).

    Returns:
        ``bleu_1`` .. ``bleu_4``, ``meteor``, ``rouge_l``, ``cider``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} captions but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no captions to score")
    if any(not refs for refs in references):
        raise ValueError("every caption needs at least one reference")
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    res = {i: [h] for i, h in enumerate(hyps)}
    gts = {i: rs for i, rs in enumerate(refs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out.update(meteor=meteor(hyps, refs), rouge_l=float(rouge), cider=float(cider))
    return out


class CaptionScores:
    """Accumulates (caption, references) pairs over an evaluation epoch; :meth:`compute` scores them
    all, gathered from every rank (strings cannot go through torchmetrics' tensor states)."""

    def __init__(self) -> None:
        self.hypotheses: list[str] = []
        self.references: list[list[str]] = []

    def reset(self) -> None:
        self.hypotheses.clear()
        self.references.clear()

    def __len__(self) -> int:
        return len(self.hypotheses)

    def update(self, hypotheses: Sequence[str], references: Sequence[Sequence[str] | str]) -> None:
        self.hypotheses.extend(hypotheses)
        self.references.extend([r] if isinstance(r, str) else list(r) for r in references)

    def compute(self) -> dict[str, float]:
        """Scores over every rank's pairs (an empty dict when there are none); a collective call."""
        hyps, refs = self.hypotheses, self.references
        if is_distributed():
            import torch.distributed as dist

            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (hyps, refs))
            hyps = [h for part in parts for h in part[0]]
            refs = [r for part in parts for r in part[1]]
        return caption_scores(hyps, refs) if hyps else {}
