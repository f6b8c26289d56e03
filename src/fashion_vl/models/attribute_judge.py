"""A small CNN that names a garment picture's colour, category and pattern (one head each).

Trained on real synthetic product images (``experiment=demo_attribute_judge``), it judges generated
pictures: did the diffusion branch draw the colour/category/pattern the prompt asked for? See
:func:`fashion_vl.metrics.generation.attribute_accuracy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_vl.data.transforms import FASHION_MEAN, FASHION_STD
from fashion_vl.models.encoders.image import create_timm_trunk
from fashion_vl.models.encoders.pixels import ImageNormalize


class AttributeJudge(nn.Module):
    """timm trunk -> global average pool -> dropout -> one linear head per attribute.

    ``forward`` takes images normalised as the training data gives them and returns
    ``{attribute: logits [B, classes]}``; :meth:`preprocess` turns ``uint8`` or ``value_range`` images
    (generated ones) into that input: resized to ``image_size`` and normalised with ``mean``/``std``.

    Args:
        backbone: timm model name (random init unless ``pretrained``/``checkpoint_path``).
        heads: attribute -> number of classes (the data's vocabularies: ``model/attribute_judge.yaml``
            gives the synthetic taxonomy's, ``data/garment_labels.py`` ``GARMENT_VOCABS``).
        image_size: the side the judge was trained at (``None``: inputs are not resized).
        mean, std: the training data's normalisation.
        dropout: before the heads.
        timm_kwargs: to ``timm.create_model`` (``channels``, ``stem_width`` for a narrow ResNet).
    """

    def __init__(
        self,
        backbone: str = "resnet10t",
        heads: Mapping[str, int] | None = None,
        image_size: int | None = None,
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
        dropout: float = 0.0,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("model.heads: give the judge's attributes and their class counts")
        heads = dict(heads)
        self.trunk = create_timm_trunk(
            backbone, pretrained, checkpoint_path, config_key="model.backbone", **timm_kwargs
        )
        self.num_features: int = self.trunk.num_features
        self.image_size = image_size
        self.input_norm = ImageNormalize(mean, std)  # the uint8 training batches
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(self.num_features, n) for name, n in heads.items()})

    def compile_units(self) -> dict[str, nn.Module]:
        """What ``callbacks/compile`` hands to ``torch.compile``: the trunk (the heads are tiny)."""
        return {"trunk": self.trunk}

    def forward_features(self, images: Tensor) -> Tensor:
        """Pooled features ``[B, C]`` of ``uint8`` pixels or normalised float images."""
        return self.trunk.forward_features(self.input_norm(images)).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        pooled = self.dropout(self.forward_features(images))
        return {name: head(pooled) for name, head in self.heads.items()}

    def preprocess(self, images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
        """``uint8`` [0, 255] or float ``value_range`` images ``[B, 3, H, W]`` -> the judge's input."""
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        else:
            low, high = value_range
            x = ((images.float() - low) / (high - low)).clamp(0.0, 1.0)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        return (x - self.mean) / self.std


def load_attribute_judge(path: str | Path, architecture: Mapping[str, Any] | None = None) -> AttributeJudge:
    """A trained judge from an ``fvl-train experiment=demo_attribute_judge`` checkpoint, in eval mode.

    Args:
        path: the Lightning checkpoint (weights under ``state_dict`` with the ``net.`` prefix, the run's
            config under ``fvl_config``), or a plain ``AttributeJudge`` state dict.
        architecture: :class:`AttributeJudge` arguments; ``None``: the checkpoint's ``model`` config.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no attribute judge checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload)
    if "state_dict" in payload:
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    if architecture is None:
        model_cfg = dict((payload.get("fvl_config") or {}).get("model") or {})
        target = str(model_cfg.get("_target_", ""))
        if not target.endswith("AttributeJudge"):
            raise ValueError(
                f"{path} holds no attribute judge config (model: {target or 'none'}): pass architecture="
            )
        architecture = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    architecture = dict(architecture)
    if not architecture.get("heads"):  # judges trained before the heads were in their config
        architecture["heads"] = {
            k.split(".")[1]: int(v.shape[0])
            for k, v in state.items()
            if k.startswith("heads.") and k.endswith(".weight")
        }
    judge = AttributeJudge(**architecture)
    judge.load_state_dict(state, strict=True)
    return judge.eval()
