"""Everything the inference package takes from the rest of fashion-vl, imported in this one place.

Keeping these imports here means that a move of the package layout (e.g. ``models/hub.py`` -> ``hub.py``)
changes the imports here and nowhere else in ``fashion_vl.inference``.

Only light modules are imported eagerly; the models (transformers, timm, diffusers) and the
LightningModules (Lightning, torchmetrics) are imported by :func:`api` when a model is loaded, so that
``import fashion_vl.inference`` stays quick.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from fashion_vl.data.images import ImageLoadError, read_image, stack_images

# the config of the run, stored in every Lightning checkpoint by lit.callbacks.ConfigInCheckpoint
STORED_CONFIG_KEY = "fvl_config"
# fvl-convert writes ``fvl_source`` (its format: mmf | lavis | taming-vq) in place of ``fvl_config``
CONVERTED_SOURCE_KEY = "fvl_source"
# an experiment of each converted MMF task (fvl-convert's --task names)
MMF_TASK_EXPERIMENTS = {
    "pretrain": "pretrain_fashionall",
    "contrastive": "finetune_retrieval_fashiongen",
    "composition": "finetune_composed_fashioniq",
    "classification": "finetune_classification_fashiongen",
}


@functools.cache
def api() -> SimpleNamespace:
    """The model classes, builders, LightningModule classes and task defaults the loader reads."""
    from fashion_vl.data.collate import TextTokenizer
    from fashion_vl.hub import load_pretrained, load_tokenizer, looks_like_path
    from fashion_vl.lit.classification import ClassificationModule
    from fashion_vl.lit.composed import ComposedRetrievalModule
    from fashion_vl.lit.outfits import OutfitRetrievalModule
    from fashion_vl.lit.unifashion_phase1 import DEFAULT_CAPTION_EVAL, DEFAULT_GENERATION_EVAL
    from fashion_vl.lit.unifashion_phase2 import UniFashionComposedModule
    from fashion_vl.lit.unifashion_tryon import DEFAULT_SAMPLING
    from fashion_vl.models.checkpoint import CheckpointMismatchError, migrate_state_dict
    from fashion_vl.models.csanet import CSANet
    from fashion_vl.models.fashionvil import FashionViL
    from fashion_vl.models.openclip import ClipEncoder
    from fashion_vl.models.unifashion import FrozenViT, LanguageModel, UniFashion
    from fashion_vl.models.unifashion.diffusion import DiffusionBranch, build_diffusion_branch
    from fashion_vl.models.unifashion.tryon import TryOnEditor

    return SimpleNamespace(
        TextTokenizer=TextTokenizer,
        load_tokenizer=load_tokenizer,
        load_pretrained=load_pretrained,
        looks_like_path=looks_like_path,
        CheckpointMismatchError=CheckpointMismatchError,
        migrate_state_dict=migrate_state_dict,
        # networks and builders
        FashionViL=FashionViL,
        CSANet=CSANet,
        ClipEncoder=ClipEncoder,
        UniFashion=UniFashion,
        FrozenViT=FrozenViT,
        LanguageModel=LanguageModel,
        DiffusionBranch=DiffusionBranch,
        build_diffusion_branch=build_diffusion_branch,
        TryOnEditor=TryOnEditor,
        # tasks: their classes, the parts they own, their evaluation defaults
        ClassificationModule=ClassificationModule,
        ComposedRetrievalModule=ComposedRetrievalModule,
        OutfitRetrievalModule=OutfitRetrievalModule,
        UniFashionComposedModule=UniFashionComposedModule,
        DEFAULT_CAPTION_EVAL=DEFAULT_CAPTION_EVAL,
        DEFAULT_GENERATION_EVAL=DEFAULT_GENERATION_EVAL,
        DEFAULT_TRYON_SAMPLING=DEFAULT_SAMPLING,
    )


__all__ = [
    "CONVERTED_SOURCE_KEY",
    "MMF_TASK_EXPERIMENTS",
    "STORED_CONFIG_KEY",
    "ImageLoadError",
    "api",
    "read_image",
    "stack_images",
]
