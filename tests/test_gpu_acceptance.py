"""scripts/gpu_acceptance.py: its CPU smoke mode runs every step end to end with the tiny configs and
writes one JSON and one markdown table with each step's figures."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import torch

from fashion_vl.bench.acceptance import STEPS, VICUNA_7B_RANDOM, markdown, step_args

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.py"


@pytest.mark.slow  # several minutes on a loaded 2-core machine; the fast counterpart is below
def test_cpu_smoke_runs_every_step(synth_dir: Path, tmp_path: Path) -> None:
    main = runpy.run_path(str(SCRIPT), run_name="test")["main"]
    payload = main(["--cpu-smoke", "--strict", "--out-dir", str(tmp_path), "--data-dir", str(synth_dir)])
    steps = payload["steps"]
    assert list(steps) == list(STEPS) and payload["mode"] == "cpu-smoke"
    for name in ("pretrain_fit", "unifashion_phase1"):
        fit = steps[name]
        assert fit["steps"] == len(fit["step_s"]) == 3 and fit["losses_finite"] and fit["samples_per_s"] > 0
        assert fit["parameters"]["trainable"] > 0
    assert steps["pretrain_bench"]["paths"]["default"]["tasks"]["mix"]["samples_per_s"] > 0
    assert math.isfinite(steps["pretrain_bench"]["data_path"]["ratio"])
    assert steps["tryon"]["train"]["losses_finite"] and steps["tryon"]["sample"]["finite"]
    assert steps["eval"]["paths"][0]["images_per_s"] > 0
    saved = json.loads((tmp_path / "acceptance.json").read_text())
    assert set(saved["steps"]) == set(STEPS)
    table = (tmp_path / "acceptance.md").read_text()
    assert "| pretrain_fit | samples/s" in table and "data path" in table and "error" not in table


def test_cpu_smoke_driver_writes_one_json_and_one_table(synth_dir: Path, tmp_path: Path) -> None:
    """The fast counterpart: the same driver on the quickest step, and a step that fails becomes a row."""
    main = runpy.run_path(str(SCRIPT), run_name="test")["main"]
    payload = main(
        ["--cpu-smoke", "--steps", "eval", "--out-dir", str(tmp_path), "--data-dir", str(synth_dir)]
    )
    assert list(payload["steps"]) == ["eval"] and payload["steps"]["eval"]["paths"][0]["images_per_s"] > 0
    assert "| eval | default: images/s" in (tmp_path / "acceptance.md").read_text()
    assert json.loads((tmp_path / "acceptance.json").read_text())["mode"] == "cpu-smoke"
    with pytest.raises(ValueError, match="unknown step"):
        main(["--cpu-smoke", "--steps", "eval,nope", "--out-dir", str(tmp_path)])


def test_gpu_mode_asks_for_the_issues_sizes() -> None:
    class Args:
        pretrain_steps, unifashion_steps, unifashion_batch_size = 220, 60, 128

    fit = step_args("pretrain_fit", False, Args)
    assert fit["experiment"] == "pretrain_fashionall" and fit["steps"] >= 200 and fit["batch_size"] == 256
    uni = step_args("unifashion_phase1", False, Args)
    assert uni["experiment"] == "unifashion_phase1" and uni["steps"] >= 50
    assert (
        "+model.llm.init_device=cuda" in uni["overrides"]
        and "+model.llm.hidden_size=4096" in VICUNA_7B_RANDOM
    )
    with pytest.raises(ValueError, match="unknown step"):
        step_args("nope", True, Args)
    failed = markdown({"tryon": {"error": "RuntimeError: out of memory", "_seconds": 3.0}}, "# t")
    assert "| tryon | error | RuntimeError: out of memory |" in failed


def test_random_llm_is_built_on_the_init_device() -> None:
    from fashion_vl.models.unifashion import LanguageModel

    tiny = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2}  # fmt: skip
    # meta stands in for the GPU here: no parameter is allocated (or initialised) on the CPU first
    on_meta = LanguageModel(pretrained=False, dtype="bfloat16", init_device="meta", **tiny)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    assert {p.dtype for p in on_meta.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in LanguageModel(pretrained=False, **tiny).parameters()} == {"cpu"}


def test_fit_times_steps_through_fvl_trains_path(synth_dir: Path) -> None:
    from fashion_vl.bench.acceptance import fit

    result = fit(
        "demo_itc", 2, 1, 4, ["image_size=56", "resize_size=64", "data.max_text_length=24"], synth_dir
    )
    assert result["steps"] == len(result["step_s"]) == 2 and result["warmup_steps_excluded"] == 1
    assert result["samples_per_s"] == pytest.approx(4 / result["median_step_s"])
    assert result["losses_finite"] and result["parameters"]["trainable"] > 0
