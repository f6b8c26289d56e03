"""The non-finite guard on a tiny module (fast), and on the real pre-training path (slow): a NaN loss
skips its optimiser step with weights, AdamW state and BatchNorm statistics untouched, is logged and
counted, stops the run after N in a row, and no checkpoint with a non-finite tensor is written."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.lit.checkpoint_io import AtomicCheckpointIO
from fashion_vl.lit.nonfinite import (
    NonFiniteCheckpointError,
    NonFiniteGuard,
    NonFiniteTrainingError,
    batch_sample_ids,
    nonfinite_tensors,
)


class Pairs(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(8, generator=g), "product_id": 1000 + i}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyModule(FashionLitModule):
    """Regression to zero; batches listed in ``poison`` (by global step) get NaN inputs, which also
    reach the BatchNorm running statistics in the forward pass."""

    def __init__(self, poison: set[int] = frozenset(), lr: float = 1e-2) -> None:
        super().__init__(TinyNet(), functools.partial(torch.optim.AdamW, lr=lr))
        self.poison = set(poison)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["x"]
        if self.global_step in self.poison:
            x = x * float("nan")
        self.step_tasks = ["toy"]
        return self.net(x).pow(2).mean()

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["x"].shape[0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Pairs(), batch_size=8)


class Snapshots(Callback):
    """Parameters, buffers and AdamW state before each optimiser step (keyed by global step)."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        state = {f"module.{k}": v.detach().clone() for k, v in pl_module.state_dict().items()}
        opt = trainer.optimizers[0].state_dict()["state"]
        for i, s in opt.items():
            for k, v in s.items():
                state[f"adam.{i}.{k}"] = v.detach().clone()
        self.before[trainer.global_step] = state


def fit(module: TinyModule, tmp_path: Path, max_steps: int, callbacks=(), **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )
    trainer.fit(module)
    return trainer


def test_a_nan_loss_skips_its_step_and_leaves_weights_state_and_buffers_untouched(tmp_path, caplog) -> None:
    snaps = Snapshots()
    module = TinyModule(poison={3, 4})
    with caplog.at_level(logging.WARNING, logger="fashion_vl.lit.nonfinite"):
        trainer = fit(module, tmp_path, max_steps=7, callbacks=[snaps])
    assert trainer.global_step == 7  # the skipped steps still count
    before_3, before_5 = snaps.before[3], snaps.before[5]
    assert before_3.keys() == before_5.keys()
    for key in before_3:  # steps 3 and 4 changed nothing: weights, BN statistics, AdamW moments and step
        assert torch.equal(before_3[key], before_5[key]), key
    assert not torch.equal(snaps.before[2]["module.net.body.0.weight"], before_3["module.net.body.0.weight"])
    assert not torch.equal(before_5["module.net.body.0.weight"], snaps.before[6]["module.net.body.0.weight"])
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))  # added by the base class
    assert guard.skipped == 2 and guard.consecutive == 0
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 2.0
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(messages) == 2
    assert "step 3 " in messages[0] and "task toy" in messages[0] and "non-finite loss nan" in messages[0]
    assert "product_id [1024, 1025, 1026" in messages[0]  # step 3 = the 4th batch of 8
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_consecutive_nan_steps_stop_the_run_with_one_line(tmp_path) -> None:
    module = TinyModule(poison=set(range(2, 100)))
    guard = NonFiniteGuard(max_consecutive_skips=3)
    with pytest.raises(NonFiniteTrainingError) as err:
        fit(module, tmp_path, max_steps=20, callbacks=[guard])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("3 optimiser steps in a row had a non-finite loss or gradient norm")
    assert "step 4 " in message and "max_consecutive_skips=3" in message
    assert all(torch.isfinite(t).all() for t in module.state_dict().values())


def test_a_configured_guard_is_used_instead_of_the_default(tmp_path) -> None:
    guard = NonFiniteGuard(max_consecutive_skips=5)
    trainer = fit(TinyModule(), tmp_path, max_steps=2, callbacks=[guard])
    assert [c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)] == [guard]


def test_infinite_gradients_with_a_finite_loss_are_skipped_too(tmp_path) -> None:
    class InfGrad(Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 2:
                next(pl_module.parameters()).grad[0, 0] = float("inf")

    snaps = Snapshots()
    trainer = fit(TinyModule(), tmp_path, max_steps=4, callbacks=[InfGrad(), snaps])
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped == 1
    w = "module.net.body.0.weight"
    assert torch.equal(snaps.before[2][w], snaps.before[3][w])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed-scaler"])
def test_the_guard_holds_under_mixed_precision(tmp_path, precision) -> None:
    """bf16-mixed (no scaler) and 16-mixed with a GradScaler (what CUDA gets; built here on CPU)."""
    kwargs = {}
    if precision == "16-mixed-scaler":
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        kwargs["plugins"] = [MixedPrecision("16-mixed", device="cpu", scaler=scaler)]
    else:
        kwargs["precision"] = precision
    snaps = Snapshots()
    trainer = fit(TinyModule(poison={2}), tmp_path, max_steps=5, callbacks=[snaps], **kwargs)
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped == 1
    for key in snaps.before[2]:
        assert torch.equal(snaps.before[2][key], snaps.before[3][key]), key
    assert not torch.equal(
        snaps.before[3]["module.net.body.0.weight"], snaps.before[4]["module.net.body.0.weight"]
    )


def test_a_checkpoint_with_a_nan_is_refused_and_the_previous_file_kept(tmp_path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    good = {
        "state_dict": {"w": torch.ones(3)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
    }
    io.save_checkpoint(good, path)
    before = path.read_bytes()
    bad = {
        "state_dict": {"w": torch.ones(3)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([0.0, float("nan"), 1.0])}}}],
        # a ModelCheckpoint(mode=min) starts with best_model_score=inf: callback states are not weights
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(float("inf"))}},
    }
    with pytest.raises(NonFiniteCheckpointError, match=r"optimizer_states\[0\]\.state\.0\.exp_avg") as err:
        io.save_checkpoint(bad, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    assert nonfinite_tensors({**good, "callbacks": bad["callbacks"]}) == ([], 2)


def test_sample_ids_name_the_batch() -> None:
    assert (
        batch_sample_ids({"product_id": torch.arange(20)}) == "product_id [0, 1, 2, 3, 4, 5, 6, 7] (+12 more)"
    )
    assert batch_sample_ids({"person_id": ["a.jpg", "b.jpg"]}) == "person_id ['a.jpg', 'b.jpg']"
    assert batch_sample_ids({"image": torch.zeros(1)}).startswith("no id key in the batch")


# --------------------------------------------------------------------------- the pre-training path
PRETRAIN = [
    "experiment=demo_pretrain",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "logger=csv",
    "print_config=false",
]


class PoisonImages(Callback):
    """NaN images in the batches of the given steps (as a corrupt batch would give)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            # uint8 holds no NaN: a float batch passes the encoders' ImageNormalize as it is
            for key in ("image", "image_view1"):
                batch[key] = torch.full(batch[key].shape, float("nan"), device=batch[key].device)


def test_pretraining_names_the_task_and_samples_of_a_skipped_step(tmp_path, synth_dir, monkeypatch, caplog):
    from hydra.core.global_hydra import GlobalHydra

    import fashion_vl.build as build_module
    import fashion_vl.cli.train as train_module
    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [*PRETRAIN, "trainer.max_steps=4", "callbacks.checkpoint_last.every_n_train_steps=1"],
        tmp_path,
        synth_dir,
    )
    original = build_module.trainer_callbacks
    monkeypatch.setattr(build_module, "trainer_callbacks", lambda c: [*original(c), PoisonImages({2})])
    try:
        with caplog.at_level(logging.WARNING, logger="fashion_vl.lit.nonfinite"):
            metrics, objects = train_module.train(cfg)
    finally:
        GlobalHydra.instance().clear()
    task = objects["lit"].objectives.sampler(2)[0][0]
    skipped = [r.getMessage() for r in caplog.records if "optimiser step skipped" in r.getMessage()]
    assert len(skipped) == 1 and f"step 2 (epoch 0, batch 2, task {task})" in skipped[0]
    assert "product_id [" in skipped[0]
    assert metrics["train/skipped_nonfinite"] == 1.0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and nonfinite_tensors(last)[0] == []


@pytest.mark.slow
def test_a_diverging_pretraining_stops_in_one_line_and_never_saves_a_nan(tmp_path, synth_dir, caplog) -> None:
    """The issue's run: lit.optimizer.lr=1e6 sends the loss to 1e12 and then NaN. The guard skips the NaN
    steps, the run stops after 5 in a row with one line, and every checkpoint it wrote (every 3 steps)
    holds only finite tensors."""
    from hydra.core.global_hydra import GlobalHydra

    from fashion_vl.cli.train import train
    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [*PRETRAIN, "lit.optimizer.lr=1e6", "trainer.max_steps=40", "callbacks.checkpoint_last.every_n_train_steps=3",
         "callbacks.nonfinite.max_consecutive_skips=5"],
        tmp_path,
        synth_dir,
    )  # fmt: skip
    try:
        with (
            caplog.at_level(logging.WARNING, logger="fashion_vl.lit.nonfinite"),
            pytest.raises(NonFiniteTrainingError) as err,
        ):
            train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert (
        "\n" not in str(err.value)
        and "5 optimiser steps in a row" in str(err.value)
        and "task " in str(err.value)
    )
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        assert nonfinite_tensors(torch.load(path, weights_only=True))[0] == [], path
