"""Quality of generated and edited images: FID/KID, CLIP-score, masked PSNR/SSIM, attribute accuracy.

Image ranges. Every function here takes images either as ``uint8`` in [0, 255] or as floats in
``value_range`` (default ``(-1, 1)``, the range the diffusion branch decodes to and the try-on data is
normalised to). :func:`to_uint8` converts; FID/KID feature extractors and CLIP always receive ``uint8``
``[B, 3, H, W]`` (torchmetrics' Inception contract), so a custom extractor must accept that too.

Offline weights. Nothing here downloads on its own:

- FID/KID with an ``int`` feature size use torch-fidelity's Inception-v3 port of the TF 2015-12-05
  graph (the weights every published FID uses). Its file must be local: the path in the config key
  (``weights_path``), or torch's hub cache (``$TORCH_HOME/hub/checkpoints/``), else
  :class:`~fashion_vl.hub.PretrainedUnavailableError` says where to put it. Any ``nn.Module``
  may be given instead (a local feature extractor): then no file is needed.
- CLIP-score loads a Hugging Face CLIP (hub name or local folder) through
  :func:`~fashion_vl.hub.load_pretrained`, so an offline machine fails fast with the project's
  message naming the config key.

Attribute accuracy (the measurement that carries meaning on synthetic data, where no Inception or
CLIP weights exist offline): an attribute judge trained on real synthetic images
(:class:`~fashion_vl.models.attribute_judge.AttributeJudge`) says whether a generated picture shows
the colour / category / pattern it was asked for; :class:`AttributeAccuracy` counts agreements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore

from fashion_vl.hub import PretrainedUnavailableError, load_pretrained

ValueRange = tuple[float, float]

# torch-fidelity's Inception-v3 (TF FID graph 2015-12-05 converted to PyTorch): the file name its
# loader caches under torch's hub directory, and where it is published.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_FEATURES = (64, 192, 768, 2048)


# ----------------------------------------------------------------------------------------- ranges
def to_unit(images: Tensor, value_range: ValueRange = (-1.0, 1.0)) -> Tensor:
    """Float images in [0, 1] from ``uint8`` or from floats in ``value_range`` (clamped)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, not {images.dtype}")
    low, high = value_range
    return ((images.float() - low) / (high - low)).clamp(0.0, 1.0)


def to_uint8(images: Tensor, value_range: ValueRange = (-1.0, 1.0)) -> Tensor:
    """``uint8`` images in [0, 255] (unchanged if already ``uint8``), rounded, as Inception/CLIP take."""
    if images.dtype == torch.uint8:
        return images
    return (to_unit(images, value_range) * 255.0).round().to(torch.uint8)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")


# ---------------------------------------------------------------------------------------- FID/KID
def resolve_inception_weights(
    weights_path: str | None, config_key: str = "eval.generation.inception_weights", download: bool = False
) -> str:
    """Path of torch-fidelity's Inception weights: ``weights_path``, else torch's hub cache.

    Args:
        weights_path: a local ``.pth`` file, or ``None`` to look in ``torch.hub.get_dir()/checkpoints``.
        config_key: named in the error, so the user knows what to set.
        download: fetch :data:`INCEPTION_URL` into the hub cache when it is missing (off by default:
            evaluation never reaches the network unless asked to).

    Raises:
        FileNotFoundError: ``weights_path`` is given but is not a file.
        PretrainedUnavailableError: nothing given, nothing cached, and ``download`` is off.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{config_key}: no Inception weight file at {path} (expected torch-fidelity's {INCEPTION_FILE})"
            )
        return str(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    if download:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached))
        return str(cached)
    raise PretrainedUnavailableError(
        f"Cannot compute FID/KID with Inception features: no local copy of torch-fidelity's Inception-v3 "
        f"weights ({INCEPTION_FILE}), and fashion-vl does not download them on its own.\n"
        f"  - download {INCEPTION_URL} on a connected machine and point the config at it: "
        f"{config_key}=/path/to/{INCEPTION_FILE}\n"
        f"  - or copy it to {cached} (torch's hub cache, where torch-fidelity looks)\n"
        f"  - or give a local feature extractor (an nn.Module) as the feature instead of an Inception size"
    )


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 (via torchmetrics) from a local weight file; ``uint8`` in,
    ``[B, feature]`` out. ``num_features`` tells torchmetrics the size without a dummy forward."""

    def __init__(self, feature: int, weights_path: str) -> None:
        super().__init__()
        if feature not in INCEPTION_FEATURES:
            raise ValueError(f"Inception feature size must be one of {INCEPTION_FEATURES}, not {feature}")
        try:
            import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 needs it; fail here with our hint)
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:
            raise ModuleNotFoundError(
                "FID/KID with Inception features need torch-fidelity: pip install 'fashion-vl[gen]'"
            ) from err
        self.num_features = feature
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(feature)],
            feature_extractor_weights_path=weights_path,
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).reshape(images.shape[0], -1)


def feature_extractor(
    feature: int | nn.Module,
    weights_path: str | None = None,
    config_key: str = "eval.generation.inception_weights",
) -> nn.Module:
    """The module FID/KID compare images with: an Inception size (64/192/768/2048, weights from a local
    file, see :func:`resolve_inception_weights`) or any ``nn.Module`` mapping ``uint8 [B,3,H,W]`` to
    ``[B, D]`` (give it a ``num_features`` attribute, or torchmetrics runs a dummy 299x299 image)."""
    if isinstance(feature, nn.Module):
        return feature
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise TypeError(
            f"feature must be an Inception feature size or an nn.Module, not {type(feature).__name__}"
        )
    return InceptionFeatures(feature, resolve_inception_weights(weights_path, config_key))


def build_fid(
    feature: int | nn.Module = 2048,
    weights_path: str | None = None,
    *,
    config_key: str = "eval.generation.inception_weights",
    **kwargs: Any,
) -> FrechetInceptionDistance:
    """torchmetrics FID over :func:`feature_extractor` (``update(uint8_images, real=...)``)."""
    return FrechetInceptionDistance(feature=feature_extractor(feature, weights_path, config_key), **kwargs)


def build_kid(
    feature: int | nn.Module = 2048,
    weights_path: str | None = None,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    config_key: str = "eval.generation.inception_weights",
    **kwargs: Any,
) -> KernelInceptionDistance:
    """torchmetrics KID over :func:`feature_extractor`. ``subset_size`` must not exceed the number of
    real or of generated images (torchmetrics raises otherwise)."""
    return KernelInceptionDistance(
        feature=feature_extractor(feature, weights_path, config_key),
        subsets=subsets,
        subset_size=subset_size,
        **kwargs,
    )


class GenerationQuality(nn.Module):
    """FID and KID of generated images against real ones, sharing one feature extractor.

    ``update(images, real=True|False)`` takes ``uint8`` or floats in ``value_range`` and converts them to
    ``uint8`` first. ``compute()`` returns ``fid``, ``kid_mean``, ``kid_std``. The two torchmetrics
    metrics keep their own states and sync them across ranks when computed (each runs the shared
    extractor itself: two forwards per batch, simpler than re-implementing either). KID's
    ``subset_size`` must not exceed either set's size.

    Args:
        feature: Inception feature size (needs ``weights_path`` or the hub cache) or an ``nn.Module``.
        weights_path: local Inception weight file (config key ``config_key``).
        kid_subsets, kid_subset_size: KID's random subsets and their size.
        value_range: range of float inputs.
        reset_real_features: keep the real statistics across :meth:`reset` when ``False``.
    """

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        weights_path: str | None = None,
        *,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        value_range: ValueRange = (-1.0, 1.0),
        reset_real_features: bool = True,
        config_key: str = "eval.generation.inception_weights",
    ) -> None:
        super().__init__()
        extractor = feature_extractor(feature, weights_path, config_key)
        self.value_range = tuple(value_range)
        self.fid = FrechetInceptionDistance(feature=extractor, reset_real_features=reset_real_features)
        self.kid = KernelInceptionDistance(
            feature=extractor,
            subsets=kid_subsets,
            subset_size=kid_subset_size,
            reset_real_features=reset_real_features,
        )

    def update(self, images: Tensor, real: bool) -> None:
        _check_images(images)
        images = to_uint8(images, self.value_range)
        self.fid.update(images, real=real)
        self.kid.update(images, real=real)

    def compute(self) -> dict[str, Tensor]:
        kid_mean, kid_std = self.kid.compute()
        return {"fid": self.fid.compute(), "kid_mean": kid_mean, "kid_std": kid_std}

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()


# --------------------------------------------------------------------------------------- CLIP-score
def _as_tensor(features: Any) -> Tensor:
    """transformers >= 5 returns an output object from ``get_*_features`` (projected embedding in
    ``pooler_output``); torchmetrics <= 1.9 expects the tensor that transformers 4 returned."""
    return features if isinstance(features, Tensor) else features.pooler_output


class _CLIPFeatures(nn.Module):
    """A CLIP model whose ``get_image_features``/``get_text_features`` return tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return _as_tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return _as_tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(name: str, config_key: str = "eval.generation.clip_model") -> tuple[nn.Module, Any]:
    """CLIP model and processor from a hub name or a local folder (``save_pretrained`` of both), loaded
    through :func:`~fashion_vl.hub.load_pretrained`: offline without a copy, one clear error."""
    from transformers import CLIPModel, CLIPProcessor

    model = load_pretrained(CLIPModel.from_pretrained, name, what="CLIP model", config_key=config_key)
    processor = load_pretrained(
        CLIPProcessor.from_pretrained, name, what="CLIP processor", config_key=config_key
    )
    return _CLIPFeatures(model.eval()), processor


class GenerationCLIPScore(CLIPScore):
    """torchmetrics' CLIP-score (``100 * max(cos(image, text), 0)``, averaged; states synced across
    ranks) whose images may be floats in ``value_range`` as well as ``uint8``.

    Args:
        model: hub name or local folder of a CLIP model and processor, or a callable returning
            ``(model, processor)`` (tests, custom CLIPs).
        config_key: named in the offline error.
        value_range: range of float images.
    """

    def __init__(
        self,
        model: str | Callable[[], tuple[Any, Any]] = "openai/clip-vit-large-patch14",
        config_key: str = "eval.generation.clip_model",
        value_range: ValueRange = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        loader = model if callable(model) else (lambda: load_clip(model, config_key))
        super().__init__(model_name_or_path=loader, **kwargs)
        self.value_range = tuple(value_range)

    def update(self, images: Tensor, text: str | Sequence[str]) -> None:  # type: ignore[override]
        _check_images(images)
        super().update(to_uint8(images, self.value_range), list(text) if not isinstance(text, str) else text)


# ------------------------------------------------------------------------------- masked PSNR / SSIM
def _keep_weights(keep_mask: Tensor, like: Tensor) -> Tensor:
    """``[B, 1, H, W]`` float weights from a keep mask ``[B, H, W]`` / ``[B, 1, H, W]`` (bool or 0/1)."""
    if keep_mask.dim() == 3:
        keep_mask = keep_mask[:, None]
    if keep_mask.dim() != 4 or keep_mask.shape[1] != 1 or keep_mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(
            f"keep_mask must be [B, (1,) H, W] matching {tuple(like.shape)}, got {tuple(keep_mask.shape)}"
        )
    return (keep_mask > 0.5).to(like.dtype) if keep_mask.dtype != torch.bool else keep_mask.to(like.dtype)


def keep_mask_from_paint_mask(paint_mask: Tensor) -> Tensor:
    """The region an edit must keep: where the paint mask is off (VITON-HD's ``agnostic-mask``: white =
    area to paint; floats in [0, 1] are thresholded at 0.5, as the data thresholds at 128)."""
    return ~(paint_mask > 0.5) if paint_mask.dtype != torch.bool else ~paint_mask


def masked_psnr(
    pred: Tensor,
    target: Tensor,
    keep_mask: Tensor,
    value_range: ValueRange = (-1.0, 1.0),
    reduction: str = "mean",
) -> Tensor:
    """PSNR over the kept pixels only (all channels), per image: ``10 log10(1 / MSE)`` on [0, 1] pixels.

    Args:
        pred, target: ``[B, 3, H, W]``, ``uint8`` or floats in ``value_range``.
        keep_mask: ``[B, (1,) H, W]``, true where the edit must leave the picture unchanged.
        reduction: ``mean`` over images or ``none`` (``[B]``).

    Returns:
        ``inf`` for an image whose kept region is exact; ``nan`` for one with no kept pixel.
    """
    x, y = to_unit(pred, value_range), to_unit(target, value_range)
    w = _keep_weights(keep_mask, x)
    squared = ((x - y) ** 2 * w).sum(dim=(1, 2, 3))
    count = w.sum(dim=(1, 2, 3)) * x.shape[1]
    mse = squared / count
    psnr = 10.0 * torch.log10(1.0 / mse)
    return _reduce(psnr, reduction)


def masked_ssim(
    pred: Tensor,
    target: Tensor,
    keep_mask: Tensor,
    value_range: ValueRange = (-1.0, 1.0),
    reduction: str = "mean",
    **ssim_kwargs: Any,
) -> Tensor:
    """SSIM of the kept region: the SSIM map averaged over kept pixels (and channels), per image.

    SSIM is a windowed statistic, so its map near the mask border would see painted pixels. The
    prediction's painted area is therefore replaced by the target first, then the map (torchmetrics'
    ``return_full_image``, Gaussian 11x11, sigma 1.5) is averaged over kept pixels only. Compositing
    alone and averaging the whole map would reward big masks (every painted window scores 1);
    averaging alone would charge a perfect edit for its border windows. Together, an edit that
    changes nothing outside the mask scores exactly 1, whatever the mask's size.

    Args: as :func:`masked_psnr`; ``ssim_kwargs`` go to torchmetrics' SSIM (``data_range`` is 1).
    """
    x, y = to_unit(pred, value_range), to_unit(target, value_range)
    w = _keep_weights(keep_mask, x)
    composite = x * w + y * (1.0 - w)
    _, ssim_map = structural_similarity_index_measure(
        composite, y, data_range=1.0, reduction="none", return_full_image=True, **ssim_kwargs
    )
    per_image = (ssim_map * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * x.shape[1])
    return _reduce(per_image, reduction)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")


class MaskedReconstruction(Metric):
    """Per-image masked PSNR and SSIM (:func:`masked_psnr`, :func:`masked_ssim`) averaged over every
    image seen, on all ranks. ``psnr`` is ``inf`` as soon as one image keeps its region exactly; images
    without a kept pixel are left out."""

    full_state_update = False

    def __init__(self, value_range: ValueRange = (-1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value_range = tuple(value_range)
        self.add_state("psnr_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ssim_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, keep_mask: Tensor) -> None:
        psnr = masked_psnr(pred, target, keep_mask, self.value_range, reduction="none")
        ssim = masked_ssim(pred, target, keep_mask, self.value_range, reduction="none")
        valid = ~torch.isnan(ssim)
        self.psnr_sum += psnr[valid].double().sum()
        self.ssim_sum += ssim[valid].double().sum()
        self.count += int(valid.sum())

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1).double()
        return {"psnr": (self.psnr_sum / n).float(), "ssim": (self.ssim_sum / n).float()}


# ------------------------------------------------------------------------------ attribute accuracy
class AttributeAccuracy(Metric):
    """How often generated images show the attribute values they were asked for, per attribute.

    ``update(logits, asked)``: ``logits`` maps an attribute name to a judge's ``[B, C]`` scores,
    ``asked`` maps names to ``[B]`` class ids, ``-1`` where that attribute was not asked (or is
    unknown). ``compute()`` gives percentages (0-100): ``<name>_acc`` per attribute, ``all_acc`` (images
    with every asked attribute right, among images asked anything) and ``acc`` (mean of the per-attribute
    accuracies). An attribute never asked reports ``nan``.
    """

    full_state_update = False

    def __init__(self, attributes: Sequence[str] = ("colour", "category", "pattern"), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attributes = tuple(attributes)
        for name in (*self.attributes, "all"):
            self.add_state(f"{name}_correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{name}_total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Mapping[str, Tensor], asked: Mapping[str, Tensor]) -> None:
        unknown = set(asked) - set(self.attributes)
        if unknown:
            raise KeyError(
                f"asked for attributes {sorted(unknown)} this metric does not track {self.attributes}"
            )
        batch = next(iter(asked.values())).shape[0] if asked else 0
        all_right = torch.ones(batch, dtype=torch.bool, device=self.all_total.device)
        any_asked = torch.zeros_like(all_right)
        for name, target in asked.items():
            if name not in logits:
                raise KeyError(f"no {name!r} logits to judge the asked {name}")
            target = target.to(all_right.device)
            mask = target >= 0
            right = logits[name].argmax(dim=-1).to(target.device) == target
            getattr(self, f"{name}_correct").add_(int((right & mask).sum()))
            getattr(self, f"{name}_total").add_(int(mask.sum()))
            all_right &= right | ~mask
            any_asked |= mask
        self.all_correct += int((all_right & any_asked).sum())
        self.all_total += int(any_asked.sum())

    def compute(self) -> dict[str, Tensor]:
        def pct(name: str) -> Tensor:
            total = getattr(self, f"{name}_total")
            if int(total) == 0:
                return torch.tensor(float("nan"))
            return 100.0 * getattr(self, f"{name}_correct").double().div(total).float().cpu()

        out = {f"{name}_acc": pct(name) for name in self.attributes}
        asked = [v for v in out.values() if not math.isnan(float(v))]
        out["acc"] = torch.stack(asked).mean() if asked else torch.tensor(float("nan"))
        out["all_acc"] = pct("all")
        return out


@torch.no_grad()
def attribute_accuracy(
    judge: nn.Module,
    images: Tensor,
    asked: Mapping[str, Tensor],
    *,
    value_range: ValueRange = (-1.0, 1.0),
    batch_size: int = 64,
) -> dict[str, float]:
    """Share (percent) of ``images`` whose judged attribute equals the ``asked`` one, per attribute.

    Args:
        judge: an :class:`~fashion_vl.models.attribute_judge.AttributeJudge` (``preprocess`` turns
            ``uint8``/``value_range`` images into its input; ``forward`` returns name -> logits).
        images: ``[N, 3, H, W]`` generated images.
        asked: name -> ``[N]`` class ids (``-1``: not asked), vocabularies of
            :data:`~fashion_vl.data.garment_labels.GARMENT_VOCABS`.
    """
    _check_images(images)
    metric = AttributeAccuracy(tuple(asked))
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    try:
        for start in range(0, images.shape[0], batch_size):
            chunk = judge.preprocess(images[start : start + batch_size].to(device), value_range)
            metric.update(judge(chunk), {k: v[start : start + batch_size] for k, v in asked.items()})
    finally:
        judge.train(was_training)
    return {k: float(v) for k, v in metric.compute().items()}
