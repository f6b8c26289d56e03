"""What the frozen VQ tokenizer costs an MPFC step at real size, in FLOPs (device-independent).

The MPFC loss runs the tokenizer on the augmented batch unless the batch carries ``patch_labels``
(:class:`fashion_vl.losses.MpfcLoss`). This counts, per sample, the tokenizer's forward (the authors'
VQ-VAE encoder, ``conf/model/vqvae.yaml``, 224 px) against the forward + backward of the rest of the
MPFC step (FashionViL at real size: ResNet-50 + BERT-base, random weights, 75 text tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from fashion_vl.bench.timing import count_flops
from fashion_vl.bench.training import compose_experiment
from fashion_vl.data.masking import BlockMasking
from fashion_vl.losses import MpfcLoss
from fashion_vl.losses.objective import StepContext
from fashion_vl.models.vqvae import VQTokenizer, build_vqmodel


def mpfc_flops(
    data_dir: str | Path,
    experiment: str = "pretrain_fashionall",
    batch_size: int = 2,
    image_size: int = 224,
    text_length: int = 75,
    vq_overrides: dict[str, Any] | None = None,
) -> dict[str, float]:
    """GFLOPs per sample of the tokenizer's forward and of the MPFC step without it (forward + backward,
    targets given), counted on CPU at ``batch_size`` (both scale linearly with the batch)."""
    cfg = compose_experiment(experiment, str(data_dir), [])
    torch.manual_seed(0)
    net = instantiate(cfg.model, _convert_="all")
    tokenizer = VQTokenizer(build_vqmodel(resolution=image_size, **(vq_overrides or {})), chunk_size=None)
    net.image_tokenizer = tokenizer  # the network owns its frozen tokenizer (#24)
    loss = MpfcLoss()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    grid = tokenizer.grid_size
    masking = BlockMasking(grid=list(grid), num_masked=8, min_block=4, max_block=8)
    batch = {
        "image": images,
        "input_ids": torch.randint(1000, net.vocab_size, (batch_size, text_length), generator=generator),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
        "patch_mask": masking(list(range(batch_size))),
    }
    tokens = count_flops(lambda: tokenizer(images))
    batch["patch_labels"] = tokenizer(images)

    def step() -> None:
        loss(net, batch, StepContext(generator))["loss"].backward()

    rest = count_flops(step)
    return {
        "batch_size_counted": batch_size,
        "image_size": image_size,
        "tokenizer_forward_gflops_per_sample": tokens / batch_size / 1e9,
        "mpfc_step_without_tokenizer_gflops_per_sample": rest / batch_size / 1e9,
        "tokenizer_share_of_mpfc_step": tokens / (tokens + rest),
        "tokenizer_parameters": sum(p.numel() for p in tokenizer.parameters()),
    }
