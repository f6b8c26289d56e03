"""Shared fixtures: data folders (hand-written and synthetic) and composed configs shrunk to CPU size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from fashion_vl.build import compose
from tests.helpers.fixture_data import make_fixture_data

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one torch thread each (and in the processes
    # the tests start), so the workers do not fight over the cores
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture
def fixture_data(tmp_path: Path) -> Path:
    """The hand-written data folder (reference formats), with images, in a writable copy."""
    return make_fixture_data(tmp_path / "datasets")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic data (all five datasets + tokenizer), generated once per session. Read-only."""
    from fashion_vl.data.synth import generate

    out = tmp_path_factory.mktemp("synth") / "datasets"
    generate(out, size="tiny", seed=0, image_size=64, workers=2)
    return out


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path, data_dir: Path | None = None
) -> DictConfig:
    """Compose a config as the CLI would (:func:`fashion_vl.build.compose`), with paths pointing into
    ``output_dir``."""
    return compose(config_name, overrides, output_dir=output_dir, data_dir=data_dir)


# Shrinks the demo experiment to a few seconds on CPU.
TINY_TRAIN = [
    "experiment=demo_itc",
    "image_size=56",
    "resize_size=64",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "data.max_text_length=24",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "logger=csv",
    "print_config=false",
]


@pytest.fixture
def cfg_train(tmp_path: Path, synth_dir: Path) -> DictConfig:
    cfg = compose_config("train", TINY_TRAIN, tmp_path, synth_dir)
    yield cfg
    GlobalHydra.instance().clear()
