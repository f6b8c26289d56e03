"""What the CPU demo scripts share: running one ``fvl-train`` / ``fvl-eval`` call with its output in a
file (reused on request) and reading a finished run's metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

QUIET = ["print_config=false", "trainer.enable_progress_bar=false"]


def run_once(tool: str, args: list[str], logs: Path, reuse: bool = False) -> None:
    """One fvl-train / fvl-eval call; its output goes to ``<logs>/<run_name>.out``. With ``reuse``, a
    run whose ``metrics.json`` exists is not run again. Exits the script when the call fails."""
    name = next(a.split("=", 1)[1] for a in args if a.startswith("run_name="))
    task = "train" if tool == "fvl-train" else "eval"
    if reuse and (logs / task / "runs" / name / "metrics.json").is_file():
        print(f"{name:<28} reused", flush=True)
        return
    out = logs / f"{name}.out"
    command = [tool, *args, f"paths.log_dir={logs}", *QUIET]
    start = time.perf_counter()
    with out.open("w") as f:
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT)
    print(f"{name:<28} {time.perf_counter() - start:6.0f} s  ({' '.join(command[1:3])} ...)", flush=True)
    if code:
        sys.exit(f"{tool} {name} failed (exit {code}); see {out}")


def run_dir(logs: Path, task: str, name: str) -> Path:
    return logs / task / "runs" / name


def metrics(logs: Path, task: str, name: str) -> dict[str, float]:
    return json.loads((run_dir(logs, task, name) / "metrics.json").read_text())["metrics"]
