"""A full disk during a save: one line naming the file and the free space, the previous file kept, and a
run that resumes bit-exact from it.

Fast: writes that raise ENOSPC (monkeypatched) in a checkpoint save, a training run, ``metrics.json`` and
``fvl-data prepare``. Slow: a real 1.5-checkpoint tmpfs (mounted in a user namespace where the platform
allows it, skipped otherwise) under ``fvl-train``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import fashion_vl.utils.atomic as atomic
from fashion_vl.cli.data import main as fvl_data
from fashion_vl.cli.run_files import write_metrics
from fashion_vl.cli.train import train
from fashion_vl.lit.checkpoint_io import AtomicCheckpointIO
from fashion_vl.utils.atomic import DiskFullError, disk_full_cause
from tests.conftest import compose_config
from tests.faults.conftest import assert_same_state, final_state
from tests.faults.runner import KILL_RUN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


class FullDisk:
    """A file object whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def fill_disk(monkeypatch, room: int = 1000, after_saves: int = 0) -> None:
    """Saves through :func:`fashion_vl.utils.atomic.atomic_write` get ``room`` bytes, from the
    ``after_saves + 1``-th save on."""
    real = os.fdopen
    seen = {"n": 0}

    def fdopen(fd, *args, **kwargs):
        seen["n"] += 1
        f = real(fd, *args, **kwargs)
        return FullDisk(f, room) if seen["n"] > after_saves else f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def assert_one_line(err: BaseException, path: Path) -> None:
    message = str(err)
    assert "\n" not in message
    assert f"no space left on device writing {path}" in message and "free there" in message


def test_torch_save_hides_enospc_and_we_find_it() -> None:
    try:
        torch.save({"w": torch.zeros(10_000)}, FullDisk(open(os.devnull, "wb"), 500))  # noqa: SIM115
    except RuntimeError as err:  # "[enforce fail at inline_container.cc] ... unexpected pos"
        assert disk_full_cause(err).errno == errno.ENOSPC
    else:
        raise AssertionError("torch.save should have failed")


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    fill_disk(monkeypatch)
    with pytest.raises(DiskFullError) as err:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}}, path)
    assert_one_line(err.value, path)
    assert "previous file, if any, is kept" in str(err.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file, no .prev yet


def test_metrics_json_on_a_full_disk_is_one_line(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_metrics(path, {"metrics": {"a": 1.0}})
    fill_disk(monkeypatch, room=10)
    with pytest.raises(DiskFullError) as err:
        write_metrics(path, {"metrics": {"a": 2.0, "b": 3.0}})
    assert_one_line(err.value, path)
    assert json.loads(path.read_text()) == {"metrics": {"a": 1.0}}


def test_a_run_that_fills_the_disk_stops_in_one_line_and_resumes_bit_exact(
    tmp_path, synth_dir, monkeypatch, reference_12
) -> None:
    """last.ckpt at step 4 fits; the step-8 save does not. The run stops naming the file; the step-4
    checkpoint is intact, and resuming from it (the disk freed) ends as the uninterrupted run."""
    out = tmp_path / "run"
    run = [*KILL_RUN, "~callbacks.checkpoint_best"]  # last.ckpt is the only file saved
    fill_disk(monkeypatch, after_saves=1)
    with pytest.raises(DiskFullError) as err:
        train(compose_config("train", run, out, synth_dir))
    last = out / "checkpoints" / "last.ckpt"
    assert_one_line(err.value, last)
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.undo()
    GlobalHydra.instance().clear()
    _, resumed = train(compose_config("train", run, out, synth_dir))
    assert resumed["trainer"].global_step == 12
    assert_same_state(reference_12[0], final_state(resumed))


def test_fvl_data_prepare_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    from tests.test_prepare_products import BIGFACAD_ROWS

    raw = tmp_path / "raw"
    for i, row in enumerate(BIGFACAD_ROWS):
        for name in row["images"]:
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 28), (60 * i, 10, 200)).save(raw / name, format="JPEG")
    (raw / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BIGFACAD_ROWS))
    out = tmp_path / "datasets"

    def no_space(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("fashion_vl.data.prepare._files.shutil.copyfile", no_space)
    status = fvl_data(["prepare", "bigfacad", "--raw", str(raw / "products.jsonl"), "--out", str(out)])
    err = capsys.readouterr()
    lines = [line for line in (err.out + err.err).splitlines() if "no space left" in line]
    assert status == 1 and len(lines) == 1
    assert f"fvl-data prepare: no space left on device writing {out}" in lines[0] and "free there" in lines[0]
    assert not (out / "BigFACAD").exists() and not list(out.glob(".BigFACAD*"))  # staging removed


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespace with tmpfs mounts here")
def test_fvl_train_on_a_real_full_tmpfs(tmp_path, synth_dir, reference_12) -> None:
    """fvl-train writing its run folder to a tmpfs with room for 1.5 checkpoints: the second save of
    last.ckpt hits ENOSPC; the command ends with one error line, exit status 1, and the first checkpoint,
    copied off the full disk, resumes to the uninterrupted run's weights."""
    probe = tmp_path / "probe"
    train(
        compose_config(
            "train", [*KILL_RUN, "trainer.max_steps=4", "~callbacks.checkpoint_best"], probe, synth_dir
        )
    )
    size = (probe / "checkpoints" / "last.ckpt").stat().st_size
    GlobalHydra.instance().clear()
    mount = tmp_path / "small_disk"
    mount.mkdir()
    overrides = [o for o in KILL_RUN if not o.startswith(("experiment=", "ckpt_path"))]
    fvl_train = Path(sys.executable).parent / "fvl-train"
    command = " ".join(
        [
            f"mount -t tmpfs -o size={int(size * 1.5) // 1024}k tmpfs {mount} &&",
            f"{fvl_train} experiment=demo_itc hydra.run.dir={mount}/run paths.data_dir={synth_dir}",
            "'~callbacks.checkpoint_best'",
            *(f"'{o}'" for o in overrides),
            f"&& echo unexpected; cp -r {mount}/run {tmp_path}/copied",
        ]
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=1200
    )
    output = result.stdout + result.stderr
    assert "unexpected" not in result.stdout
    errors = [line for line in output.splitlines() if "no space left on device" in line]
    assert len(errors) == 1 and "fvl-train: error:" in errors[0], output[-3000:]
    assert f"{mount}/run/checkpoints/last.ckpt" in errors[0] and "free there" in errors[0]
    assert "Traceback" not in output
    copied = tmp_path / "copied"
    assert torch.load(copied / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    _, resumed = train(compose_config("train", [*KILL_RUN, "~callbacks.checkpoint_best"], copied, synth_dir))
    assert resumed["trainer"].global_step == 12
    assert_same_state(reference_12[0], final_state(resumed))
