"""The CUDA path (bf16-mixed, ``torch.compile`` of the compile units, fused AdamW): one short train + eval
per model family, on the GPU trainer config, the way ``fvl-train`` / ``fvl-eval`` run it.

On a machine with a GPU: ``pytest -m gpu``. Elsewhere they skip (``RunIf(gpu)``). The same runs on the
CPU trainer (``test_train_then_eval_on_the_cpu_path``, slow: ``make test-all``) check the experiments and
overrides below on any machine; the demo tests of each family are their fast CPU twins.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import compose_config
from tests.helpers.run_if import run_if

QUIET = [
    "data.num_workers=0",
    "trainer.max_steps=3",
    "trainer.max_epochs=-1",
    "++trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "callbacks.checkpoint_last.every_n_train_steps=3",
    "logger=csv",
    "print_config=false",
]
# one experiment per model family, shrunk to seconds (the demos' CPU sizes, smaller images)
FAMILIES = {
    "fashionvil_pretrain": [
        "experiment=demo_pretrain",
        "image_size=64",
        "resize_size=72",
        "data.batch_size=8",
        "data.patch_masking.grid=[4,4]",
        "data.patch_masking.num_masked=3",
        "model.image_tokenizer.architecture.resolution=64",
        "lit.mode=sum",  # every objective each step
    ],
    "fashionvil_finetune": ["experiment=demo_finetune_retrieval", "image_size=56", "resize_size=64"],
    "unifashion_phase1": [
        "experiment=demo_unifashion_phase1",
        "image_size=32",
        "data.batch_size=4",
        "lit.caption_eval.max_images=4",
    ],
    "unifashion_phase2": [
        "experiment=demo_unifashion_phase2",
        "image_size=32",
        "data.batch_size=4",
        "lit.rerank_top_k=5",
    ],
    "unifashion_diffusion": [
        "experiment=demo_unifashion_phase1_diffusion",
        "image_size=32",
        "data.batch_size=4",
        "lit.caption_eval.max_images=0",
        "lit.generation_eval.max_images=2",
        "lit.generation_eval.num_steps=2",
    ],
    "unifashion_tryon": [
        "experiment=demo_unifashion_phase2_tryon",
        "data.batch_size=2",
        "lit.sampling.max_images=2",
    ],
    "csanet_outfits": [
        "experiment=demo_finetune_outfit",
        "image_size=64",
        "resize_size=72",
        "data.batch_size=8",
    ],
    "vqvae": ["experiment=demo_vqvae", "data.batch_size=8", "callbacks.checkpoint_best=null"],
    "autoencoder_kl": [
        "experiment=demo_diffusion_vae",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "callbacks.checkpoint_best=null",
    ],
    "attribute_judge": [
        "experiment=demo_attribute_judge",
        "data.batch_size=8",
        "callbacks.checkpoint_best=null",
    ],
}
VITONHD_FAMILIES = ("unifashion_tryon", "autoencoder_kl")


@pytest.fixture(scope="module")
def vitonhd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fashion_vl.data.synth import generate

    out = tmp_path_factory.mktemp("vitonhd") / "datasets"
    generate(out, size="tiny", seed=0, image_size=64, workers=2, only=["vitonhd"])
    return out


def train_then_eval(family: str, trainer: str, tmp_path: Path, data: Path) -> dict:
    """``fvl-train`` 3 steps of ``family`` on ``trainer`` then ``fvl-eval`` of its last checkpoint (2 test
    batches; families without a test step, the autoencoders, stop after training); checks every loss
    and test metric is finite and returns the training's objects."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from fashion_vl.cli.eval import evaluate
    from fashion_vl.cli.train import train

    cfg = compose_config("train", [*FAMILIES[family], *QUIET, f"trainer={trainer}"], tmp_path / "train", data)
    metrics, objects = train(cfg)
    GlobalHydra.instance().clear()
    assert objects["trainer"].global_step == 3
    losses = {k: v for k, v in metrics.items() if k.startswith("train/") and k.endswith("loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses

    if not is_overridden("test_step", objects["lit"]):  # the autoencoders: validated during fit only
        return objects
    last = tmp_path / "train" / "checkpoints" / "last.ckpt"
    trained_only = ("callbacks.",)  # fvl-eval's config has no training callbacks to override
    eval_overrides = [
        *(o for o in FAMILIES[family] if not o.startswith(trained_only)), f"trainer={trainer}", "data.num_workers=0", "print_config=false",
        "trainer.enable_progress_bar=false", "+trainer.limit_test_batches=2", f"ckpt_path={last}",
    ]  # fmt: skip
    results, _ = evaluate(compose_config("eval", eval_overrides, tmp_path / "eval", data))
    GlobalHydra.instance().clear()
    tested = {k: v for k, v in results.items() if k.startswith("test/")}
    assert tested and all(math.isfinite(v) for v in tested.values()), tested
    return objects


def family_data(family: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("vitonhd_dir" if family in VITONHD_FAMILIES else "synth_dir")


@pytest.mark.gpu
@run_if(gpu=True)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_then_eval_on_the_gpu_path(family: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    objects = train_then_eval(family, "gpu", tmp_path, family_data(family, request))
    trainer, lit = objects["trainer"], objects["lit"]
    assert trainer.precision == "bf16-mixed"
    assert next(lit.net.parameters()).device.type == "cuda"
    fused = [g.get("fused") for g in trainer.optimizers[0].param_groups]
    assert all(fused), "the CUDA path uses fused AdamW"
    torch.cuda.empty_cache()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_then_eval_on_the_cpu_path(family: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The GPU test's runs on the CPU trainer: the experiments and overrides above hold on any machine."""
    objects = train_then_eval(family, "cpu", tmp_path, family_data(family, request))
    assert objects["trainer"].precision == "32-true"
