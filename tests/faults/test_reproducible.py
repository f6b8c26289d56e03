"""The same command twice on one machine gives the same metrics and weights: DataLoader workers (their
samples draw from per-sample seeds), the per-step task draw and the global generators are all seeded. The
runs share one process, as the jobs of a Hydra multirun (make demo's fine-tuning sweep) do, so state that
leaked from one job into the next would show here too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.cli.train import train
from tests.conftest import TINY_TRAIN, compose_config
from tests.faults.conftest import assert_same_state, final_state


def run_twice(tmp_path: Path, synth_dir: Path, overrides: list[str], extra=([], [])) -> None:
    results = []
    for name, more in zip(("first", "second"), extra):
        _, objects = train(compose_config("train", [*overrides, *more], tmp_path / name, synth_dir))
        GlobalHydra.instance().clear()
        results.append(
            (json.loads((tmp_path / name / "metrics.json").read_text())["metrics"], final_state(objects))
        )
    (metrics_a, state_a), (metrics_b, state_b) = results
    assert metrics_a == metrics_b
    assert_same_state(state_a, state_b)


def test_the_same_run_with_and_without_workers_is_identical(tmp_path, synth_dir) -> None:
    """Two epochs (validation between them), in one process, without then with DataLoader workers."""
    run_twice(
        tmp_path,
        synth_dir,
        [*TINY_TRAIN, "trainer.max_steps=12", "trainer.max_epochs=-1"],
        [["data.num_workers=0"], ["data.num_workers=2"]],
    )


@pytest.mark.slow
def test_demo_pretraining_twice_is_identical(tmp_path, synth_dir) -> None:
    """make demo's pre-training, shrunk: six tasks drawn per step, two workers, validation."""
    run_twice(
        tmp_path,
        synth_dir,
        ["experiment=demo_pretrain", "trainer.max_steps=12", "trainer.val_check_interval=12",
         "callbacks.checkpoint_last.every_n_train_steps=12", "lit.scheduler.warmup_steps=4",
         "trainer.enable_progress_bar=false", "logger=csv", "print_config=false"],
    )  # fmt: skip


def test_num_threads_pins_torch_threads(tmp_path, synth_dir) -> None:
    """CPU results depend on torch's thread count; num_threads pins it (null keeps torch's default)."""
    import torch

    from fashion_vl.cli._run import set_num_threads

    before = torch.get_num_threads()
    try:
        set_num_threads(compose_config("train", [*TINY_TRAIN, "num_threads=1"], tmp_path, synth_dir))
        assert torch.get_num_threads() == 1
        GlobalHydra.instance().clear()
        torch.set_num_threads(before)
        set_num_threads(compose_config("train", TINY_TRAIN, tmp_path, synth_dir))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
        GlobalHydra.instance().clear()
