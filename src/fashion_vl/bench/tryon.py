"""Speed of UniFashion try-on editing at the reference's sizes: training steps taken by ``fvl-train``'s
own path (the experiment's Trainer, precision and callbacks) and timed per step by :class:`StepTimer`,
then DDIM sampling of one test batch, timed end to end.

The real-size run builds every part at random (``model/diffusion@model.branch=sd15_random``, the EVA
ViT-g and the Q-Former with ``pretrained=false``) and reads synthetic VITON-HD, so it needs neither
the hub nor the dataset: what it measures is the compute, not the weights.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig

from fashion_vl.bench.timing import peak_memory_gib, reset_peak_memory, synchronize

# The reference's try-on model with random weights (no hub access): SD v1.5's UNet/VAE/CLIP text
# architecture, EVA ViT-g/14 and BLIP-2's Q-Former.
REAL_SIZE_RANDOM = [
    "model/diffusion@model.branch=sd15_random",
    "model.query_encoder.unifashion.image_encoder.pretrained=false",
    "model.query_encoder.unifashion.qformer.pretrained=false",
]


class StepTimer(Callback):
    """Seconds of each training step (forward, backward, optimizer step; CUDA-synchronised at both
    ends) and its loss. Lightning's ``Timer`` measures whole stages only, and its throughput monitor
    needs a logger and FLOP counts; this is the per-step wall clock a benchmark reports."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss) if loss is not None else math.nan)


def bench_overrides(steps: int, batch_size: int, sample_images: int, num_workers: int | None) -> list[str]:
    """Train ``steps`` steps and nothing else: no validation, checkpoints, test or progress bar."""
    out = [
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0",
        "trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "~callbacks.checkpoint_last",
        "~callbacks.checkpoint_best",
        "test=false",
        f"data.batch_size={batch_size}",
        f"data.eval_batch_size={sample_images}",
        "+callbacks.step_timer._target_=fashion_vl.bench.tryon.StepTimer",
    ]
    if num_workers is not None:
        out.append(f"data.num_workers={num_workers}")
    return out


def parameter_counts(net: torch.nn.Module) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }


def bench_tryon(
    cfg: DictConfig, warmup: int, sample_images: int, sample_steps: int, guidance_scale: float, seed: int = 0
) -> dict[str, Any]:
    """Train as ``fvl-train`` would with ``cfg`` (see :func:`bench_overrides`), then sample the first
    ``sample_images`` test items with ``sample_steps`` DDIM steps under the trainer's precision."""
    from fashion_vl.cli.train import train

    metrics, objects = train(cfg)
    trainer, lit, datamodule = objects["trainer"], objects["lit"], objects["datamodule"]
    timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
    device = lit.device
    timed = timer.seconds[warmup:] or timer.seconds
    batch = int(cfg.data.batch_size)
    train_peak = peak_memory_gib(device)
    median = statistics.median(timed)
    training = {
        "steps": len(timer.seconds),
        "warmup_steps_excluded": len(timer.seconds) - len(timed),
        "batch_size": batch,
        "height": int(cfg.data.height),
        "width": int(cfg.data.width),
        "precision": str(trainer.precision),
        "median_step_s": median,
        "mean_step_s": statistics.fmean(timed),
        "first_step_s": timer.seconds[0],
        "samples_per_s": batch / median,
        "first_loss": timer.losses[0],
        "last_loss": timer.losses[-1],
        "losses_finite": all(math.isfinite(x) for x in timer.losses),
        "peak_memory_gib": train_peak,
        "parameters": parameter_counts(lit.net),
    }

    datamodule.setup("test")
    items = next(iter(datamodule.test_dataloader()))
    items = {k: v[:sample_images] for k, v in items.items() if k != "bad_images"}
    items = move_data_to_device(items, device)
    count = int(items["image"].shape[0])
    lit.eval()
    reset_peak_memory(device)
    generator = torch.Generator(device).manual_seed(seed)
    autocast = trainer.precision.startswith("bf16")
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        synchronize(device)
        start = time.perf_counter()
        images = lit.net.sample(
            items, num_steps=sample_steps, guidance_scale=guidance_scale, generator=generator
        )
        synchronize(device)
        seconds = time.perf_counter() - start
    sampling = {
        "images": count,
        "height": int(images.shape[-2]),
        "width": int(images.shape[-1]),
        "ddim_steps": sample_steps,
        "guidance_scale": guidance_scale,
        "seconds": seconds,
        "seconds_per_image": seconds / count,
        "finite": bool(torch.isfinite(images).all()),
        "peak_memory_gib": peak_memory_gib(device),
    }
    return {"device": str(device), "train": training, "sample": sampling, "final_metrics": metrics}


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fvl_bench_tryon_"))
