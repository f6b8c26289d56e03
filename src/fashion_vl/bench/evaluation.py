"""Benchmark of full-gallery evaluation: embedding a FashionGen-val-sized gallery (images and texts)
and the full-gallery recall, whose similarity and ranking run on the device in query chunks."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from fashion_vl.bench.timing import peak_memory_gib, reset_peak_memory, time_once
from fashion_vl.bench.training import ExecutionPath, matmul_precision
from fashion_vl.metrics.retrieval import full_gallery_recall
from fashion_vl.utils.speed import compile_units

FASHIONGEN_VAL_IMAGES = 32_528  # the reference's FashionGen val gallery


@torch.inference_mode()
def bench_gallery(
    net: torch.nn.Module,
    device: torch.device,
    path: ExecutionPath,
    *,
    num_items: int = FASHIONGEN_VAL_IMAGES,
    image_size: int = 224,
    text_length: int = 75,
    vocab_size: int = 30522,
    batch_size: int = 512,
    chunk_size: int = 1024,
    warmup_batches: int = 2,
) -> dict[str, Any]:
    """Seconds to embed ``num_items`` images and texts and to rank the full gallery both ways.

    Inputs are random tensors made on the device (decoding is timed by the training benchmark's data
    path); one text per image, so the recall is over a ``num_items x num_items`` similarity computed
    ``chunk_size`` queries at a time.
    """
    net = net.to(device).eval()
    encoder = getattr(net, "image_encoder", None)
    if path.channels_last and encoder is not None and hasattr(encoder, "channels_last"):
        encoder.channels_last = True
        encoder.to(memory_format=torch.channels_last)
    if path.compile:
        compile_units(net, backend=path.compile_backend)
    dtype = path.autocast_dtype
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    generator = torch.Generator(device=device).manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, image_size, image_size, device=device, generator=generator)

    def texts(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(1000, vocab_size, (n, text_length), device=device, generator=generator)
        return ids, torch.ones_like(ids)

    def embed_images() -> torch.Tensor:
        out = []
        for start in range(0, num_items, batch_size):
            with autocast():
                out.append(
                    net.encode_image(images(min(batch_size, num_items - start)), normalize=True).float()
                )
        return torch.cat(out)

    def embed_texts() -> torch.Tensor:
        out = []
        for start in range(0, num_items, batch_size):
            with autocast():
                out.append(
                    net.encode_text(*texts(min(batch_size, num_items - start)), normalize=True).float()
                )
        return torch.cat(out)

    with matmul_precision(path.tf32):
        for _ in range(warmup_batches):  # compilation and autotuning, outside the timings
            with autocast():
                net.encode_image(images(batch_size))
                net.encode_text(*texts(batch_size))
        reset_peak_memory(device)
        image_emb, image_s = time_once(embed_images, device)
        text_emb, text_s = time_once(embed_texts, device)
        ids = torch.arange(num_items, device=device)
        recall, recall_s = time_once(
            lambda: full_gallery_recall(image_emb, ids, text_emb, ids, chunk_size=chunk_size), device
        )
    return {
        "path": path.name,
        "num_items": num_items,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "embed_images_s": image_s,
        "embed_texts_s": text_s,
        "images_per_s": num_items / image_s,
        "texts_per_s": num_items / text_s,
        "full_gallery_recall_s": recall_s,
        "total_s": image_s + text_s + recall_s,
        "peak_memory_gib": peak_memory_gib(device),
        "rsum_random_weights": recall["rsum"],
    }
