"""Packaging: every package and config group ships; the CLIs are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.run_if import run_if

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_and_config_group_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "fashion_vl").rglob("*.py")
    }
    conf = {"fashion_vl.conf"} | {
        "fashion_vl.conf." + ".".join(p.relative_to(ROOT / "conf").parts)
        for p in (ROOT / "conf").rglob("*")
        if p.is_dir() and "__pycache__" not in p.parts
    }
    missing = (code | conf) - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_console_scripts_are_installed() -> None:
    for script in ("fvl-train", "fvl-eval", "fvl-data"):
        assert (Path(sys.executable).parent / script).is_file(), (
            f"{script} missing: reinstall with pip install -e ."
        )


def test_unifashion_demos_install_the_extra_their_llm_needs(tmp_path: Path) -> None:
    """The UniFashion demos build the LLM with LoRA adapters (peft, the [unifashion] extra): their make
    targets must install it on a fresh clone, not just the core package (they once did not)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("peft") for dep in extras["unifashion"])
    for target in ("demo-unifashion", "demo-generation", "demo"):
        plan = subprocess.run(
            ["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        installs_extra = '-e ".[unifashion]"' in plan
        assert installs_extra == (target != "demo"), f"make {target}:\n{plan}"


def _lint_imports(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=root, env=env, capture_output=True, text=True
    )


@run_if(packages=("importlinter",))
def test_the_import_layer_contract_holds_and_refuses_a_back_import(tmp_path: Path) -> None:
    """pyproject.toml's layers contract (what `make lint` and .ci/run check) holds for the package, and
    fails, naming the import, when a lower layer imports a higher one (data -> models here)."""
    kept = _lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "fashion_vl", copy / "fashion_vl", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (copy / "fashion_vl" / "data" / "collate.py").open("a") as f:
        f.write("\nfrom fashion_vl.models.fashionvil import FashionViL  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy, not the installed package
    broken = _lint_imports(tmp_path, env)
    assert broken.returncode != 0
    assert "fashion_vl.data.collate -> fashion_vl.models.fashionvil" in broken.stdout
