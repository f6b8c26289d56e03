"""Time from ``fvl-train <bad override>`` to its error, for each config mistake the pre-flight catches
(and a non-UTF-8 annotation file, caught by the data check that follows it). Each case runs the real
console script in a fresh process; the figure is wall time to exit. The first row is the floor no check
can beat: ``fvl-train ... --cfg job`` (Python, Hydra's import and composition, the config printed). JSON
out.

  python scripts/bench_preflight.py --out bench_preflight.json
  python scripts/bench_preflight.py --data-dir data/synthetic --experiment demo_pretrain
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fashion_vl.bench.report import ensure_synthetic, environment, write_json

# (case, override, what the one error line must say)
CASES = (
    ("max_steps not a number", "trainer.max_steps=abc", "trainer.max_steps=abc: expected an integer"),
    ("lr not a number", "lit.optimizer.lr=abc", "lit.optimizer.lr=abc: expected a number"),
    ("negative batch size", "data.batch_size=-4", "data.batch_size=-4: expected a batch size > 0"),
    (
        "missing ckpt_path",
        "ckpt_path=/no/such/last.ckpt",
        "ckpt_path=/no/such/last.ckpt: expected an existing",
    ),
    ("missing init_from", "model.init_from=/no/such/pretrain.ckpt", "model.init_from=/no/such/pretrain.ckpt"),
    ("zero lr", "lit.optimizer.lr=0", "lit.optimizer.lr=0.0: expected a learning rate > 0"),
    ("bad precision", "trainer.precision=15", "trainer.precision=15: expected a Lightning precision"),
    ("missing data folder", "paths.data_dir=/no/such/datasets", "paths.data_dir=/no/such/datasets"),
)


def annotations_only_copy(data_dir: Path, out: Path) -> Path:
    """The annotation files of ``data_dir`` (no images: the run's data check opens none), with a byte
    that is not UTF-8 in a FashionGen title."""
    for path in data_dir.rglob("*.json"):
        target = out / path.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    info = out / "FashionGen" / "train_info.json"
    info.write_bytes(info.read_bytes().replace(b'"title": "', b'"title": "caf\xe9 ', 1))
    return out


def run_case(command: list[str]) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return seconds, result.returncode, lines


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="demo_pretrain")
    p.add_argument("--data-dir", default=None, help="default: tiny synthetic data in the user cache")
    p.add_argument("--repeat", type=int, default=1, help="runs per case (the figure is the median)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    data_dir = ensure_synthetic(args.data_dir, "tiny", 64)
    fvl_train = str(Path(sys.executable).parent / "fvl-train")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = [fvl_train, f"experiment={args.experiment}", f"hydra.run.dir={tmp}/run", "print_config=false"]
        cases = [(name, [f"paths.data_dir={data_dir}", override], expect) for name, override, expect in CASES]
        bad = annotations_only_copy(data_dir, Path(tmp) / "bad_utf8")
        cases.append(("non-UTF-8 annotation", [f"paths.data_dir={bad}"], "not UTF-8"))
        # the floor: Python, Hydra's import and its compositions, printing the config (no pre-flight)
        cases.insert(
            0, ("floor: --cfg job", [f"paths.data_dir={data_dir}", "--cfg", "job"], "experiment_name:")
        )
        for name, overrides, expect in cases:
            runs = sorted((run_case([*base, *overrides]) for _ in range(args.repeat)), key=lambda r: r[0])
            seconds, status, lines = runs[len(runs) // 2]
            errors = [line for line in lines if expect in line]
            rows.append(
                {
                    "case": name,
                    "override": " ".join(overrides[-1:]),
                    "seconds": round(seconds, 2),
                    "exit_status": status,
                    "error_line": errors[0] if errors else None,
                    "output_lines": len(lines),
                    "ok": bool(errors)
                    and (status != 0) != name.startswith("floor")
                    and "Traceback" not in "\n".join(lines),
                }
            )
    result = {"environment": environment_cpu(), "experiment": args.experiment, "cases": rows}
    table = Table(title=f"fvl-train <bad override> -> error ({args.experiment})")
    for col in ("case", "override", "s", "exit", "lines", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["case"], r["override"], f"{r['seconds']:.1f}", str(r["exit_status"]), str(r["output_lines"]),
            (r["error_line"] or "NOT FOUND")[-110:],
        )  # fmt: skip
    Console(stderr=True).print(table)
    write_json(result, args.out)
    return result


def environment_cpu() -> dict:
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import torch

    return {**environment(torch.device("cpu")), "load_average": load}


if __name__ == "__main__":
    main(sys.argv[1:])
