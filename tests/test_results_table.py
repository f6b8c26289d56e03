"""The combined results table of several fvl-eval runs (fashion_vl.utils.results, fashion_vl.cli.results):
FashionViL and UniFashion rows share the metric columns of the task they both report."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from rich.console import Console

from fashion_vl.cli.results import ResultsTableCallback
from fashion_vl.cli.results import main as eval_table
from fashion_vl.utils.results import (
    ResultsError,
    collect,
    columns_by_task,
    combined_table,
    model_family,
    to_markdown,
    write_results,
)
from tests.conftest import compose_config

FASHIONVIL = "fashion_vl.models.fashionvil.FashionViL"
UNIFASHION = "fashion_vl.models.unifashion.UniFashion"


def retrieval_metrics(offset: float) -> dict[str, float]:
    """The keys GalleryRetrievalModule logs on test (both protocols, K = 1, 5, 10)."""
    out = {
        f"test/{p}/{d}_r@{k}": offset + k
        for p in ("full", "sample100")
        for d in ("i2t", "t2i")
        for k in (1, 5, 10)
    }
    for p in ("full", "sample100"):
        out[f"test/{p}/rsum"] = sum(v for key, v in out.items() if key.startswith(f"test/{p}/"))
        out[f"test/{p}/mean"] = out[f"test/{p}/rsum"] / 6
    return out


def fashioniq_metrics(offset: float, prefix: str = "test/") -> dict[str, float]:
    """The keys ComposedGalleryRecall gives on FashionIQ (K = 10, 50), under ``prefix``."""
    out = {f"{prefix}{g}_r@{k}": offset + k for g in ("dress", "shirt", "toptee", "mean") for k in (10, 50)}
    out[f"{prefix}avg"] = offset + 30
    return out


def write_run(folder: Path, experiment: str, target: str, metrics: dict, ckpt: str | None) -> Path:
    folder.mkdir(parents=True)
    payload = {
        "experiment": experiment,
        "ckpt_path": ckpt,
        "split": "test",
        "metrics": metrics,
        "config": {"experiment_name": experiment, "model": {"_target_": target}},
    }
    (folder / "metrics.json").write_text(json.dumps(payload))
    return folder


@pytest.fixture
def four_runs(tmp_path: Path) -> list[Path]:
    """FashionViL and UniFashion on FashionGen retrieval, then both on FashionIQ (UniFashion re-ranked too)."""
    captions = {"test/caption/bleu_4": 0.0312, "test/caption/cider": 0.25}
    return [
        write_run(tmp_path / "sweep" / "0", "finetune_retrieval_fashiongen", FASHIONVIL,
                  retrieval_metrics(10.0), "/logs/train/runs/ft/2024-05-01_10-00-00/checkpoints/last.ckpt"),
        write_run(tmp_path / "sweep" / "1", "unifashion_phase1", UNIFASHION,
                  {**retrieval_metrics(20.0), **captions}, "/ckpts/phase1.ckpt"),
        write_run(tmp_path / "sweep" / "2", "finetune_composed_fashioniq", FASHIONVIL,
                  fashioniq_metrics(1.0), None),
        write_run(tmp_path / "sweep" / "10", "unifashion_phase2_fashioniq", UNIFASHION,
                  {**fashioniq_metrics(2.0), **fashioniq_metrics(3.0, "test/rerank/")}, "/ckpts/phase2.ckpt"),
    ]  # fmt: skip


def rendered(table) -> str:
    console = Console(width=2000, file=io.StringIO())
    console.print(table)
    return console.file.getvalue()


def test_rows_of_both_families_share_the_metric_columns(four_runs: list[Path]) -> None:
    runs = collect(four_runs)
    assert [r.family for r in runs] == ["FashionViL", "UniFashion", "FashionViL", "UniFashion"]
    assert [r.checkpoint for r in runs] == [
        "2024-05-01_10-00-00/last.ckpt", "phase1.ckpt", "random init", "phase2.ckpt"
    ]  # fmt: skip
    groups = columns_by_task(runs)
    assert list(groups) == [
        "cross-modal retrieval", "composed retrieval", "composed retrieval, ITM re-ranked", "captioning"
    ]  # fmt: skip
    assert groups["cross-modal retrieval"][:3] == ["full/i2t_r@1", "full/i2t_r@5", "full/i2t_r@10"]
    assert "mean_r@10" in groups["composed retrieval"] and "avg" in groups["composed retrieval"]
    assert groups["captioning"] == ["caption/bleu_4", "caption/cider"]

    table = combined_table(runs)
    headers = [c.header for c in table.columns]
    assert headers.count("full/t2i_r@10") == 1 and headers.count("mean_r@10") == 1
    cells = {c.header: list(c.cells) for c in table.columns}
    assert cells["full/t2i_r@10"] == ["20.00", "30.00", "", ""]  # both retrieval rows, one column
    assert cells["mean_r@10"] == ["", "", "11.00", "12.00"]  # both FashionIQ rows, one column
    assert cells["rerank/mean_r@10"] == ["", "", "", "13.00"]  # re-ranking: UniFashion only
    assert cells["caption/bleu_4"] == ["", "0.0312", "", ""]  # fractions keep four decimals
    assert cells["model"] == ["FashionViL", "UniFashion", "FashionViL", "UniFashion"]
    text = rendered(table)
    assert "finetune_retrieval_fashiongen" in text and "unifashion_phase2_fashioniq" in text


def test_metric_patterns_select_columns(four_runs: list[Path]) -> None:
    runs = collect(four_runs)
    table = combined_table(runs, ["*t2i_r@10", "mean_r@10"])
    assert [c.header for c in table.columns] == [
        "run", "model", "checkpoint", "split", "full/t2i_r@10", "sample100/t2i_r@10", "mean_r@10"
    ]  # fmt: skip


def test_a_sweep_folder_is_read_in_job_order(four_runs: list[Path]) -> None:
    runs = collect([four_runs[0].parent])  # the folder holding jobs 0, 1, 2, 10
    assert [r.path.parent.name for r in runs] == ["0", "1", "2", "10"]


def test_markdown_and_json_hold_the_same_table(four_runs: list[Path], tmp_path: Path) -> None:
    runs = collect(four_runs)
    json_path, md_path = write_results(runs, tmp_path / "out")
    md = md_path.read_text().splitlines()
    header = next(line for line in md if line.startswith("| run "))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md if line.startswith("| ")][1:]
    assert len(rows) == 4 and all(len(r) == len(columns) for r in rows)
    t2i = columns.index("full/t2i_r@10")
    assert [r[t2i] for r in rows] == ["20.00", "30.00", "", ""]
    assert to_markdown(runs) == md_path.read_text()
    data = json.loads(json_path.read_text())
    assert data["columns"]["captioning"] == ["caption/bleu_4", "caption/cider"]
    assert data["runs"][1]["model"] == "UniFashion" and data["runs"][1]["metrics"]["full/t2i_r@10"] == 30.0
    assert "caption/bleu_4" not in data["runs"][0]["metrics"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON file"),
        ('{"experiment": "x", "split": "test", "metrics": {}}', "missing key.*ckpt_path"),
        ('{"experiment": "x", "ckpt_path": null, "split": "test", "metrics": {"a": "high"}}', "'a'.*not a number"),
        ("[1, 2]", "JSON object"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_named_in_the_error(
    four_runs: list[Path], tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(ResultsError, match=rf"{bad}: .*{message}"):
        collect([*four_runs, bad.parent])


def test_a_path_without_results_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=f"{tmp_path / 'none'}: no such file"):
        collect([tmp_path / "none"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=f"{tmp_path / 'empty'}: no metrics.json"):
        collect([tmp_path / "empty"])


def test_model_family_from_the_config_or_the_experiment_name() -> None:
    assert model_family({"model": {"_target_": FASHIONVIL}}) == "FashionViL"
    assert model_family({"model": {"_target_": UNIFASHION}}) == "UniFashion"
    assert model_family({}, "demo_unifashion_phase2") == "UniFashion"
    assert model_family({"model": {"_target_": "a.b.Other"}}, "x") == "Other"
    assert model_family({}, "x") == "?"


def test_eval_table_cli(four_runs: list[Path], tmp_path: Path, capsys) -> None:
    sweep = four_runs[0].parent
    assert eval_table([str(sweep), "--metrics", "*t2i_r@10", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "full/t2i_r@10" in out and "unifashion_phase1" in out and "mean_r@10" not in out
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "results.json").is_file()
    assert eval_table([str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no such file" in capsys.readouterr().err


def test_eval_table_module_entry_point(four_runs: list[Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fashion_vl.cli.results", str(four_runs[0]), str(four_runs[1])],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "FashionViL" in result.stdout and "UniFashion" in result.stdout


def test_the_eval_config_registers_the_callback_and_it_runs_at_multirun_end(
    four_runs: list[Path], tmp_path: Path, capsys
) -> None:
    from hydra._internal.callbacks import Callbacks

    sweep = four_runs[0].parent
    try:
        cfg = compose_config("eval", [f"hydra.sweep.dir={sweep}"], tmp_path)
        train_cfg = compose_config("train", [], tmp_path)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.hydra.callbacks.results_table._target_ == "fashion_vl.cli.results.ResultsTableCallback"
    assert not train_cfg.hydra.callbacks  # fvl-train has no results table
    Callbacks(cfg).on_multirun_end(config=cfg, config_name="eval")  # as Hydra calls it
    out = capsys.readouterr().out
    assert "finetune_retrieval_fashiongen" in out and "unifashion_phase2_fashioniq" in out
    rows = json.loads((sweep / "results.json").read_text())["runs"]
    assert [r["run"] for r in rows] == [
        "finetune_retrieval_fashiongen", "unifashion_phase1", "finetune_composed_fashioniq",
        "unifashion_phase2_fashioniq",
    ]  # fmt: skip
    assert (sweep / "results.md").is_file()


def test_the_callback_collects_the_jobs_it_saw_end_wherever_they_ran(
    four_runs: list[Path], tmp_path: Path
) -> None:
    """A sweep over experiments puts each job under its own experiment's folder, not under the master's
    ``hydra.sweep.dir``: the jobs' own output folders are read, in the order they ended."""
    from omegaconf import OmegaConf

    callback = ResultsTableCallback()
    callback.on_multirun_start(OmegaConf.create({}))
    for run in (four_runs[3], four_runs[0]):
        callback.on_job_end(OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run)}}}), None)
    sweep = tmp_path / "master_sweep"
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    rows = json.loads((sweep / "results.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["unifashion_phase2_fashioniq", "finetune_retrieval_fashiongen"]


def test_the_callback_reports_instead_of_failing_the_sweep(tmp_path: Path, caplog) -> None:
    from omegaconf import OmegaConf

    sweep = tmp_path / "sweep"
    callback = ResultsTableCallback()
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert "no metrics.json" in caplog.text
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{")
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert f"{sweep / '0' / 'metrics.json'}: not a JSON file" in caplog.text
    assert not (sweep / "results.md").exists()


@pytest.mark.slow
def test_fvl_eval_multirun_prints_one_table_for_both_families(tmp_path: Path, synth_dir: Path) -> None:
    """`fvl-eval -m experiment=demo_finetune_retrieval,demo_unifashion_phase1` (random init): one table,
    the two runs' retrieval figures in the same columns, UniFashion's caption scores beside (~30 s)."""
    from tests.test_cli import run, script

    result = run(
        script("fvl-eval"), "-m", "experiment=demo_finetune_retrieval,demo_unifashion_phase1",
        f"paths.data_dir={synth_dir}", "image_size=56", "resize_size=64",
        "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0", "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # each job lands under its own experiment's folder; the table goes to the master's sweep folder
    (results,) = (tmp_path / "logs" / "eval" / "multiruns").glob("default/*/results.json")
    data = json.loads(results.read_text())
    assert [(r["run"], r["model"]) for r in data["runs"]] == [
        ("demo_finetune_retrieval", "FashionViL"), ("demo_unifashion_phase1", "UniFashion")
    ]  # fmt: skip
    for r in data["runs"]:
        job = json.loads((tmp_path / r["path"]).read_text())["metrics"]  # relative to the cwd
        assert r["metrics"]["full/t2i_r@10"] == job["test/full/t2i_r@10"]
    assert (
        "caption/bleu_4" in data["runs"][1]["metrics"] and "caption/bleu_4" not in data["runs"][0]["metrics"]
    )
    assert "fvl-eval results" in result.stdout and "caption/bleu_4" in result.stdout
