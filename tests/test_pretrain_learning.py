"""Learning test of the six-task pre-training (demo_pretrain on synthetic data, CPU, time-boxed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.cli.train import train
from fashion_vl.data.formats import FashionGenSource
from fashion_vl.data.synth import generate
from fashion_vl.data.synth.generate import SizeSpec
from tests.conftest import compose_config

TASKS = ("itc", "itm", "mlm", "mpfc", "mvc", "pac")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def chance_t2i_r10(data: Path) -> float:
    """Expected full-gallery text->image R@10 of a random ranking (several images per product)."""
    products = FashionGenSource(data, "val").read().products
    gallery = sum(len(p.images) for p in products)
    miss = [math.comb(gallery - len(p.images), 10) / math.comb(gallery, 10) for p in products]
    return 100 * (1 - sum(miss) / len(miss))


# slow: minutes on 2 cores (it hung once at load ~6 in a DataLoader worker and was killed at 823 s; not
# reproduced). Fast counterpart on the same path: test_pretrain_objectives.py::test_every_objective_trains_in_sum_mode
@pytest.mark.slow
def test_demo_pretrain_learns_every_task(tmp_path: Path) -> None:
    data = tmp_path / "datasets"
    size = SizeSpec(
        fashiongen=(300, 100), bigfacad=(150, 20), fashion200k=(40, 10), polyvore=(60, 10), fashioniq=(0, 0)
    )
    generate(
        data, size=size, image_size=128, only=["fashiongen", "bigfacad", "fashion200k", "polyvore"], workers=2
    )
    overrides = ["experiment=demo_pretrain", "data.num_workers=1", "~callbacks.rich_progress_bar", "logger=csv",
                 "trainer.enable_progress_bar=false", "print_config=false"]  # fmt: skip
    metrics, _ = train(compose_config("train", overrides, tmp_path / "run", data))
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    chance = chance_t2i_r10(data)
    r10 = metrics["val/full/t2i_r@10"]
    print(
        f"\nzero-shot full-gallery text->image R@10 on synthetic FashionGen val: {r10:.1f} (chance {chance:.1f})"
    )
    went_down = {}
    for task in TASKS:
        values = [float(r[f"train/{task}_loss"]) for r in rows if r.get(f"train/{task}_loss")]
        assert len(values) >= 10, f"{task}: only {len(values)} logged values"
        first, last = values[0], sum(values[-3:]) / 3
        went_down[task] = last < first
        print(f"{task}_loss: first logged {first:.3f} -> mean of the last three {last:.3f}")
    assert r10 >= 3 * chance
    assert all(went_down.values()), went_down
