"""Config mistakes fail before anything is built, in one line naming the key, the value and what the key
expects: the typed schemas (fashion_vl.config_schema) and the value checks (fashion_vl.cli.preflight).
Fast: the pre-flight on composed configs, and one real ``fvl-train`` process; slow: every mistake through
the console script. Their timings: ``scripts/bench_preflight.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.cli.preflight import preflight
from fashion_vl.config_schema import ConfigError
from tests.conftest import TINY_TRAIN, compose_config

# (override, the message), for fvl-train's demo experiments
MISTAKES = [
    ("trainer.max_steps=abc", "trainer.max_steps=abc: expected an integer (-1 for no limit)"),
    ("trainer.max_steps=0", "trainer.max_steps=0: expected a number of steps > 0 (or -1 for no limit)"),
    ("trainer.max_epochs=many", "trainer.max_epochs=many: expected an integer or null (-1 for no limit)"),
    ("lit.optimizer.lr=abc", "lit.optimizer.lr=abc: expected a number"),
    ("lit.optimizer.lr=-1e-4", "lit.optimizer.lr=-0.0001: expected a learning rate > 0"),
    ("lit.optimizer.betas=[0.9,x]", "lit.optimizer.betas=[0.9, 'x']: expected a list of numbers"),
    ("data.batch_size=-4", "data.batch_size=-4: expected a batch size > 0"),
    ("data.batch_size=8.5", "data.batch_size=8.5: expected an integer"),
    ("data.num_workers=-1", "data.num_workers=-1: expected a number of DataLoader workers >= 0"),
    ("trainer.precision=15", "trainer.precision=15: expected a Lightning precision: 32-true, 16-mixed, bf16-mixed"),
    ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: expected a number of batches >= 1"),
    ("callbacks.checkpoint_last.every_n_train_steps=0", "callbacks.checkpoint_last.every_n_train_steps=0: expected a number of steps > 0"),
    ("ckpt_path=/no/such/last.ckpt", "ckpt_path=/no/such/last.ckpt: expected an existing checkpoint file, null or last"),
    ("model.init_from=/no/such/pretrain.ckpt", "model.init_from=/no/such/pretrain.ckpt: expected an existing checkpoint file or null"),
    ("seed=abc", "seed=abc: expected an integer"),
    ("data.strict_images=maybe", "data.strict_images=maybe: expected true or false"),
    ("lit.scheduler.warmup_steps=-5", "lit.scheduler.warmup_steps=-5: expected a number of steps >= 0"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(("override", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_config_mistake_is_one_line_naming_key_value_and_expectation(
    tmp_path, synth_dir, override, message
):
    cfg = compose_config("train", [*TINY_TRAIN, override], tmp_path, synth_dir)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "fvl-train")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_fvl_eval_takes_no_ckpt_path_last(tmp_path, synth_dir) -> None:
    cfg = compose_config("eval", ["experiment=demo_itc", "ckpt_path=last"], tmp_path, synth_dir)
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: expected an existing checkpoint file, null$"):
        preflight(cfg, "fvl-eval")


def test_a_good_config_passes_and_gets_its_converted_values(tmp_path, synth_dir) -> None:
    cfg = compose_config(
        "train", [*TINY_TRAIN, "trainer.max_steps='7'", "lit.optimizer.lr='1e-3'"], tmp_path, synth_dir
    )
    assert cfg.trainer.max_steps == "7"
    preflight(cfg, "fvl-train")
    assert cfg.trainer.max_steps == 7 and cfg.lit.optimizer.lr == 0.001  # typed, as the schema says


EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_the_preflight(tmp_path, synth_dir, experiment) -> None:
    """Every experiment composes under both entry points (``fvl-train``, ``fvl-eval``) and its training
    config passes the pre-flight check (one composition each: this is also the experiments' compose test)."""
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path, synth_dir)
    assert cfg.experiment_name == experiment
    preflight(cfg, "fvl-train")
    assert compose_config("eval", [f"experiment={experiment}"], tmp_path).experiment_name == experiment


def fvl_train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "fvl-train"
    return subprocess.run(
        [str(script), "experiment=demo_pretrain", f"hydra.run.dir={cwd}/run", *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_fvl_train_reports_a_config_mistake_in_one_line_and_exit_status_2(tmp_path, synth_dir) -> None:
    result = fvl_train(f"paths.data_dir={synth_dir}", "trainer.max_steps=abc", cwd=tmp_path)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert result.returncode == 2
    assert len(errors) == 1 and errors[0].endswith(
        "fvl-train: error: trainer.max_steps=abc: expected an integer (-1 for no limit)"
    )
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was built


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_every_mistake_through_fvl_train(tmp_path, synth_dir, override, message) -> None:
    result = fvl_train(f"paths.data_dir={synth_dir}", override, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert sum(message in line for line in output.splitlines()) == 1
