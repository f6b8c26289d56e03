"""Learning on the synthetic data: the ITC walking skeleton must beat its random init and chance."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.cli.eval import evaluate
from fashion_vl.cli.train import train
from fashion_vl.data.synth import generate
from fashion_vl.data.synth.generate import SizeSpec
from tests.conftest import TINY_TRAIN, compose_config


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_itc_learns_on_synthetic_fashiongen(tmp_path: Path) -> None:
    """Tiny model on 300 synthetic FashionGen products for 4 epochs: text->image R@10 over the
    100-product val gallery (chance 10%) must reach 3x chance and 3x the untrained model."""
    data = tmp_path / "datasets"
    generate(
        data,
        size=SizeSpec((300, 100), (0, 0), (0, 0), (0, 0), (0, 0)),
        image_size=64,
        only=["fashiongen"],
        workers=2,
    )
    overrides = [
        *TINY_TRAIN,
        "data.batch_size=16",
        "trainer.max_epochs=4",
        "lit.optimizer.lr=5e-4",
        "lit.scheduler.warmup_steps=10",
    ]
    train(compose_config("train", overrides, tmp_path / "train", data))
    eval_overrides = [o for o in overrides if not o.startswith(("~callbacks", "logger", "trainer.log_every"))]
    results = {}
    for name, ckpt in (("trained", tmp_path / "train" / "checkpoints" / "last.ckpt"), ("random", None)):
        cfg = compose_config("eval", [*eval_overrides, f"ckpt_path={ckpt or 'null'}"], tmp_path / name, data)
        results[name] = evaluate(cfg)[0]
    chance = 10.0
    trained, random_init = results["trained"]["test/full/t2i_r@10"], results["random"]["test/full/t2i_r@10"]
    print(f"\ntext->image R@10: trained {trained:.1f}, random init {random_init:.1f}, chance {chance:.1f}")
    assert trained >= 3 * chance and trained >= 3 * random_init
