"""EMA of the weights (``fashion_vl.lit.callbacks.EMA``, Lightning's WeightAveraging): the module ends
fit with the EMA of its trajectory, the config instantiates, checkpoints keep the average on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from fashion_vl.build import compose
from fashion_vl.lit.callbacks import EMA

DECAY = 0.5


class Tiny(LightningModule):
    """A linear map, a frozen one, and an integer buffer like a text encoder's position ids."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Linear(3, 2).requires_grad_(False)
        self.register_buffer("position_ids", torch.arange(77).unsqueeze(0))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x) + 0 * self.frozen(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.linear(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.linear.parameters(), lr=0.3)


class Trajectory(Callback):
    """The raw weights after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.linear.state_dict().items()})


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)  # one step per epoch: resuming is exact


def _trainer(tmp_path: Path, max_steps: int, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=-1, callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip


def _expected_ema(weights: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    ema = dict(weights[0])  # the first update copies
    for w in weights[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
    return ema


def test_fit_ends_with_the_ema_of_the_trajectory(tmp_path: Path) -> None:
    model, trajectory = Tiny(), Trajectory()
    frozen_before = model.frozen.weight.clone()
    trainer = _trainer(tmp_path, 3, [EMA(decay=DECAY), trajectory])
    trainer.fit(model, _loader())
    assert len(trajectory.weights) == 3
    assert not torch.allclose(trajectory.weights[0]["weight"], trajectory.weights[2]["weight"])
    expected = _expected_ema(trajectory.weights, DECAY)
    for name, value in model.linear.state_dict().items():
        torch.testing.assert_close(value, expected[name])
        assert not torch.allclose(value, trajectory.weights[-1][name])  # not the raw final weights
    torch.testing.assert_close(model.frozen.weight, frozen_before)
    # a checkpoint written after fit (the final last.ckpt): the average to load, the raw weights to resume
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    end = torch.load(tmp_path / "end.ckpt", weights_only=True)
    torch.testing.assert_close(end["state_dict"]["linear.weight"], expected["weight"])
    torch.testing.assert_close(end["current_model_state"]["linear.weight"], trajectory.weights[-1]["weight"])
    assert torch.equal(model.position_ids, torch.arange(77).unsqueeze(0))  # not truncated by the EMA


def test_update_interval_and_start_step(tmp_path: Path) -> None:
    model, trajectory = Tiny(), Trajectory()
    ema = EMA(decay=DECAY, update_every_n_steps=2, update_starting_at_step=1)
    _trainer(tmp_path, 5, [ema, trajectory]).fit(model, _loader())
    expected = _expected_ema([trajectory.weights[1], trajectory.weights[3]], DECAY)  # steps 1 and 3
    for name, value in model.linear.state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_config_instantiates() -> None:
    cfg = compose("train", ["callbacks=[default,ema]", "callbacks.ema.decay=0.99"])
    plain = compose("train")
    assert "ema" not in plain.callbacks  # opt-in
    assert "checkpoint_last" in cfg.callbacks  # next to the default callbacks, not instead
    callback = instantiate(cfg.callbacks.ema)
    assert isinstance(callback, EMA) and callback.decay == 0.99
    assert callback.update_every_n_steps == 1 and callback.update_starting_at_step == 0


def test_checkpoint_keeps_the_average_on_resume(tmp_path: Path) -> None:
    full, trajectory = Tiny(), Trajectory()
    _trainer(tmp_path / "full", 4, [EMA(decay=DECAY), trajectory]).fit(full, _loader())

    checkpoint_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path / "first", 2, [EMA(decay=DECAY), checkpoint_cb]).fit(Tiny(), _loader())
    path = tmp_path / "ckpt" / "epoch=1-step=2.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    # state_dict: the average (what eval loads); current_model_state: the raw weights
    average = _expected_ema(trajectory.weights[:2], DECAY)
    torch.testing.assert_close(checkpoint["state_dict"]["linear.weight"], average["weight"])
    torch.testing.assert_close(
        checkpoint["current_model_state"]["linear.weight"], trajectory.weights[1]["weight"]
    )
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 2

    # evaluating a checkpoint with the same callbacks after a fit (train's test=true): the average
    trainer = _trainer(tmp_path / "eval", 2, [EMA(decay=DECAY)])
    trainer.fit(Tiny(), _loader())
    evaluated = Tiny()
    trainer.validate(evaluated, _loader(), ckpt_path=str(path), verbose=False)
    torch.testing.assert_close(evaluated.linear.weight, average["weight"])

    resumed = Tiny()
    _trainer(tmp_path / "resumed", 4, [EMA(decay=DECAY)]).fit(resumed, _loader(), ckpt_path=str(path))
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[name])
    torch.testing.assert_close(resumed.linear.weight, _expected_ema(trajectory.weights, DECAY)["weight"])


@pytest.mark.parametrize("bad", [0, -1])
def test_rejects_bad_interval(bad: int) -> None:
    with pytest.raises(ValueError):
        EMA(update_every_n_steps=bad)
