"""scripts/readme_figures.py: the README's demo table comes from a results file, with its provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_figures.py"
ROWS = [
    dict(task="pre-training", protocol="full gallery", metric="t2i R@10", chance=6.5, random_init=4.04, pretrained=47.25),
    dict(task="", protocol="", metric="rsum", chance=None, random_init=171.8, pretrained=422.9),
]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_the_table_is_replaced_between_the_markers_only(tmp_path) -> None:
    results = tmp_path / "demo_results.json"
    results.write_text(json.dumps(ROWS))
    readme = tmp_path / "README.md"
    readme.write_text("# x\nbefore\n<!-- demo-table:begin -->\n| old |\n<!-- demo-table:end -->\nafter\n")
    assert run("--results", str(results), "--readme", str(readme), "--check").returncode == 1
    done = run("--results", str(results), "--readme", str(readme))
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n<!-- demo-table:begin -->\nFrom `make demo` at commit ")
    assert text.endswith("<!-- demo-table:end -->\nafter\n")
    assert "| pre-training | full gallery | t2i R@10 | 6.5 | 4.0 | 47.2 |" in text
    assert "|  |  | rsum | - | 171.8 | 422.9 |" in text and "| old |" not in text
    assert run("--results", str(results), "--readme", str(readme), "--check").returncode == 0


@pytest.mark.parametrize("body", ["no markers\n", "<!-- demo-table:end -->\n<!-- demo-table:begin -->\n"])
def test_a_readme_without_one_pair_of_markers_is_refused(tmp_path, body) -> None:
    results = tmp_path / "r.json"
    results.write_text(json.dumps(ROWS))
    readme = tmp_path / "README.md"
    readme.write_text(body)
    done = run("--results", str(results), "--readme", str(readme))
    assert done.returncode != 0 and "needs exactly one <!-- demo-table:begin -->" in done.stderr
    assert readme.read_text() == body


def test_the_projects_readme_has_the_markers() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- demo-table:begin -->") == 1 and text.count("<!-- demo-table:end -->") == 1
