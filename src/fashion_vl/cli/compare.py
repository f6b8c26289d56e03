"""``fvl-compare``: every model over every protocol, one table (``make compare``, ``docs/compare.md``).

    fvl-compare --models fashionvil_demo unifashion_demo openclip_tiny_finetuned --out logs/compare \\
        -- paths.data_dir=data/synthetic

runs one Hydra multirun of ``fvl-eval`` (``embedder=<models> experiment=<protocols>``, every job in
``<out>/runs/<n>``), measures each model's parameters and encode throughput (:mod:`fashion_vl.bench.encoders`),
prints the table and writes ``compare.md``, ``compare.csv``, ``compare.json`` and ``recall_at_k.png``
(:mod:`fashion_vl.utils.compare`). Models are embedder presets (``conf/embedder/``), protocols the
``eval_openclip_*`` experiments (short names accepted: ``fashiongen`` for ``eval_openclip_fashiongen``);
everything after ``--`` is passed to every job as Hydra overrides. ``--reuse`` tables a finished sweep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fashion_vl.utils.compare import PROTOCOLS, collect_rows, to_markdown, write_comparison
from fashion_vl.utils.results import ResultsError

EXPERIMENT_PREFIX = "eval_openclip_"
DEFAULT_MODELS = ("openclip_marqo_fashionsiglip", "openclip_marqo_fashionclip", "openclip_fashion_clip")


def experiment_name(protocol: str) -> str:
    """``fashiongen`` -> ``eval_openclip_fashiongen``; a full experiment name is kept."""
    return protocol if protocol.startswith(("eval_", "demo_")) else EXPERIMENT_PREFIX + protocol


def sweep_command(
    models: Sequence[str], protocols: Sequence[str], sweep_dir: Path, overrides: Sequence[str]
) -> list[str]:
    return [
        sys.executable, "-m", "fashion_vl.cli.eval", "-m",
        f"embedder={','.join(models)}",
        f"experiment={','.join(experiment_name(p) for p in protocols)}",
        f"hydra.sweep.dir={sweep_dir}",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]  # fmt: skip


def run_sweep(
    models: Sequence[str], protocols: Sequence[str], sweep_dir: Path, overrides: Sequence[str]
) -> None:
    """The multirun, in a process of its own (Hydra owns its process); a failed job fails it."""
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    code = subprocess.call(sweep_command(models, protocols, sweep_dir, overrides), env=env)
    if code:
        raise SystemExit(f"fvl-compare: the fvl-eval sweep failed (exit {code}); its jobs are in {sweep_dir}")


def measure(models: Sequence[str], overrides: Sequence[str], batch_size: int) -> dict[str, dict]:
    """Parameters and throughput of each model, built as its first protocol's job builds it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from fashion_vl.bench.encoders import measure_embedder

    figures = {}
    for model in models:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="fashion_vl.conf", version_base="1.3"):
            cfg = compose(
                "eval",
                overrides=[f"experiment={EXPERIMENT_PREFIX}fashiongen", f"embedder={model}", *overrides],
            )
        GlobalHydra.instance().clear()
        figures[model] = measure_embedder(cfg, batch_size=batch_size).as_dict()
        print(f"{model}: {figures[model]['parameters'] / 1e6:.2f} M parameters, "
              f"{figures[model]['images_per_s']:.1f} images/s, {figures[model]['texts_per_s']:.1f} texts/s")  # fmt: skip
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-compare",
        description="Run models (embedder presets) over protocols (eval_openclip_* experiments) and write one table.",
        epilog="Hydra overrides for every job go after `--`, e.g. -- paths.data_dir=/data/datasets trainer=gpu",
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="conf/embedder presets")
    parser.add_argument(
        "--protocols", nargs="+", default=[p.removeprefix(EXPERIMENT_PREFIX) for p in PROTOCOLS],
        help="eval_openclip_* experiments or their short names (default: all)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("logs/compare"), help="output folder")
    parser.add_argument("--reuse", action="store_true", help="table the jobs already in <out>/runs")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of the throughput measurement")
    parser.add_argument("--no-throughput", action="store_true", help="skip parameters and throughput")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    sweep_dir = args.out.resolve() / "runs"
    if not args.reuse:
        run_sweep(args.models, args.protocols, sweep_dir, overrides)
    try:
        rows = collect_rows(sweep_dir, args.models)
    except ResultsError as err:
        print(f"fvl-compare: {err}", file=sys.stderr)
        return 2
    if not args.no_throughput:
        figures = measure(args.models, overrides, args.batch_size)
        for row in rows:
            row.info = figures[row.name]
    written = write_comparison(rows, args.out)
    print(to_markdown(rows))
    for path in written.values():
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
