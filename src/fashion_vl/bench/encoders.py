"""Size and encode throughput of a model as an embedder: parameters, images/s and texts/s.

The comparison table (``fvl-compare``) reports them next to each model's figures. The model is built
from its embedder preset's config (``conf/embedder/``), with its own preprocessing: images are random
``uint8`` pictures through the data module's evaluation transform, texts product-like sentences through
its tokenizer, so the input sizes are the ones the protocols use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fashion_vl.bench.timing import median, time_calls

SAMPLE_TEXT = "Red cotton shirt with long sleeves. Button-down collar, chest pocket and a straight hem."


@dataclass(frozen=True)
class EncoderFigures:
    """``parameters``: every parameter of the network (frozen ones included); ``images_per_s`` /
    ``texts_per_s``: median batches of ``batch_size`` after warm-up; ``device``: where they ran."""

    parameters: int
    images_per_s: float
    texts_per_s: float
    batch_size: int
    image_size: tuple[int, ...]
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def encode_throughput(
    net: torch.nn.Module,
    images: torch.Tensor,
    tokens: dict[str, torch.Tensor],
    steps: int = 3,
    warmup: int = 1,
) -> tuple[float, float]:
    """(images/s, texts/s) of ``net.encode_image`` and ``net.encode_text`` on one batch each, in
    inference mode on the batch's device."""
    device = images.device
    with torch.inference_mode():
        image_s = median(time_calls(lambda: net.encode_image(images, normalize=True), device, steps, warmup))
        text_s = median(
            time_calls(
                lambda: net.encode_text(tokens["input_ids"], tokens["attention_mask"], normalize=True),
                device,
                steps,
                warmup,
            )
        )
    return images.shape[0] / image_s, tokens["input_ids"].shape[0] / text_s


def measure_embedder(
    cfg: DictConfig, batch_size: int = 32, device: str | None = None, steps: int = 3
) -> EncoderFigures:
    """Build ``cfg.model`` and the data module's preprocessing of an evaluation config and time them."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    datamodule = instantiate(cfg.data, _convert_="partial")
    net = instantiate(cfg.model, _convert_="all").to(target).eval()
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (batch_size, 3, 256, 192), dtype=torch.uint8, generator=generator)
    images = torch.stack([datamodule.eval_transform(image) for image in raw]).to(target)
    tokens = {k: v.to(target) for k, v in datamodule.text([SAMPLE_TEXT] * batch_size).items()}
    images_per_s, texts_per_s = encode_throughput(net, images, tokens, steps=steps)
    return EncoderFigures(
        parameters=parameter_count(net),
        images_per_s=images_per_s,
        texts_per_s=texts_per_s,
        batch_size=batch_size,
        image_size=tuple(images.shape[1:]),
        device=str(target),
    )
