"""Runs that are killed, requeued, rerun, or find their newest checkpoint damaged.

Slow: ``kill -9`` a tiny run (its own process) inside a save of ``last.ckpt`` and right after one, then
resume: the weights and the AdamW state end bit-identical to an uninterrupted run's, and the killed save's
temporary file is removed. Fast, on the same save and resume path: a damaged ``last.ckpt`` falls back to
``last.prev.ckpt``; a finished run keeps its ``metrics.json``; checkpoints get the run's file permissions.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning import Callback

from fashion_vl.cli.run_files import CheckpointUnreadableError, resume_checkpoint, write_metrics
from fashion_vl.cli.train import train
from fashion_vl.utils.atomic import default_file_mode, previous_path, save_atomic
from tests.conftest import TINY_TRAIN, compose_config
from tests.faults.conftest import assert_same_state, final_state
from tests.faults.runner import KILL_RUN, MARKER

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def start_killable(out: Path, synth_dir: Path, fault: str) -> subprocess.Popen:
    env = {**os.environ, "FVL_FAULT": fault, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.runner", str(out), str(synth_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_at_marker(process: subprocess.Popen, marker: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the fault: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run never reached the fault")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "saved_step"),
    [("during:1", None), ("during:2", 4), ("after:2", 8), ("after:3", 12)],
    ids=["inside-first-save", "inside-second-save", "after-second-save", "after-last-save"],
)
def test_kill_9_then_resume_ends_bit_identical(tmp_path, synth_dir, reference_12, fault, saved_step, caplog):
    reference, reference_metrics = reference_12
    out = tmp_path / "run"
    kill_at_marker(start_killable(out, synth_dir, fault), out / MARKER)
    checkpoints = out / "checkpoints"
    stale = sorted(checkpoints.glob(".last.ckpt.*.tmp"))
    if fault.startswith("during"):
        assert stale, "the killed save should have left its temporary file"
    last = checkpoints / "last.ckpt"
    if saved_step is None:
        assert not last.exists()
    else:
        assert torch.load(last, weights_only=True)["global_step"] == saved_step  # complete and loadable
    assert not (out / "metrics.json").exists()

    (out / MARKER).unlink()
    with caplog.at_level(logging.INFO, logger="fashion_vl"):
        _, resumed = train(compose_config("train", KILL_RUN, out, synth_dir))  # the requeued job
    assert resumed["trainer"].global_step == 12
    assert not list(checkpoints.glob(".*.tmp"))
    assert all(
        any(str(p) in r.getMessage() and "removed" in r.getMessage() for r in caplog.records) for p in stale
    )
    assert_same_state(reference, final_state(resumed))
    written = json.loads((out / "metrics.json").read_text())
    assert written["global_step"] == 12 and written["metrics"]
    if saved_step == 12:  # killed after its last save, before metrics.json: validation recovers the results
        assert "nothing left to train" in caplog.text
        assert written["metrics"]["val/full/rsum"] == reference_metrics["metrics"]["val/full/rsum"]


class Crash(Callback):
    class Error(RuntimeError):
        pass

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise self.Error(f"crashed at step {self.at_step}")


def small_run(out: Path, synth_dir: Path, steps: int, every: int = 2, extra: tuple[str, ...] = ()):
    return compose_config(
        "train",
        [*TINY_TRAIN, f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.deterministic=true",
         f"callbacks.checkpoint_last.every_n_train_steps={every}", "ckpt_path=last", *extra],
        out,
        synth_dir,
    )  # fmt: skip


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, synth_dir, monkeypatch, caplog):
    """A crash after the step-6 save leaves last.ckpt (6) and last.prev.ckpt (4); a last.ckpt truncated
    outside the library (a bad copy, a full quota) and a stale temporary file are met by the requeued
    run, which says so, resumes from step 4 and ends as the uninterrupted run."""
    _, reference = train(small_run(tmp_path / "reference", synth_dir, steps=8))
    reference_state = final_state(reference)
    GlobalHydra.instance().clear()

    out = tmp_path / "crash"
    import fashion_vl.build as train_module

    original = train_module.trainer_callbacks
    monkeypatch.setattr(train_module, "trainer_callbacks", lambda c: [*original(c), Crash(7)])
    with pytest.raises(Crash.Error):
        train(small_run(out, synth_dir, steps=8))
    monkeypatch.setattr(train_module, "trainer_callbacks", original)
    checkpoints = out / "checkpoints"
    last, previous = checkpoints / "last.ckpt", previous_path(checkpoints / "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert torch.load(previous, weights_only=True)["global_step"] == 4
    for path in (last, previous):  # the run folder's file permissions, not mkstemp's 0600
        assert path.stat().st_mode & 0o777 == default_file_mode()

    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # truncated outside the library
    stale = checkpoints / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    GlobalHydra.instance().clear()
    with caplog.at_level(logging.INFO, logger="fashion_vl"):
        _, resumed = train(small_run(out, synth_dir, steps=8))
    assert not stale.exists() and f"removed {stale}" in caplog.text
    assert "cannot be read" in caplog.text and "resuming from the previous checkpoint" in caplog.text
    assert (checkpoints / "last.ckpt.unreadable").is_file()
    assert resumed["trainer"].global_step == 8
    assert_same_state(reference_state, final_state(resumed))


def test_no_readable_checkpoint_is_one_line(tmp_path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"not a zip")
    previous_path(checkpoints / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointUnreadableError) as err:
        resume_checkpoint(checkpoints)
    assert "\n" not in str(err.value) and "last.ckpt" in str(err.value) and "last.prev.ckpt" in str(err.value)
    assert resume_checkpoint(tmp_path / "nothing") is None


def test_keep_previous_links_the_old_version(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"step": 1}, path, keep_previous=True)
    assert not previous_path(path).exists()
    save_atomic({"step": 2}, path, keep_previous=True)
    assert torch.load(path)["step"] == 2 and torch.load(previous_path(path))["step"] == 1
    assert not list(tmp_path.glob(".*"))


def test_rerunning_a_finished_run_keeps_its_results(tmp_path, synth_dir, caplog) -> None:
    out = tmp_path / "run"
    train(small_run(out, synth_dir, steps=4))
    saved = (out / "metrics.json").read_bytes()
    assert json.loads(saved)["metrics"]
    GlobalHydra.instance().clear()
    with caplog.at_level(logging.INFO, logger="fashion_vl"):
        again, objects = train(small_run(out, synth_dir, steps=4))  # the same command (requeue, rerun)
    assert "already finished (step 4" in caplog.text and "trainer" not in objects
    assert again == json.loads(saved)["metrics"]
    assert (out / "metrics.json").read_bytes() == saved


def test_metrics_json_is_never_replaced_by_an_emptier_one(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    assert write_metrics(path, {"metrics": {"val/a": 1.0, "train/b": 2.0}, "best_checkpoint": "x.ckpt"})
    before = path.read_bytes()
    assert not write_metrics(path, {"metrics": {}, "best_checkpoint": ""})
    assert not write_metrics(path, {"metrics": {"val/a": 3.0}})
    assert path.read_bytes() == before
    assert write_metrics(path, {"metrics": {"val/a": 3.0, "train/b": 1.0, "val/c": 0.0}})
    assert json.loads(path.read_text())["metrics"]["val/a"] == 3.0
    assert write_metrics(path, {"metrics": {"x": 1.0}}, keep_richer=False)  # a fresh run in the folder
    assert json.loads(path.read_text())["metrics"] == {"x": 1.0}
    assert path.stat().st_mode & 0o777 == default_file_mode()
    assert not list(tmp_path.glob(".*"))


def test_a_run_with_ckpt_path_last_and_more_steps_trains_on(tmp_path, synth_dir) -> None:
    """Raising max_steps on a finished run is not 'already finished': it resumes and trains on."""
    out = tmp_path / "run"
    train(small_run(out, synth_dir, steps=2))
    GlobalHydra.instance().clear()
    _, objects = train(small_run(out, synth_dir, steps=4))
    assert objects["trainer"].global_step == 4
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 4
