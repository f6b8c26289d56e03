"""The console scripts as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_vl.cli.data import main as fvl_data
from fashion_vl.data.check import check_data_dir


def script(name: str) -> str:
    """A console script of the environment running the tests (which may not be on PATH)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed next to {sys.executable}: pip install -e ."
    return str(path)


def run(*args: str, cwd: Path, timeout: int = 600, full_error: bool = True) -> subprocess.CompletedProcess:
    """``full_error``: HYDRA_FULL_ERROR=1 (tracebacks); False shows what a user sees (one error line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FVL_ROOT", "HYDRA_FULL_ERROR")}
    env.update(PYTHONUNBUFFERED="1", **({"HYDRA_FULL_ERROR": "1"} if full_error else {}))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_synth_then_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "datasets"
    assert (
        fvl_data(
            [
                "synth",
                "--out",
                str(out),
                "--size",
                "tiny",
                "--seed",
                "3",
                "--image-size",
                "48",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "synthetic_manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["counts"]["FashionGen/train"] == 48
    assert fvl_data(["check", str(out)]) == 0
    # same size and seed: nothing to do; an existing folder is never overwritten silently
    assert (
        fvl_data(
            [
                "synth",
                "--out",
                str(out),
                "--size",
                "tiny",
                "--seed",
                "3",
                "--image-size",
                "48",
                "--skip-existing",
            ]
        )
        == 0
    )


def test_check_finds_planted_problems(fixture_data: Path, capsys) -> None:
    (fixture_data / "FashionGen" / "train" / "100124_0.png").unlink()
    (fixture_data / "BigFACAD" / "images" / "b02" / "2232_0.jpg").write_bytes(b"garbage")
    val = json.loads((fixture_data / "FashionGen" / "val_info.json").read_text())
    val[0]["id"] = 100123  # a train product in val
    val[1]["attributes_id"] = [2232]  # out of range
    (fixture_data / "FashionGen" / "val_info.json").write_text(json.dumps(val))
    reports = {(r.dataset, r.split): r for r in check_data_dir(fixture_data, workers=2)}
    assert reports["FashionGen", "train"].missing == 1
    assert reports["BigFACAD", "train"].corrupt == 1
    problems = " ".join(reports["FashionGen", "val"].problems)
    assert "also in split 'train'" in problems and ">= 2232" in problems
    assert reports["FashionIQ", "dress.val"].ok and reports["PolyvoreOutfits", "ocir_disjoint_test"].ok
    assert fvl_data(["check", str(fixture_data)]) == 1
    assert "100124_0.png" in capsys.readouterr().err


def test_check_an_empty_folder_fails(tmp_path: Path) -> None:
    assert fvl_data(["check", str(tmp_path)]) == 1
    assert fvl_data(["check", str(tmp_path / "nope")]) == 2


def test_a_multirun_job_rewrites_argv_to_itself_for_its_ddp_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast counterpart of the DDP multirun below: under ``-m``, the argv Lightning re-runs for ranks > 0
    becomes this job's own overrides, and ``hydra.run.dir`` its output folder; outside a multirun, nothing
    changes."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    from fashion_vl.build import compose
    from fashion_vl.cli._run import prepare_ddp_relaunch

    sweep_argv = ["fvl-train", "-m", "experiment=demo_itc", "seed=1,2", "trainer=ddp_cpu"]
    job_overrides = ["experiment=demo_itc", "seed=2", "trainer=ddp_cpu"]
    cfg = compose("train", job_overrides, output_dir=tmp_path / "multiruns" / "sweep" / "1")
    monkeypatch.setattr(sys, "argv", list(sweep_argv))
    prepare_ddp_relaunch()  # a single run (mode RUN): argv stays
    assert sys.argv == sweep_argv
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    try:
        prepare_ddp_relaunch()
        assert sys.argv == ["fvl-train", *job_overrides]
        assert HydraConfig.get().run.dir == str(tmp_path / "multiruns" / "sweep" / "1")
    finally:
        HydraConfig.instance().cfg = None  # no multirun config left behind for the next test


@pytest.mark.slow  # ~90 s (two jobs of two spawned ranks); the argv rewrite above is the fast counterpart
def test_multirun_with_ddp_completes_every_job(tmp_path: Path, synth_dir: Path) -> None:
    """Hydra -m plus Lightning DDP: each job's child rank must re-run that job, not the sweep."""
    result = run(
        script("fvl-train"), "-m", "experiment=demo_itc", "seed=1,2", "trainer=ddp_cpu", "trainer.max_steps=5",
        f"paths.data_dir={synth_dir}", "run_name=sweep", "image_size=56",
        "resize_size=64", "data.batch_size=4", "data.num_workers=0", "~callbacks.rich_progress_bar",
        "print_config=false", "logger=csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "logs" / "train" / "multiruns" / "sweep"  # default paths: under the working directory
    for job, seed in ((0, 1), (1, 2)):
        ckpt = torch.load(sweep / str(job) / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 5 and ckpt["fvl_config"]["seed"] == seed
        assert ckpt["fvl_config"]["trainer"]["devices"] == 2
    assert sorted(p.name for p in (tmp_path / "logs" / "train" / "multiruns").iterdir()) == ["sweep"]
    assert (
        result.stdout.count("GLOBAL_RANK: 1, MEMBER: 2/2")
        + result.stderr.count("GLOBAL_RANK: 1, MEMBER: 2/2")
        == 2
    )


def test_fvl_train_reports_a_missing_data_folder_clearly(tmp_path: Path) -> None:
    result = run(
        script("fvl-train"),
        "experiment=demo_itc",
        f"paths.data_dir={tmp_path}/none",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
        full_error=False,
    )
    assert result.returncode != 0
    assert (
        f"fvl-train: error: paths.data_dir={tmp_path}/none: expected an existing folder" in result.stderr
        and "fvl-data synth" in result.stderr
    )


def test_module_entry_points(tmp_path: Path) -> None:
    for module in ("fashion_vl.cli.train", "fashion_vl.cli.eval"):
        result = run(sys.executable, "-m", module, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "experiment" in result.stdout


def test_a_run_refuses_a_data_folder_that_fails_the_preflight_check(
    tmp_path: Path, fixture_data: Path
) -> None:
    """A product id in both FashionGen splits is caught before anything is built, the file named."""
    from fashion_vl.data.check import DataCheckError, preflight_check

    assert preflight_check(fixture_data)  # the hand-written folder passes
    train = json.loads((fixture_data / "FashionGen" / "train_info.json").read_text())
    val = json.loads((fixture_data / "FashionGen" / "val_info.json").read_text())
    val[0]["id"] = train[0]["id"]
    (fixture_data / "FashionGen" / "val_info.json").write_text(json.dumps(val))
    with pytest.raises(
        DataCheckError, match=r"(?s)FashionGen/val: .*also in split 'train'.*data_check=false"
    ):
        preflight_check(fixture_data)
    result = run(
        script("fvl-train"),
        "experiment=demo_itc",
        f"paths.data_dir={fixture_data}",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "failed the pre-flight check" in result.stderr and "FashionGen/val" in result.stderr


def test_multirun_over_pretraining_task_weights(tmp_path: Path, synth_dir: Path) -> None:
    """`-m lit.task_weights.mpfc=0,100`: one job never draws MPFC, the other draws almost only MPFC."""
    result = run(
        script("fvl-train"), "-m", "experiment=demo_pretrain", "lit.task_weights.mpfc=0,100",
        "trainer.max_steps=4", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
        f"paths.data_dir={synth_dir}", "run_name=weights", "data.batch_size=4", "data.num_workers=0",
        "~callbacks.rich_progress_bar", "print_config=false", "logger=csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "logs" / "train" / "multiruns" / "weights"
    mpfc_logged = []
    for job, weight in ((0, 0), (1, 100)):
        ckpt = torch.load(sweep / str(job) / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 4 and ckpt["fvl_config"]["lit"]["task_weights"]["mpfc"] == weight
        (metrics_csv,) = (sweep / str(job) / "csv").rglob("metrics.csv")
        header = metrics_csv.read_text().splitlines()[0].split(",")
        mpfc_logged.append("train/mpfc_loss" in header)
    assert mpfc_logged == [False, True]
