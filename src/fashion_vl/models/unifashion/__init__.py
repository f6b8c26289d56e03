"""UniFashion: a frozen ViT, BLIP-2's Q-Former (transformers' classes) and an LLM branch."""

from fashion_vl.models.unifashion.llm import LanguageModel
from fashion_vl.models.unifashion.model import UniFashion
from fashion_vl.models.unifashion.qformer import QFormer, build_qformer
from fashion_vl.models.unifashion.vision import FrozenViT

__all__ = ["FrozenViT", "LanguageModel", "QFormer", "UniFashion", "build_qformer"]
