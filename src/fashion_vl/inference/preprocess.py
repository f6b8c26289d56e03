"""A model's own preprocessing, rebuilt from its run's config: the evaluation image transform and the
text tokenizer, through the same config nodes and classes the DataModules use."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from fashion_vl.inference._project import ImageLoadError, api, read_image

ImageLike = Image.Image | str | os.PathLike | torch.Tensor


def build_eval_transform(config: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's evaluation transform (``data.eval_transform``: ``uint8 [3,H,W]`` -> the resized,
    cropped ``uint8 [3,H,W]`` the model reads), built from the config node the DataModule receives.

    The one place the inference objects get their image preprocessing from. As in training, the
    normalisation to float is the model's own first step (its image encoder's ``ImageNormalize``).
    """
    node = (config.get("data") or {}).get("eval_transform")
    if node is None:
        raise KeyError("the model's config has no data.eval_transform: cannot preprocess images for it")
    return instantiate(node, _convert_="all")


def build_text_tokenizer(config: Mapping[str, Any]) -> Any:
    """The run's text tokenisation (``data.tokenizer``, ``max_text_length``, ``pad_to_max_length``), as
    the DataModule's ``text``; ``None`` for a model that reads no text (``tokenizer: none``). The
    tokenizer is a hub name or folder, or a ``_target_`` node (an open_clip model's own tokenizer),
    instantiated as Hydra instantiates it for the DataModule."""
    data = config.get("data") or {}
    name = data.get("tokenizer")
    if name in (None, "none"):
        return None
    project = api()
    tokenizer = (
        instantiate(name, _convert_="all") if isinstance(name, Mapping) else project.load_tokenizer(str(name))
    )
    return project.TextTokenizer(
        tokenizer,
        int(data.get("max_text_length", 75)),
        bool(data.get("pad_to_max_length", False)),
    )


def image_tensor(
    item: ImageLike, transform: Callable[[torch.Tensor], torch.Tensor], index: int
) -> torch.Tensor:
    """One input image as the model's ``[3, H, W]`` input: ``uint8`` pixels after the transform.

    A path is decoded as the datasets decode it (:func:`~fashion_vl.data.images.read_image`), a PIL image
    converted to RGB the same way; both, and a ``uint8 [3, H, W]`` tensor, go through ``transform``; a
    float ``[3, H, W]`` tensor is taken as already preprocessed.
    """
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        if not path.is_file():
            raise ImageLoadError(path, "no such file")
        return transform(read_image(path))
    if isinstance(item, Image.Image):
        array = np.asarray(item.convert("RGB"), dtype=np.uint8)
        return transform(torch.from_numpy(array.copy()).permute(2, 0, 1))
    if torch.is_tensor(item):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"image {index}: a tensor must be [3, H, W], got {tuple(item.shape)}")
        if item.dtype == torch.uint8:
            return transform(item)
        if item.is_floating_point():
            return item
        raise ValueError(
            f"image {index}: a tensor must be uint8 (raw) or float (preprocessed), not {item.dtype}"
        )
    raise TypeError(
        f"image {index}: expected a PIL image, a path or a [3, H, W] tensor, not {type(item).__name__}"
    )
