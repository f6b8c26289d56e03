"""Every config group option composes and instantiates; experiments compose with the root configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import open_dict

from fashion_vl.build import instantiate_list, trainer_callbacks
from tests.conftest import TINY_TRAIN, compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


# try-on data (VITON-HD, Dress Code) has its own layout and tests (tests/test_tryon_data.py)
TRYON_DATA = {"vitonhd", "vitonhd_synth", "dresscode"}


@pytest.mark.parametrize("data", [d for d in options("data") if d not in TRYON_DATA])
def test_data_configs_instantiate_and_set_up(data: str, tmp_path: Path, synth_dir: Path) -> None:
    cfg = compose_config("train", [*TINY_TRAIN, f"data={data}"], tmp_path, synth_dir)
    dm = instantiate(cfg.data, _convert_="partial")
    assert isinstance(dm, LightningDataModule)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    images = [v for k, v in batch.items() if k.endswith("image") and torch.is_tensor(v)]
    assert images and all(img.shape[1:] == (3, 56, 56) for img in images)
    assert next(iter(dm.val_dataloader() or [None])) is not None or data == "polyvore"


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_build_offline(model: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={model}"], tmp_path)
    with open_dict(cfg):
        for node in (cfg.model, cfg.model.get("image_encoder"), cfg.model.get("text_encoder")):
            if node is not None and "pretrained" in node:
                node.pretrained = False
    if model == "fashionvil":  # real size: check the architecture without paying for the weights' init
        assert (
            cfg.model.image_encoder.name == "resnet50.tv_in1k"
            and cfg.model.text_encoder.name == "bert-base-uncased"
        )
        return
    if model == "unifashion":  # EVA ViT-g + Vicuna-7B: check the names (unifashion_tiny is built)
        assert cfg.model.image_encoder.name == "eva_giant_patch14_clip_224.laion400m"
        assert (
            cfg.model.qformer.name == "Salesforce/blip2-itm-vit-g"
            and cfg.model.llm.name == "lmsys/vicuna-7b-v1.1"
        )
        return
    if model == "unifashion_tryon":  # Stable Diffusion v1.5 + EVA ViT-g (unifashion_tryon_tiny is built)
        assert cfg.model.branch.name == "runwayml/stable-diffusion-v1-5"
        assert cfg.model.query_encoder.unifashion.image_encoder.name == "eva_giant_patch14_clip_224.laion400m"
        return
    if cfg.model._target_.startswith("fashion_vl.models.openclip.") and model != "openclip_tiny":
        # hub models (tests/test_openclip.py checks that they fail at once offline); the tiny one is built
        assert cfg.model.name and (model == "openclip" or "pretrained" in cfg.model)
        return
    if model in ("vq_tokenizer", "vq_tokenizer_ckpt"):  # need a weight file; tests/test_vqvae.py covers them
        assert cfg.model._target_.startswith("fashion_vl.models.vqvae.VQTokenizer.from_")
        return
    net = instantiate(cfg.model, _convert_="all")
    if "text_encoder" in cfg.model:
        assert net.vocab_size == cfg.model.text_encoder.vocab_size


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_instantiate(trainer: str, tmp_path: Path) -> None:
    cfg = compose_config(
        "train", [f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.precision=32-true"], tmp_path
    )
    assert cfg.trainer.use_distributed_sampler is False  # our samplers shard themselves
    if "ddp" in trainer:
        assert cfg.trainer.strategy.find_unused_parameters is True
        return  # building a DDP trainer here would start processes
    assert isinstance(instantiate(cfg.trainer), Trainer)


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_configs_instantiate(callbacks: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"callbacks={callbacks}"], tmp_path)
    assert all(isinstance(c, Callback) for c in instantiate_list(cfg.callbacks, "callbacks"))


@pytest.mark.parametrize("bar", [True, False])
def test_trainer_enable_progress_bar_false_drops_the_bar_callback(bar: bool, tmp_path: Path) -> None:
    """``trainer.enable_progress_bar=false`` alone must build a Trainer: Lightning refuses one with a
    progress-bar callback then, and the default callbacks group holds one."""
    cfg = compose_config("train", [f"trainer.enable_progress_bar={bar}"], tmp_path)
    callbacks = trainer_callbacks(cfg)
    assert any(isinstance(c, ProgressBar) for c in callbacks) is bar
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert any(isinstance(c, ProgressBar) for c in trainer.callbacks) is bar


@pytest.mark.parametrize("logger", [o for o in options("logger") if o not in ("wandb", "many")])
def test_logger_configs_instantiate(logger: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"logger={logger}"], tmp_path)
    assert all(isinstance(lg, Logger) for lg in instantiate_list(cfg.logger, "logger"))


# Every experiment composes under both roots and passes the pre-flight check:
# tests/faults/test_bad_config.py::test_every_experiment_passes_the_preflight.


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_configs_compose(debug: str, tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=demo_itc", f"debug={debug}"], tmp_path)
    assert cfg.data.num_workers == 0


def test_hparams_search_is_a_multirun(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=demo_itc", "hparams_search=lr_sweep"], tmp_path)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and "lit.optimizer.lr" in cfg.hydra.sweeper.params


def test_cli_group_override_beats_experiment(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=demo_itc", "trainer=ddp_cpu"], tmp_path)
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.devices == 2


@pytest.mark.parametrize("experiment", ["pretrain_fashionall", "finetune_openclip_fashionall"])
def test_the_attribute_vocabulary_size_is_the_python_constant(experiment: str, tmp_path: Path) -> None:
    """The real data's pseudo-attribute vocabulary is written once in config (conf/data/fashionall.yaml) and
    once in code (``NUM_PSEUDO_ATTRIBUTES``); every PAC head reads the data config's number."""
    from fashion_vl.data.formats.products import NUM_PSEUDO_ATTRIBUTES

    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.data.num_attributes == NUM_PSEUDO_ATTRIBUTES
    assert cfg.model.heads.pac.num_classes == NUM_PSEUDO_ATTRIBUTES
