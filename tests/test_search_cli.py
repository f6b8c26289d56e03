"""``fvl-index build`` / ``query`` and ``fvl-serve`` start-up, with ``fashion_vl.load`` answering with
the small fake model (the commands ``make demo`` ends with, on a stand-in checkpoint file)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fashion_vl
from fashion_vl.cli import index as index_cli
from tests.helpers.fake_embedder import FakeEmbedder
from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss",))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``fashion_vl.load`` returning the fake model; records the sources it was given."""
    sources: list[str] = []

    def load(source, device=None, dtype=None):
        sources.append(source)
        return FakeEmbedder(name=f"fake:{Path(source).name}")

    monkeypatch.setattr(fashion_vl, "load", load, raising=False)
    return sources


def test_build_then_query_a_data_folder(
    tmp_path: Path, fixture_data: Path, fake_load, capsys, monkeypatch
) -> None:
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"a stand-in checkpoint")
    out = tmp_path / "demo_index"
    monkeypatch.chdir(tmp_path)  # a relative --model is recorded as an absolute path
    args = [
        "build",
        "--model",
        "run/last.ckpt",
        "--catalogue",
        str(fixture_data),
        "--out",
        str(out),
        "--quiet",
    ]
    assert index_cli.main(args) == 0
    assert fake_load == [str(ckpt)]
    info = json.loads((out / "index.json").read_text())
    assert info["model"]["source"] == str(ckpt) and info["catalogue"]["items"] == 5
    assert "5 items indexed (flat)" in capsys.readouterr().out

    assert index_cli.main(args) == 0  # the same build again: nothing to do
    assert "up to date" in capsys.readouterr().out

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("COLUMNS", raising=False)  # stdout is not a terminal: rich would assume 80 columns
    assert index_cli.main(["query", str(out), "--text", "black wool blazer", "-k", "5"]) == 0
    printed = capsys.readouterr().out
    assert "top 5 of 5" in printed and "100123" in printed and "Black wool blazer" in printed
    rows = [line for line in printed.splitlines() if "FashionGen" in line]
    assert len(rows) == 5 and all(re.search(r"/FashionGen/\w+/\d+_\d\.png", row) for row in rows), printed
    assert fake_load[-1] == str(ckpt)  # the model the index records

    image = fixture_data / "FashionGen" / "val" / "200001_0.png"
    assert index_cli.main(["query", str(out), "--image", str(image), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert hits[0]["id"] == "200001" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert index_cli.main(["query", str(out), "--image", str(image), "--text", "in red", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 5


def test_cli_errors_are_one_line_messages(tmp_path: Path, fixture_data: Path, fake_load, capsys) -> None:
    assert index_cli.main(["query", str(tmp_path), "--text", "red"]) == 1
    assert "is not an index folder (no index.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give --text, --image"):
        index_cli.main(["query", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        index_cli.main(["query", str(tmp_path), "--image", str(tmp_path / "nope.jpg")])
    bad = tmp_path / "c.csv"
    bad.write_text("id,picture\n")
    args = ["build", "--model", "m", "--catalogue", str(bad), "--out", str(tmp_path / "i"), "--quiet"]
    assert index_cli.main(args) == 1
    assert "no column 'image'" in capsys.readouterr().err


@run_if(packages=("fastapi", "uvicorn", "multipart"))
def test_serve_refuses_a_folder_that_is_not_an_index(tmp_path: Path, capsys) -> None:
    from fashion_vl.cli import serve

    assert serve.main([str(tmp_path)]) == 1
    assert "is not an index folder" in capsys.readouterr().err


def test_make_demo_ends_with_an_index_and_a_text_query(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # run under `make test` (CI), the nested make inherits MAKELEVEL and would print
    # "make[1]: Entering directory" lines around the plan: ask it not to, and drop any that remain
    plan = [
        line
        for line in subprocess.run(
            ["make", "--no-print-directory", "-n", "-B", "demo", f"VENV={tmp_path / 'venv'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        if not line.startswith("make[")
    ]
    assert any('-e ".[search]"' in line for line in plan), "make demo must install the [search] extra"
    build = next(i for i, line in enumerate(plan) if "fvl-index build" in line)
    assert "--model logs/train/runs/demo_pretrain/checkpoints/last.ckpt" in plan[build]
    assert "--catalogue data/synthetic" in plan[build]
    assert "fvl-index query" in plan[build + 1] and "-k 5" in plan[build + 1]
    assert build + 2 == len(plan), "the index and the query are the demo's last steps"
