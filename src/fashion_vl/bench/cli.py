"""Command lines of ``scripts/bench_pretrain.py`` and ``scripts/bench_finetune.py``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import torch

from fashion_vl.bench.report import ensure_synthetic, print_training_table, run_training_bench, write_json
from fashion_vl.bench.training import StepBench, compose_experiment


def training_parser(description: str, experiments: Sequence[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--experiment",
        action="append",
        default=None,
        help=f"experiment config(s) to time; repeat for several (default: {', '.join(experiments)})",
    )
    p.add_argument("--batch-size", type=int, default=256, help="per-device batch (default 256)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per task (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--num-batches", type=int, default=4, help="distinct batches kept on the device")
    p.add_argument("--paths", default="eager_fp32,bf16,default", help="execution paths, comma-separated")
    p.add_argument("--tasks", default=None, help="only these tasks (pre-training: itc,...,mix)")
    p.add_argument("--data-dir", default=None, help="a datasets/ folder (default: synthetic, generated once)")
    p.add_argument("--synth-size", default="small", help="size of the generated synthetic data")
    p.add_argument("--synth-image-size", type=int, default=256, help="side of the generated images")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: CPU count)")
    p.add_argument("--codebook-size", type=int, default=1024, help="MPFC codes (precomputed targets)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--no-components", action="store_true", help="skip the isolated components (d)")
    p.add_argument("--no-data-path", action="store_true", help="skip the DataLoader-fed run")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--out", default=None, help="JSON file to write (also printed to stdout)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every experiment")
    return p


def training_main(argv: Sequence[str] | None, description: str, experiments: Sequence[str]) -> dict[str, Any]:
    args = training_parser(description, experiments).parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_dir = ensure_synthetic(args.data_dir, args.synth_size, args.synth_image_size)
    workers = args.num_workers if args.num_workers is not None else min(16, os.cpu_count() or 1)
    overrides = [
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={workers}",
        "data.pad_to_max_length=true",  # the real text length every step (75 in pre-training)
        *args.overrides,
    ]
    tasks = args.tasks.split(",") if args.tasks else None
    results = {}
    for experiment in args.experiment or experiments:
        cfg = compose_experiment(experiment, str(data_dir), overrides)
        bench = StepBench(cfg, device, args.steps, args.warmup, args.num_batches, args.codebook_size)
        result = run_training_bench(
            bench,
            args.paths.split(","),
            tasks=tasks,
            components=not args.no_components,
            data_path=not args.no_data_path,
            flops=not args.no_flops,
        )
        result["experiment"] = experiment
        print_training_table(result, experiment)
        results[experiment] = result
    payload = results if len(results) > 1 else next(iter(results.values()))
    write_json(payload, args.out)
    return payload
