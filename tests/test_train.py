"""End to end on the tiny synthetic data: train, checkpoint, resume exactly, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning import Callback
from omegaconf import DictConfig, open_dict

from fashion_vl.cli.eval import evaluate
from fashion_vl.cli.train import train
from tests.conftest import TINY_TRAIN, compose_config


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_train_writes_checkpoints_that_load_safely(cfg_train: DictConfig) -> None:
    with open_dict(cfg_train):
        cfg_train.trainer.max_steps = 6  # one epoch: validation runs at its end
    metrics, _ = train(cfg_train)
    assert "train/itc_loss" in metrics and "val/full/rsum" in metrics and "val/sample100/rsum" in metrics
    last = Path(cfg_train.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # no pickled objects in our checkpoints
    assert checkpoint["global_step"] == 6
    assert checkpoint["fvl_config"]["experiment_name"] == "demo_itc"
    assert (Path(cfg_train.paths.output_dir) / "csv" / "metrics.csv").is_file()


def test_last_checkpoint_is_the_final_state(cfg_train: DictConfig) -> None:
    """With a step interval that does not divide the run, last.ckpt must still be the final step."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_steps = 9
        cfg_train.trainer.max_epochs = -1
        cfg_train.callbacks.checkpoint_last.every_n_train_steps = 4
    _, objects = train(cfg_train)
    last = torch.load(Path(cfg_train.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == objects["trainer"].global_step == 9


class Kill(Callback):
    """Simulates a crash: raises once the trainer has done ``at_step`` optimisation steps."""

    class Crash(RuntimeError):
        pass

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise self.Crash(f"killed at step {self.at_step}")


def resume_config(output_dir: Path, synth_dir: Path, workers: int) -> DictConfig:
    cfg = compose_config(
        "train",
        [*TINY_TRAIN, "trainer.max_steps=12", "trainer.max_epochs=-1", "trainer.deterministic=true",
         "callbacks.checkpoint_last.every_n_train_steps=4", f"data.num_workers={workers}", "ckpt_path=last"],
        output_dir,
        synth_dir,
    )  # fmt: skip
    return cfg


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_mid_epoch_to_the_same_weights(
    tmp_path: Path, synth_dir: Path, workers: int, monkeypatch
) -> None:
    """48 products / batch 8 = 6 steps an epoch. The crash at step 9 comes after the mid-epoch
    checkpoint at step 8; the resumed run must end like the uninterrupted one: step 12, same weights."""
    _, full = train(resume_config(tmp_path / "full", synth_dir, workers))
    reference = {k: v.clone() for k, v in full["lit"].state_dict().items()}
    assert full["trainer"].global_step == 12

    cfg = resume_config(tmp_path / "crash", synth_dir, workers)
    import fashion_vl.build as build_module

    original = build_module.trainer_callbacks
    monkeypatch.setattr(build_module, "trainer_callbacks", lambda c: [*original(c), Kill(9)])
    with pytest.raises(Kill.Crash):
        train(cfg)
    monkeypatch.setattr(build_module, "trainer_callbacks", original)
    assert torch.load(tmp_path / "crash" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8

    _, resumed = train(resume_config(tmp_path / "crash", synth_dir, workers))  # ckpt_path=last
    assert resumed["trainer"].global_step == 12
    state = resumed["lit"].state_dict()
    for key, value in reference.items():
        assert torch.equal(value, state[key]), f"{key} differs after resume"


def test_resumed_run_keeps_its_csv_history(tmp_path: Path, synth_dir: Path) -> None:
    import csv

    for max_steps in (6, 12):  # the second call resumes the first from last.ckpt
        cfg = resume_config(tmp_path / "run", synth_dir, 0)
        with open_dict(cfg):
            cfg.trainer.max_steps = max_steps
        train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    steps = {int(r["step"]) for r in rows if r.get("train/itc_loss")}
    assert min(steps) < 5 and max(steps) >= 10  # both attempts are in the file


def test_resume_changes_nothing_when_there_is_no_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg = resume_config(tmp_path / "fresh", synth_dir, 0)
    with open_dict(cfg):
        cfg.trainer.max_steps = 2
    _, objects = train(cfg)  # ckpt_path=last with no last.ckpt: starts fresh
    assert objects["trainer"].global_step == 2


def test_eval_writes_metrics_json_for_checkpoint_and_random_init(tmp_path: Path, synth_dir: Path) -> None:
    cfg = compose_config("train", [*TINY_TRAIN, "trainer.max_steps=6"], tmp_path / "train", synth_dir)
    train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    eval_overrides = [
        o for o in TINY_TRAIN if not o.startswith(("~callbacks", "logger", "trainer.log_every"))
    ]
    for name, ckpt_path in (("trained", str(ckpt)), ("random", "null")):
        cfg = compose_config("eval", [*eval_overrides, f"ckpt_path={ckpt_path}"], tmp_path / name, synth_dir)
        metrics, _ = evaluate(cfg)
        payload = json.loads((tmp_path / name / "metrics.json").read_text())
        assert payload["metrics"] == metrics and 0.0 <= metrics["test/full/t2i_r@10"] <= 100.0
        assert set(metrics) >= {
            "test/full/i2t_r@1",
            "test/full/t2i_r@10",
            "test/full/rsum",
            "test/sample100/rsum",
        }


def test_eval_refuses_a_missing_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg = compose_config("eval", ["experiment=demo_itc", "ckpt_path=/no/such.ckpt"], tmp_path, synth_dir)
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        evaluate(cfg)


def test_tokenizer_larger_than_vocab_is_a_clear_error(tmp_path: Path, synth_dir: Path) -> None:
    cfg = compose_config("train", [*TINY_TRAIN, "model.text_encoder.vocab_size=50"], tmp_path, synth_dir)
    with pytest.raises(ValueError, match=r"model\.text_encoder\.vocab_size is 50"):
        train(cfg)
