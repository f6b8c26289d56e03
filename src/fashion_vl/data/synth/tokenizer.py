"""A small BERT-style WordPiece tokenizer for the synthetic data (real runs use ``bert-base-uncased``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0, as BertConfig expects


def train_wordpiece(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024, min_frequency: int = 1
) -> int:
    """Build an uncased WordPiece vocabulary from ``texts`` and save it as a ``BertTokenizerFast`` folder.

    The vocabulary is every character (word-initial and ``##`` continuation) plus the most frequent
    whole words, ties broken by spelling, up to ``vocab_size``. Words are found with the same BERT
    normaliser and pre-tokeniser that will later split the text. ``tokenizers``' merge trainer is not
    used because it breaks ties between equally frequent pairs in hash order, so its vocabulary (and
    every token id) would change from run to run, and the synthetic data must be byte-identical per
    seed. Returns the vocabulary size.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    pieces = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    room = vocab_size - len(pieces)
    if room < 0:
        raise ValueError(
            f"vocab_size={vocab_size} cannot hold the {len(pieces)} special and character tokens"
        )
    frequent = sorted(
        (w for w, n in words.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-words[w], w)
    )
    vocab = {t: i for i, t in enumerate(pieces + frequent[:room])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True)
    fast.save_pretrained(str(out_dir))
    return len(vocab)
