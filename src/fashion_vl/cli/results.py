"""One results table over several ``fvl-eval`` runs: at the end of a multirun, or from finished runs.

- ``fvl-eval -m experiment=A,B ckpt_path=...`` prints it when the sweep ends
  (:class:`ResultsTableCallback`, registered under ``hydra.callbacks`` in ``conf/eval.yaml``) and writes
  ``results.json`` and ``results.md`` into the sweep folder.
- ``fvl-eval-table RUN_OR_SWEEP_DIR... [--metrics PATTERN...] [--out DIR]`` (also
  ``python -m fashion_vl.cli.results``) combines runs already evaluated, without re-running them.

The table itself is built by :mod:`fashion_vl.utils.results`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashion_vl.utils.results import ResultsError, collect, combined_table, write_results
from fashion_vl.utils.rich_utils import print_table

log = logging.getLogger("fashion_vl")


class ResultsTableCallback(Callback):
    """Hydra callback: when a multirun ends, the combined table of every job's ``metrics.json`` is printed
    and written into ``hydra.sweep.dir`` as ``results.json`` / ``results.md``.

    The jobs' folders are the ones this callback saw end (``on_job_end``): a sweep over experiments puts
    each job under its own experiment's folder (the default ``run_name`` names the experiment), not under
    the master's ``hydra.sweep.dir``. Launchers that run jobs in other processes (joblib, submitit) end
    them where this callback cannot see; then the metrics under ``hydra.sweep.dir`` are read, which holds
    every job when ``run_name`` is given (``fvl-eval -m run_name=<name> ...``).

    Args:
        metrics: ``fnmatch`` patterns selecting the columns (``["*r@10", "*rsum"]``); null: every metric.
    """

    def __init__(self, metrics: Sequence[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics else None
        self.job_dirs: list[Path] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_dirs = []

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        hydra_cfg = getattr(job_return, "hydra_cfg", None) or config
        output_dir = Path(str(hydra_cfg.hydra.runtime.output_dir))
        if (output_dir / "metrics.json").is_file():
            self.job_dirs.append(output_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sources = list(self.job_dirs)
        if not sources and sweep_dir.is_dir() and any(sweep_dir.rglob("metrics.json")):
            sources = [sweep_dir]
        if not sources:
            log.warning(
                "results table: no metrics.json under %s (jobs run by another process: give them one "
                "folder with run_name=<name>, or combine them with fvl-eval-table)",
                sweep_dir,
            )
            return
        try:
            runs = collect(sources)
        except ResultsError as err:  # the jobs' own results are all written: report, do not fail the sweep
            log.error("results table: %s", err)
            return
        print_table(combined_table(runs, self.metrics, title=f"fvl-eval results: {sweep_dir}"), fit=True)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = write_results(runs, sweep_dir, self.metrics)
        log.info("results table of %d runs written to %s and %s", len(runs), json_path, md_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-eval-table",
        description="Print one table of several fvl-eval runs (rows: runs; columns: metrics, shared "
        "across FashionViL and UniFashion).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="metrics.json files, fvl-eval run folders, or folders searched for them (a multirun folder)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="PATTERN",
        help="fnmatch patterns of the columns to show, without the split prefix: '*r@10' 'full/rsum'",
    )
    parser.add_argument("--out", type=Path, help="also write results.json and results.md into this folder")
    parser.add_argument("--title", default="fvl-eval results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = collect(args.paths)
    except ResultsError as err:
        print(f"fvl-eval-table: {err}", file=sys.stderr)
        return 2
    print_table(combined_table(runs, args.metrics, title=args.title), fit=True)
    if args.out is not None:
        for path in write_results(runs, args.out, args.metrics):
            print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
