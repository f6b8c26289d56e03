"""The comparison table (fvl-compare, make compare): the writer on two tiny models' jobs, the size and
throughput figures, the make target's plan, and (slow) the whole chain on 1-step checkpoints."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.utils.compare import collect_rows, headline_columns, to_markdown, write_comparison
from fashion_vl.utils.results import ResultsError
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


def fake_job(folder: Path, embedder: str, experiment: str, metrics: dict[str, float]) -> None:
    """A job folder as an fvl-eval multirun leaves it: metrics.json and .hydra/hydra.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"embedder": embedder, "experiment": experiment}}}})
    )
    payload = {"experiment": experiment, "ckpt_path": None, "split": "test",
               "metrics": {f"test/{k}": v for k, v in metrics.items()}, "config": {}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(payload))


def test_table_writer_for_two_tiny_models(tmp_path: Path) -> None:
    sweep = tmp_path / "runs"
    fake_job(sweep / "0", "model_a", "eval_openclip_fashiongen",
             {"full/t2i_r@1": 10.0, "full/t2i_r@5": 30.0, "full/t2i_r@10": 41.5, "full/rsum": 200.0,
              "sample100/rsum": 300.25, "marqo/text/mrr": 12.0, "marqo/category/precision@10": 50.0,
              "marqo/subcategory/precision@10": 45.0})  # fmt: skip
    fake_job(sweep / "1", "model_b", "eval_openclip_fashiongen",
             {"full/t2i_r@1": 20.0, "full/t2i_r@5": 50.0, "full/t2i_r@10": 70.0, "full/rsum": 310.0,
              "sample100/rsum": 400.0, "marqo/text/mrr": 33.3, "marqo/category/precision@10": 60.0,
              "marqo/subcategory/precision@10": 55.0})  # fmt: skip
    fake_job(sweep / "2", "model_a", "eval_openclip_polyvore", {"r@10": 25.0, "r@30": 60.0, "r@50": 80.0})
    rows = collect_rows(sweep, ["model_b", "model_a"])  # the order asked for, not the jobs'
    rows[0].info = {"parameters": 3_389_185, "images_per_s": 123.456, "texts_per_s": 789.0, "device": "cpu",
                    "batch_size": 32}  # fmt: skip
    written = write_comparison(rows, tmp_path / "out")
    markdown = written["markdown"].read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    b, a = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    assert header[0] == "model" and header[-3:] == ["parameters (M)", "images/s", "texts/s"]
    col = header.index("FashionGen retrieval: full/t2i_r@10")
    assert (b[0], b[col], a[0], a[col]) == ("model_b", "70.00", "model_a", "41.50")
    polyvore = header.index("Polyvore outfits: r@30")
    assert a[polyvore] == "60.00" and b[polyvore] == ""  # model_b was not scored on it: blank
    assert b[-3:] == ["3.39", "123.5", "789.0"] and a[-3:] == ["", "", ""]
    assert len(headline_columns(rows)) == len(header) - 4
    with written["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["model_b", "model_a"]
    assert (
        float(table[1]["eval_openclip_polyvore/r@50"]) == 80.0
        and table[0]["eval_openclip_polyvore/r@50"] == ""
    )
    assert (
        json.loads(written["json"].read_text())["models"][0]["metrics"]["eval_openclip_fashiongen"][
            "full/rsum"
        ]
        == 310.0
    )
    if "plot" in written:  # matplotlib (the [clip] extra)
        assert written["plot"].stat().st_size > 1000
    assert markdown == to_markdown(rows)


def test_table_reader_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"no metrics\.json"):
        collect_rows(tmp_path)
    fake_job(tmp_path / "0", "model_a", "eval_openclip_polyvore", {"r@10": 1.0})
    with pytest.raises(ResultsError, match="model_x"):
        collect_rows(tmp_path, ["model_a", "model_x"])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "metrics.json").write_text("{}")
    with pytest.raises(ResultsError, match=r"hydra\.yaml"):
        collect_rows(tmp_path)


def test_parameters_and_throughput_of_an_embedder(tmp_path: Path, synth_dir: Path) -> None:
    pytest.importorskip("open_clip")
    from fashion_vl.bench.encoders import measure_embedder

    cfg = compose_config(
        "eval",
        ["experiment=eval_openclip_fashiongen", "embedder=openclip_tiny", "data.num_workers=0"],
        tmp_path,
        synth_dir,
    )
    GlobalHydra.instance().clear()
    figures = measure_embedder(cfg, batch_size=4, steps=1)
    # conf/model/open_clip/fvl-tiny-clip.json: 2+2 layers of width 64, patch 8 at 64 px, a 49408-token vocabulary
    assert figures.parameters == 3_389_185
    assert figures.images_per_s > 0 and figures.texts_per_s > 0 and figures.image_size == (3, 64, 64)


def test_make_compare_installs_the_clip_extra_and_tables_the_three_demo_models(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "-B", "compare", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '-e ".[clip]"' in plan and '-e ".[unifashion]"' in plan
    assert "experiment=demo_finetune_openclip run_name=demo_finetune_openclip" in plan
    compare = next(line for line in plan.splitlines() if "fvl-compare" in line)
    assert (
        "fashionvil_demo" in compare and "unifashion_demo" in compare and "openclip_tiny_finetuned" in compare
    )


@pytest.mark.slow
def test_compare_chain_on_one_step_checkpoints(tmp_path: Path, synth_dir: Path) -> None:
    """make compare's steps: 1-step runs where make demo, make demo-unifashion and the open_clip fine-tune
    put their checkpoints, then fvl-compare over every protocol."""
    pytest.importorskip("open_clip")
    from fashion_vl.cli.compare import main

    logs = tmp_path / "logs"
    common = [f"paths.data_dir={synth_dir}", "print_config=false", "trainer.enable_progress_bar=false",
              "data.num_workers=0", "trainer.max_steps=1", "trainer.val_check_interval=1",
              "callbacks.checkpoint_last.every_n_train_steps=1", "image_size=64"]  # fmt: skip
    for experiment, log_dir, run_name in (
        ("demo_pretrain", logs, "demo_pretrain"),
        ("demo_unifashion_phase1", logs / "demo_unifashion", "phase1"),
        ("demo_finetune_openclip", logs, "demo_finetune_openclip"),
    ):
        extra = ["lit.caption_eval.max_images=2"] if "unifashion" in experiment else []
        args = [
            f"experiment={experiment}",
            f"run_name={run_name}",
            f"paths.log_dir={log_dir}",
            *common,
            *extra,
        ]
        subprocess.run([sys.executable, "-m", "fashion_vl.cli.train", *args], check=True, capture_output=True)
    code = main(["--models", "fashionvil_demo", "unifashion_demo", "openclip_tiny_finetuned", "--out",
                 str(tmp_path / "compare"), "--batch-size", "4", "--",
                 f"paths.data_dir={synth_dir}", f"paths.log_dir={logs}", "data.num_workers=0", "image_size=64"])  # fmt: skip
    assert code == 0
    rows = collect_rows(tmp_path / "compare" / "runs")
    assert [r.name for r in rows] == ["fashionvil_demo", "unifashion_demo", "openclip_tiny_finetuned"]
    assert all(len(r.metrics) == 7 for r in rows)
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert "fashionvil_demo" in table and "images/s" in table
