"""Packaging: every package and config group ships; the CLIs are installed."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

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
