"""fvl-eval +viz=true: result grids for retrieval and composed retrieval."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from fashion_vl.cli.eval import evaluate
from fashion_vl.viz.grid import CORRECT, Row, draw_grid
from tests.conftest import TINY_TRAIN, compose_config

EVAL = [o for o in TINY_TRAIN if not o.startswith(("~callbacks", "logger", "trainer.log_every"))]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_grid_outlines_correct_results() -> None:
    red, blue = Image.new("RGB", (20, 20), "red"), Image.new("RGB", (20, 20), "blue")
    grid = draw_grid([Row([red], "a red dress", [red, blue], [True, False])], "title")
    assert grid.size[1] > 128 and CORRECT in {grid.getpixel((x, 30)) for x in range(grid.size[0])}


@pytest.mark.parametrize(
    ("experiment", "extra"),
    [
        ("demo_itc", []),
        ("demo_finetune_composed_fashioniq", ["data.batch_size=8", "data.max_text_length=24"]),
    ],
)
def test_eval_viz_writes_a_grid(experiment: str, extra: list[str], tmp_path: Path, synth_dir: Path) -> None:
    overrides = [o if not o.startswith("experiment=") else f"experiment={experiment}" for o in EVAL]
    cfg = compose_config("eval", [*overrides, *extra, "+viz=true"], tmp_path, synth_dir)
    evaluate(cfg)
    with Image.open(tmp_path / "retrieval_examples.png") as grid:
        assert grid.size[0] > 5 * 128 and grid.size[1] >= 8 * 128
