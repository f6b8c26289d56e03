"""The inference object every loaded model is: batching, device and dtype, inputs and outputs.

Subclasses (one per model family) say which capabilities the checkpoint has and implement the
per-batch calls; everything else (reading and preprocessing inputs, batches, ``torch.inference_mode``,
autocast, progress, L2 normalisation, numpy) lives here once.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelHubMixin
from torch import nn

from fashion_vl.inference._project import stack_images
from fashion_vl.inference.preprocess import (
    ImageLike,
    build_eval_transform,
    build_text_tokenizer,
    image_tensor,
)

CAPABILITIES = frozenset({"image", "text", "composed", "outfit", "classify", "caption", "generate", "try_on"})

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnsupportedCapability(ValueError):
    """The loaded model cannot do what was asked (e.g. ``encode_composed`` on a retrieval model)."""

    def __init__(self, model: str, capability: str, capabilities: Iterable[str]) -> None:
        can = ", ".join(sorted(capabilities)) or "nothing"
        super().__init__(f"{model}: this model has no '{capability}' capability (it has: {can})")
        self.model = model
        self.capability = capability


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``: the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_autocast(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward passes: ``None`` picks bfloat16 on CUDA and full float32 on
    the CPU (the weights stay as built either way); ``float32`` turns autocast off."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or None, not {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or None, not {dtype}")
    return None if dtype == torch.float32 else dtype


class Embedder(
    ModelHubMixin,
    library_name="fashion-vl",
    tags=["fashion", "vision-language", "fashion-vl"],
):
    """A loaded model with its own preprocessing (see ``docs/inference.md``).

    Attributes:
        name: the source it was loaded from (checkpoint path, folder or hub id).
        embed_dim: size ``D`` of the embeddings.
        vectors_per_image: 1, or ``Q`` for models that describe an image by several vectors
            (UniFashion's queries: score an item by the max over them).
        capabilities: what this checkpoint can do, a subset of :data:`CAPABILITIES`.
        device: where the model runs; ``autocast_dtype``: the forward passes' autocast dtype (or None).
        config: the run's config the model was built from (``model``, ``lit``, ``data``, ...).
        parts: state-dict prefix -> module (``net.``: the network; ``head.``, ``objectives.diffusion.
            branch.``: task parts that live in the LightningModule), as in the Lightning checkpoint.
        metadata: where it came from (source kind, experiment, the run's metrics).
    """

    family: ClassVar[str] = ""
    # whether the family's features come out L2-normalised already (then they are returned as computed,
    # bit for bit what the evaluation computes; normalising a unit vector again can move its last bit)
    unit_features: ClassVar[bool] = False
    embed_dim: int
    vectors_per_image: int
    capabilities: frozenset[str]

    def __init__(
        self,
        parts: Mapping[str, nn.Module],
        config: Mapping[str, Any],
        *,
        name: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.parts = dict(parts)
        self.config = dict(config)
        self.name = name
        self.metadata = dict(metadata or {})
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_autocast(dtype, self.device)
        for module in self.parts.values():
            module.to(self.device).eval()

    @property
    def net(self) -> nn.Module:
        return self.parts["net."]

    def __repr__(self) -> str:
        caps = ", ".join(sorted(self.capabilities))
        return (
            f"{type(self).__name__}(name={self.name!r}, embed_dim={self.embed_dim}, "
            f"vectors_per_image={self.vectors_per_image}, capabilities=[{caps}], device={self.device})"
        )

    # ------------------------------------------------------------------------------ preprocessing
    @cached_property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The run's evaluation image transform (``uint8 [3,H,W]`` -> model input)."""
        return build_eval_transform(self.config)

    @cached_property
    def text(self):
        """The run's tokenisation (a :class:`~fashion_vl.data.collate.TextTokenizer`), or None."""
        return build_text_tokenizer(self.config)

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise UnsupportedCapability(self.name, capability, self.capabilities)

    def pixels(self, images: Sequence[ImageLike], offset: int = 0) -> torch.Tensor:
        """Model inputs ``[B, 3, H, W]`` on the device for a batch of images (``offset``: the index of
        the first one in the caller's list, for error messages): ``uint8`` pixels, which the model's
        image encoder normalises on the device as in training, or preprocessed float tensors."""
        batch = [image_tensor(image, self.transform, offset + i) for i, image in enumerate(images)]
        if len({t.dtype for t in batch}) > 1:  # stacking would promote the pixels to "normalised" floats
            raise ValueError(
                f"images {offset}..{offset + len(batch) - 1}: raw images (paths, PIL, uint8 tensors) and "
                "preprocessed float tensors cannot be mixed in one call"
            )
        return stack_images(batch).to(self.device, non_blocking=True)  # the training batches' layout

    def tokens(self, texts: Sequence[str], offset: int = 0) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` on the device for a batch of texts."""
        if self.text is None:
            raise UnsupportedCapability(self.name, "text", self.capabilities)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {offset + i}: expected a string, not {type(text).__name__}")
        return {k: v.to(self.device) for k, v in self.text(list(texts)).items()}

    # ------------------------------------------------------------------------------ running
    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """``torch.inference_mode`` and, on the chosen dtype, autocast."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield

    def batched(
        self,
        count: int,
        batch_size: int,
        progress: bool | None,
        what: str,
        step: Callable[[slice], Any],
    ) -> list[Any]:
        """``step(rows)`` over consecutive slices of ``count`` rows, under :meth:`compute`, with a
        progress bar when ``progress`` (``None``: when there is more than one batch and stderr is a
        terminal)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        starts = range(0, count, batch_size)
        show = progress if progress is not None else (count > batch_size and sys.stderr.isatty())
        outputs = []
        with self.compute(), _progress(show, len(starts), f"{self.family or 'model'}: {what}") as advance:
            for start in starts:
                outputs.append(step(slice(start, min(start + batch_size, count))))
                advance()
        return outputs

    def _embed(
        self, count: int, batch_size: int, progress: bool | None, what: str, step, empty_shape
    ) -> torch.Tensor:
        def run(rows: slice) -> torch.Tensor:
            features = step(rows).float()
            return (features if self.unit_features else F.normalize(features, dim=-1)).cpu()

        outputs = self.batched(count, batch_size, progress, what, run)
        return torch.cat(outputs) if outputs else torch.zeros(empty_shape)

    @staticmethod
    def _output(x: torch.Tensor, to_numpy: bool) -> torch.Tensor | np.ndarray:
        return x.numpy() if to_numpy else x

    # ------------------------------------------------------------------------------ the contract
    def encode_images(
        self,
        images: Sequence[ImageLike],
        *,
        batch_size: int = 64,
        progress: bool | None = None,
        to_numpy: bool = False,
    ) -> torch.Tensor | np.ndarray:
        """Image embeddings ``[N, D]`` (``vectors_per_image == 1``) or ``[N, Q, D]``: float32,
        L2-normalised on the last dimension, on the CPU. For models with a composed query these are the
        target side that :meth:`encode_composed` queries."""
        self.require("image")
        images = _sequence(images, "images")
        shape = (
            (0, self.embed_dim)
            if self.vectors_per_image == 1
            else (0, self.vectors_per_image, self.embed_dim)
        )
        out = self._embed(
            len(images), batch_size, progress, "images",
            lambda rows: self.image_features(self.pixels(images[rows], rows.start)), shape,
        )  # fmt: skip
        return self._output(out, to_numpy)

    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 256,
        progress: bool | None = None,
        to_numpy: bool = False,
    ) -> torch.Tensor | np.ndarray:
        """Text embeddings ``[N, D]``: float32, L2-normalised, on the CPU."""
        self.require("text")
        texts = _sequence(texts, "texts")
        out = self._embed(
            len(texts), batch_size, progress, "texts",
            lambda rows: self.text_features(**self.tokens(texts[rows], rows.start)), (0, self.embed_dim),
        )  # fmt: skip
        return self._output(out, to_numpy)

    def encode_composed(
        self,
        reference_images: Sequence[ImageLike],
        modification_texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: bool | None = None,
        to_numpy: bool = False,
    ) -> torch.Tensor | np.ndarray:
        """Composed queries ``[N, D]`` (a reference image changed as a text says), comparable with
        :meth:`encode_images`' vectors; float32, L2-normalised, on the CPU."""
        self.require("composed")
        images = _sequence(reference_images, "reference_images")
        texts = _sequence(modification_texts, "modification_texts")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} reference images but {len(texts)} modification texts")
        out = self._embed(
            len(images), batch_size, progress, "composed queries",
            lambda rows: self.composed_features(
                self.pixels(images[rows], rows.start), **self.tokens(texts[rows], rows.start)
            ),
            (0, self.embed_dim),
        )  # fmt: skip
        return self._output(out, to_numpy)

    def image_query(self, images: Sequence[ImageLike], **kwargs: Any) -> torch.Tensor | np.ndarray:
        """One query vector per image ``[N, D]`` for image -> image search: :meth:`encode_images` when
        ``vectors_per_image == 1``, else the normalised mean of the image's vectors."""
        to_numpy = kwargs.pop("to_numpy", False)
        vectors = self.encode_images(images, **kwargs)
        if self.vectors_per_image != 1:
            vectors = F.normalize(vectors.mean(dim=1), dim=-1)
        return self._output(vectors, to_numpy)

    # ------------------------------------------------------------------------------ per family
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise UnsupportedCapability(self.name, "image", self.capabilities)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise UnsupportedCapability(self.name, "text", self.capabilities)

    def composed_features(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        raise UnsupportedCapability(self.name, "composed", self.capabilities)

    # ------------------------------------------------------------------------------ hub
    def _save_pretrained(self, save_directory: Path) -> None:
        from fashion_vl.inference.export import write_pretrained

        write_pretrained(self, Path(save_directory))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        **_: Any,
    ) -> Embedder:
        """A model from a ``save_pretrained`` folder or a hub id ``org/name`` (through the local cache
        first; offline, a model that is not cached fails at once). Same as :func:`fashion_vl.load`."""
        from fashion_vl.inference.loading import load

        model = load(
            pretrained_model_name_or_path, device=device, dtype=dtype,
            revision=revision, cache_dir=cache_dir, token=token,
        )  # fmt: skip
        if not isinstance(model, cls):
            raise TypeError(
                f"{pretrained_model_name_or_path} is a {type(model).__name__}, not a {cls.__name__}"
            )
        return model


def _sequence(items: Any, what: str) -> Sequence[Any]:
    if isinstance(items, (str, bytes, Path)):
        raise TypeError(f"{what}: pass a list, not a single {type(items).__name__}")
    if torch.is_tensor(items):
        if items.ndim != 4:
            raise TypeError(f"{what}: a tensor of images must be [N, 3, H, W], got {tuple(items.shape)}")
        return list(items.unbind(0))
    return items if isinstance(items, Sequence) else list(items)


@contextlib.contextmanager
def _progress(show: bool, total: int, description: str) -> Iterator[Callable[[], None]]:
    if not show:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
