"""Benchmark of training steps: the project's modules built from an experiment config, timed under
several execution paths on the same batches.

Paths (:class:`ExecutionPath`): ``eager_fp32`` (the reference's precision: fp32, TF32 off, no compile),
``bf16`` (autocast only) and ``default`` (what ``fvl-train`` does on this device: the trainer's
precision, ``channels_last`` from the model config, ``torch.compile`` of the compile units on CUDA,
the fused optimizer, TF32). The step is the optimisation step alone (zero-grad, forward, backward,
optimizer step) without Lightning's loop around it; ``data_path`` adds the DataLoader.
"""

from __future__ import annotations

import functools
import itertools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_vl.bench.timing import count_flops, median, peak_memory_gib, reset_peak_memory, time_calls
from fashion_vl.build import build as build_run
from fashion_vl.build import compose
from fashion_vl.lit.objectives import step_generator
from fashion_vl.lit.pretrain import PretrainModule
from fashion_vl.losses import StepContext
from fashion_vl.utils.speed import compile_units

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionPath:
    """How a step is executed; the model and data are the same for every path."""

    name: str
    autocast: str | None  # "bfloat16" | "float16" | None
    channels_last: bool
    compile: bool
    tf32: bool
    project_optimizer: bool  # fused/foreach as fvl-train picks it, else torch's default
    compile_backend: str = "inductor"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.autocast) if self.autocast else None


def reference_paths() -> dict[str, ExecutionPath]:
    return {
        "eager_fp32": ExecutionPath("eager_fp32", None, False, False, False, False),
        "bf16": ExecutionPath("bf16", "bfloat16", False, False, False, False),
    }


def default_path(cfg: DictConfig, device: torch.device) -> ExecutionPath:
    """The path ``fvl-train`` takes with this config on ``device``."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    autocast = (
        "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else None
    )
    compile_cfg = (cfg.get("callbacks") or {}).get("compile") or {}
    enabled = compile_cfg.get("enabled", False)
    compiled = enabled is True or (enabled == "auto" and device.type == "cuda")
    channels_last = bool(OmegaConf.select(cfg, "model.image_encoder.channels_last", default=False))
    tf32 = str(cfg.get("float32_matmul_precision", "highest")) != "highest"
    backend = str(compile_cfg.get("backend", "inductor"))
    return ExecutionPath("default", autocast, channels_last, compiled, tf32, True, backend)


@contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def compose_experiment(
    experiment: str, data_dir: str | Path, overrides: list[str], output_dir: str | Path | None = None
) -> DictConfig:
    """The ``fvl-train`` config of ``experiment`` with random-init weights and the data folder's own
    tokenizer (no hub access), plus the caller's overrides. With ``output_dir`` it is a config a run
    can take (``fashion_vl.cli.train.train``): the Hydra part included, every path pointing there, and
    set as the current Hydra config, as the CLI does."""
    base = [
        f"experiment={experiment}",
        f"paths.data_dir={data_dir}",
        "tokenizer=${paths.data_dir}/tokenizer",
        "data_check=false",
    ]
    cfg = compose("train", base + list(overrides), output_dir=output_dir)
    for key in ("model.image_encoder.pretrained", "model.text_encoder.pretrained"):
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, False)
    return cfg


@dataclass
class Built:
    lit: Any
    optimizer: torch.optim.Optimizer
    tasks: dict[str, Callable[[dict, int], torch.Tensor]]  # task -> loss of (batch, step)


def build(cfg: DictConfig, path: ExecutionPath, device: torch.device, seed: int = 0) -> Built:
    """The LightningModule of ``cfg`` (:func:`fashion_vl.build.build`, without data or trainer) on
    ``device`` with ``path``'s layout, compile and optimizer. The same seed gives the same initial
    weights for every path."""
    with open_dict(cfg):
        cfg.seed = seed
    lit = build_run(cfg, data=False, trainer=False).lit.to(device)
    encoder = getattr(lit.net, "image_encoder", None)
    if encoder is not None and hasattr(encoder, "channels_last"):
        encoder.channels_last = path.channels_last
        encoder.to(memory_format=torch.channels_last if path.channels_last else torch.contiguous_format)
    if path.compile:
        compile_units(lit.net, backend=path.compile_backend)
    lit.train()
    if not path.project_optimizer:  # torch's own default implementation, whatever the config names
        factory = lit.optimizer_factory
        keywords = {k: v for k, v in factory.keywords.items() if k not in ("fused", "foreach")}
        lit.optimizer_factory = functools.partial(factory.func, *factory.args, **keywords, foreach=None)
    lit.scheduler_factory = None  # the schedule is not stepped here (and some read the Trainer's length)
    optimizer = lit.configure_optimizers()["optimizer"]
    return Built(lit, optimizer, task_losses(lit))


def task_losses(lit: Any) -> dict[str, Callable[[dict, int], torch.Tensor]]:
    """Pre-training: one entry per objective and ``mix`` (the module's own task sampler); any other
    task: its ``training_step``."""
    if isinstance(lit, PretrainModule):
        objectives = lit.objectives
        out: dict[str, Callable[[dict, int], torch.Tensor]] = {}
        for name in objectives.sampler.names:
            out[name] = lambda batch, step, name=name: objectives[name](
                lit.net, batch, StepContext(step_generator(objectives.seed, step))
            )["loss"]
        out["mix"] = lambda batch, step: objectives(lit.net, batch, step)[0]
        return out
    return {"train": lambda batch, step: lit.training_step(batch, step)}


def optimisation_step(
    built: Built, loss_of: Callable[[dict, int], torch.Tensor], path: ExecutionPath, device: torch.device
) -> Callable[[dict, int], torch.Tensor]:
    dtype = path.autocast_dtype

    def step(batch: dict, index: int) -> torch.Tensor:
        built.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = loss_of(batch, index)
        loss.backward()
        built.optimizer.step()
        return loss.detach()

    return step


def add_patch_labels(batch: dict, codebook_size: int, generator: torch.Generator) -> dict:
    """Precomputed MPFC targets (random codes) so the VQ tokenizer is not part of the timed step."""
    if "patch_mask" in batch and "patch_labels" not in batch:
        mask = batch["patch_mask"]
        batch["patch_labels"] = torch.randint(codebook_size, mask.shape, generator=generator)
    return batch


def batches_from(datamodule: Any, count: int, codebook_size: int) -> list[dict]:
    """``count`` collated training batches (cycling the loader if it is shorter)."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    generator = torch.Generator().manual_seed(0)
    return [
        add_patch_labels(b, codebook_size, generator)
        for b in itertools.islice(itertools.cycle(loader), count)
    ]


def batch_size(batch: dict) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise ValueError("batch holds no tensor")


class StepBench:
    """Times every task of ``cfg``'s module under each path on the same batches."""

    def __init__(
        self,
        cfg: DictConfig,
        device: torch.device,
        steps: int = 20,
        warmup: int = 5,
        num_batches: int = 4,
        codebook_size: int = 1024,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.steps = steps
        self.warmup = warmup
        self.codebook_size = codebook_size
        self.datamodule = instantiate(cfg.data, _convert_="partial")
        cpu_batches = batches_from(self.datamodule, num_batches, codebook_size)
        self.batches = [move_data_to_device(b, device) for b in cpu_batches]
        self.batch_size = batch_size(self.batches[0])

    def _cycle(self, step: Callable[[dict, int], torch.Tensor]) -> Callable[[], None]:
        counter = itertools.count()

        def call() -> None:
            i = next(counter)
            step(self.batches[i % len(self.batches)], i)

        return call

    def run_path(self, path: ExecutionPath, tasks: list[str] | None = None) -> dict[str, Any]:
        """Per task: median step seconds, samples/s and peak memory; the first batch's loss at the
        initial weights, in eval mode (no drop-out), for comparing paths."""
        with matmul_precision(path.tf32), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a Trainer, in training_step
            built = build(self.cfg, path, self.device)
            losses = self.initial_losses(built, path)
            out: dict[str, Any] = {"path": asdict(path), "initial_loss": losses, "tasks": {}}
            for name, loss_of in built.tasks.items():
                if tasks is not None and name not in tasks:
                    continue
                step = optimisation_step(built, loss_of, path, self.device)
                reset_peak_memory(self.device)
                seconds = time_calls(self._cycle(step), self.device, self.steps, self.warmup)
                out["tasks"][name] = self._figures(seconds, name)
        return out

    def _figures(self, seconds: list[float], task: str) -> dict[str, Any]:
        if task == "mix":  # tasks differ in cost: the mix's rate is over the whole sequence
            rate = self.batch_size * len(seconds) / sum(seconds)
        else:
            rate = self.batch_size / median(seconds)
        return {
            "step_s_median": median(seconds),
            "samples_per_s": rate,
            "peak_memory_gib": peak_memory_gib(self.device),
        }

    @torch.no_grad()
    def initial_losses(self, built: Built, path: ExecutionPath) -> dict[str, float]:
        dtype = path.autocast_dtype
        built.lit.eval()
        try:
            out = {}
            for name, loss_of in built.tasks.items():
                if name == "mix":
                    continue
                with torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext():
                    out[name] = float(loss_of(self.batches[0], 0))
            return out
        finally:
            built.lit.train()

    def flops_per_sample(self) -> dict[str, float]:
        """Forward + backward FLOPs per sample of each task, on the eager fp32 path."""
        built = build(self.cfg, reference_paths()["eager_fp32"], self.device)
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, loss_of in built.tasks.items():
                if name == "mix":
                    continue

                def fwd_bwd(loss_of: Callable = loss_of) -> None:
                    loss_of(self.batches[0], 0).backward()

                out[name] = count_flops(fwd_bwd) / self.batch_size
                built.optimizer.zero_grad(set_to_none=True)
        weights = task_weights(built.lit)
        if weights:
            total = sum(weights.values())
            out["mix"] = sum(out[t] * w / total for t, w in weights.items() if t in out)
        else:
            out["mix"] = out.get("train", float("nan"))
        return out

    def components(self, path: ExecutionPath) -> dict[str, float]:
        """Median seconds of the pieces of a step at the same shapes, on ``path``: the CNN forward +
        backward, BERT over the text alone and over ``[text ; visual]``, and the optimizer step.
        FashionViL-shaped modules only (an empty dict otherwise)."""
        with matmul_precision(path.tf32):
            built = build(self.cfg, path, self.device)
            net = built.lit.net
            if not all(hasattr(net, m) for m in ("image_grid", "encode_text", "encode_fused")):
                return {}
            batch = self.batches[0]
            images, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
            dtype = path.autocast_dtype
            ctx = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else nullcontext
            with torch.no_grad(), ctx():
                grid_shape = net.image_grid(images).shape

            def cnn() -> None:
                with ctx():
                    out = net.image_grid(images)
                out.float().sum().backward()

            def text() -> None:
                with ctx():
                    out = net.encode_text(ids, mask)
                out.float().sum().backward()

            grid = torch.randn(grid_shape, device=self.device, requires_grad=True)

            def fused() -> None:
                with ctx():
                    out = net.encode_fused(ids, mask, grid=grid)
                (out.text.float().sum() + out.visual.float().sum()).backward()

            for p in built.lit.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)

            def optimizer() -> None:
                built.optimizer.step()

            out = {}
            for name, fn in (
                ("cnn", cnn),
                ("bert_text", text),
                ("bert_fused", fused),
                ("optimizer", optimizer),
            ):
                out[name] = median(time_calls(fn, self.device, self.steps, self.warmup))
            return out

    def data_path(self, path: ExecutionPath, task: str = "mix") -> dict[str, float]:
        """The same step fed from the DataLoader (decoding, augmentation, collation and the copy to the
        device inside the timed loop) against batches already on the device."""
        with matmul_precision(path.tf32), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = build(self.cfg, path, self.device)
            step = optimisation_step(built, built.tasks[task], path, self.device)
            on_device = time_calls(self._cycle(step), self.device, self.steps, self.warmup)
            loader = self.datamodule.train_dataloader()
            generator = torch.Generator().manual_seed(1)
            stream = iter(itertools.cycle(loader)) if len(loader) < self.steps + self.warmup else iter(loader)
            counter = itertools.count()

            def from_files() -> None:
                batch = add_patch_labels(next(stream), self.codebook_size, generator)
                step(move_data_to_device(batch, self.device), next(counter))

            from_loader = time_calls(from_files, self.device, self.steps, self.warmup)
        tensors = self.batch_size * len(on_device) / sum(on_device)
        files = self.batch_size * len(from_loader) / sum(from_loader)
        return {"tensors_samples_per_s": tensors, "files_samples_per_s": files, "ratio": files / tensors}


def task_weights(lit: Any) -> dict[str, float]:
    objectives = getattr(lit, "objectives", None)
    sampler = getattr(objectives, "sampler", None)
    return sampler.as_dict() if sampler is not None else {}
