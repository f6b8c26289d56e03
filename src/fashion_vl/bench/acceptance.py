"""One acceptance command for a bare GPU machine: every check the open performance issues ask for, one
JSON and one markdown table (``scripts/gpu_acceptance.py``; ``--cpu-smoke`` runs the same steps with
the tiny configs on CPU, as CI does).

Steps, each in its own process on the GPU (a failure or an out-of-memory in one does not stop the
others, and each starts with an empty GPU), in one process for the CPU smoke run:

- ``pretrain_fit``: ``pretrain_fashionall`` trained through ``fvl-train``'s own path (its Trainer,
  bf16-mixed, callbacks, DataLoader from files) for ``--pretrain-steps`` steps, timed per step;
- ``pretrain_bench``: ``scripts/bench_pretrain.py``'s three paths and its data-path ratio;
- ``unifashion_phase1``: phase 1 at real sizes (EVA ViT-g, BLIP-2 Q-Former, a Vicuna-7B-sized Llama,
  all random, the LLM built directly on the GPU) through ``fvl-train``'s path, timed per step, with
  peak memory;
- ``tryon``: ``scripts/bench_tryon.py``;
- ``eval``: ``scripts/bench_eval.py``.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "scripts"
STEPS = ("pretrain_fit", "pretrain_bench", "unifashion_phase1", "tryon", "eval")

# A Vicuna-7B-sized Llama (lmsys/vicuna-7b-v1.1's config.json), random, built on the GPU.
VICUNA_7B_RANDOM = [
    "model.llm.pretrained=false",
    "model.llm.model_type=llama",
    "+model.llm.vocab_size=32000",
    "+model.llm.hidden_size=4096",
    "+model.llm.intermediate_size=11008",
    "+model.llm.num_hidden_layers=32",
    "+model.llm.num_attention_heads=32",
    "+model.llm.max_position_embeddings=2048",
    "+model.llm.rms_norm_eps=1e-6",
    "+model.llm.init_device=cuda",
    "model.llm.tokenizer=${paths.data_dir}/tokenizer",  # offline: the synthetic data's tokenizer
    "model.qformer.pretrained=false",
]


def step_args(step: str, smoke: bool, args: Any) -> dict[str, Any]:
    """What each step runs: an experiment with overrides (``fit``) or a bench script's argv."""
    if step == "pretrain_fit":
        if smoke:
            return {"experiment": "demo_pretrain", "steps": 3, "warmup": 1, "batch_size": 4, "overrides": []}
        return {"experiment": "pretrain_fashionall", "steps": args.pretrain_steps, "warmup": 20,
                "batch_size": 256, "overrides": ["trainer.precision=bf16-mixed"]}  # fmt: skip
    if step == "unifashion_phase1":
        if smoke:
            return {"experiment": "demo_unifashion_phase1", "steps": 3, "warmup": 1, "batch_size": 4,
                    "overrides": []}  # fmt: skip
        return {"experiment": "unifashion_phase1", "steps": args.unifashion_steps, "warmup": 10,
                "batch_size": args.unifashion_batch_size,
                "overrides": ["trainer.precision=bf16-mixed", *VICUNA_7B_RANDOM]}  # fmt: skip
    if step == "pretrain_bench":
        if smoke:
            return {"script": "bench_pretrain.py", "argv": [
                "--experiment", "demo_pretrain", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                "--num-batches", "1", "--tasks", "mix", "--paths", "default", "--device", "cpu",
                "--codebook-size", "64",
                "--no-flops", "--no-components", "--num-workers", "0", "--synth-size", "tiny",
                "--synth-image-size", "64"]}  # fmt: skip
        return {"script": "bench_pretrain.py", "argv": ["--steps", "8", "--warmup", "4", "--no-flops"]}
    if step == "tryon":
        if smoke:
            return {"script": "bench_tryon.py", "argv": [
                "--experiment", "demo_unifashion_phase2_tryon", "--steps", "2", "--warmup", "1",
                "--batch-size", "2", "--sample-images", "1", "--sample-steps", "1", "--synth-size", "tiny",
                "--synth-image-size", "64", "--num-workers", "0"]}  # fmt: skip
        return {"script": "bench_tryon.py", "argv": []}
    if step == "eval":
        if smoke:
            return {"script": "bench_eval.py", "argv": [
                "--experiment", "demo_pretrain", "--num-items", "32", "--image-size", "56", "--batch-size",
                "16", "--chunk-size", "16", "--paths", "default", "--device", "cpu"]}  # fmt: skip
        return {"script": "bench_eval.py", "argv": []}
    raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


def fit(
    experiment: str, steps: int, warmup: int, batch_size: int, overrides: list[str], data_dir: Path
) -> dict:
    """``steps`` training steps of ``experiment`` through ``fvl-train``'s path, timed per step."""
    from fashion_vl.bench.report import environment
    from fashion_vl.bench.timing import peak_memory_gib
    from fashion_vl.bench.training import compose_experiment
    from fashion_vl.bench.tryon import StepTimer, bench_overrides, parameter_counts, scratch_dir
    from fashion_vl.cli.train import train

    workers = min(16, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    all_overrides = [*bench_overrides(steps, batch_size, batch_size, workers), *overrides]
    cfg = compose_experiment(experiment, data_dir, all_overrides, output_dir=scratch_dir())
    start = time.perf_counter()
    _, objects = train(cfg)
    wall = time.perf_counter() - start
    trainer, lit = objects["trainer"], objects["lit"]
    timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
    timed = timer.seconds[warmup:] or timer.seconds
    median = statistics.median(timed)
    return {
        "experiment": experiment,
        "overrides": all_overrides,
        "environment": environment(lit.device),
        "steps": len(timer.seconds),
        "warmup_steps_excluded": len(timer.seconds) - len(timed),
        "batch_size": batch_size,
        "precision": str(trainer.precision),
        "median_step_s": median,
        "samples_per_s": batch_size / median,
        "first_step_s": timer.seconds[0],
        "step_s": timer.seconds,
        "first_loss": timer.losses[0],
        "last_loss": timer.losses[-1],
        "losses_finite": all(math.isfinite(x) for x in timer.losses),
        "peak_memory_gib": peak_memory_gib(lit.device),
        "parameters": parameter_counts(lit.net),
        "wall_s_with_startup": wall,
    }


def run_step(step: str, smoke: bool, args: Any, data_dir: Path, out: Path) -> dict:
    """Run one step in this process and write its JSON to ``out``."""
    spec = step_args(step, smoke, args)
    if "experiment" in spec:
        result = fit(data_dir=data_dir, **spec)
    else:
        argv = [*spec["argv"], "--out", str(out)]
        if step == "pretrain_bench":
            from fashion_vl.bench.cli import training_main

            result = training_main(argv, "pre-training bench", ["pretrain_fashionall"])
        else:
            result = runpy.run_path(str(SCRIPTS / spec["script"]), run_name="acceptance")["main"](argv)
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


def summary_rows(results: dict[str, dict]) -> list[tuple[str, str, str]]:
    """``(step, figure, value)`` rows of the markdown table."""
    rows: list[tuple[str, str, str]] = []

    def fmt(x: Any, spec: str = ".1f") -> str:
        return format(x, spec) if isinstance(x, (int, float)) and x == x else str(x)

    for step, r in results.items():
        if "error" in r:
            rows.append((step, "error", r["error"].splitlines()[-1][:200] if r["error"] else "failed"))
            continue
        rows.append((step, "seconds (step, with start-up)", fmt(r.get("_seconds"), ".0f")))
        if step in ("pretrain_fit", "unifashion_phase1"):
            rows += [
                (step, f"samples/s ({r['precision']}, batch {r['batch_size']}, {r['steps']} steps)",
                 fmt(r["samples_per_s"])),
                (step, "median step s", fmt(r["median_step_s"], ".3f")),
                (step, "peak memory GiB", fmt(r["peak_memory_gib"], ".1f")),
                (step, "losses finite", str(r["losses_finite"])),
                (step, "parameters (total / trainable)",
                 f"{r['parameters']['total']:,} / {r['parameters']['trainable']:,}"),
            ]  # fmt: skip
        elif step == "pretrain_bench":
            for path, entry in (r.get("paths") or {}).items():
                mix = (entry.get("tasks") or {}).get("mix")
                if isinstance(mix, dict) and "samples_per_s" in mix:
                    rows.append((step, f"{path}: mix samples/s", fmt(mix["samples_per_s"])))
            data = r.get("data_path") or {}
            if "ratio" in data:
                rows.append((step, "data path: from files / from device tensors", fmt(data["ratio"], ".2f")))
        elif step == "tryon":
            rows += [
                (step, "train samples/s", fmt(r["train"]["samples_per_s"], ".2f")),
                (step, "train peak memory GiB", fmt(r["train"]["peak_memory_gib"], ".1f")),
                (step, "sampling s per picture", fmt(r["sample"]["seconds_per_image"], ".2f")),
            ]
        elif step == "eval":
            for p in r.get("paths", []):
                rows.append((step, f"{p['path']}: images/s, texts/s, total s",
                             f"{p['images_per_s']:.0f}, {p['texts_per_s']:.0f}, {p['total_s']:.2f}"))  # fmt: skip
    return rows


def markdown(results: dict[str, dict], header: str) -> str:
    lines = [header, "", "| step | figure | value |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(results)]
    return "\n".join(lines) + "\n"


def run_all(args: Any) -> dict[str, Any]:
    """Every asked step (in subprocesses unless ``--cpu-smoke``), then the JSON and the table."""
    from fashion_vl.bench.report import ensure_synthetic, environment

    smoke = bool(args.cpu_smoke)
    steps = args.steps.split(",") if args.steps else list(STEPS)
    for step in steps:
        step_args(step, smoke, args)  # unknown names fail before anything runs
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # each step's own JSON and log stay in a scratch folder: three files come back (a device run
    # returns at most eight), acceptance.json holding every step's JSON and acceptance.log every log
    work_dir = Path(tempfile.mkdtemp(prefix="fvl_acceptance_"))
    log = out_dir / "acceptance.log"
    log.write_text("")
    data_dir = Path(ensure_synthetic(args.data_dir, "tiny" if smoke else "small", 64 if smoke else 256))
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_acceptance: no CUDA device; use --cpu-smoke on a machine without a GPU")
    results: dict[str, dict] = {}
    total = time.perf_counter()
    for step in steps:
        out = work_dir / f"{step}.json"
        start = time.perf_counter()
        try:
            if smoke:
                result = run_step(step, smoke, args, data_dir, out)
            else:
                cmd = [sys.executable, str(SCRIPTS / "gpu_acceptance.py"), "--run-step", step, "--out-dir",
                       str(work_dir), "--data-dir", str(data_dir), *forwarded(args)]  # fmt: skip
                proc = None
                left = args.budget - (time.perf_counter() - total)  # the whole run stays under budget
                try:
                    proc = subprocess.run(cmd, timeout=max(10.0, min(args.step_timeout, left)),
                                          capture_output=True, text=True)  # fmt: skip
                finally:
                    with log.open("a") as f:
                        f.write(f"===== {step}: {' '.join(cmd)}\n")
                        f.write(proc.stdout + proc.stderr if proc is not None else "(timed out)\n")
                if proc.returncode != 0:
                    raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
                result = json.loads(out.read_text())
        except Exception as err:  # one step's failure is a row of the table, not the end of the run
            if smoke and args.strict:
                raise
            result = {"error": f"{type(err).__name__}: {err}"}
        result["_seconds"] = time.perf_counter() - start
        results[step] = result
        print(f"gpu_acceptance: {step} done in {result['_seconds']:.0f} s", file=sys.stderr, flush=True)
    device = torch.device("cuda" if not smoke else "cpu")
    payload = {
        "mode": "cpu-smoke" if smoke else "gpu",
        "environment": environment(device),
        "total_seconds": time.perf_counter() - total,
        "steps": results,
    }
    (out_dir / "acceptance.json").write_text(json.dumps(payload, indent=1, default=str))
    title = f"## GPU acceptance ({payload['mode']}, {payload['environment'].get('device', device)}, " + (
        f"{payload['total_seconds']:.0f} s)"
    )
    (out_dir / "acceptance.md").write_text(markdown(results, title))
    print(markdown(results, title))
    return payload


def forwarded(args: Any) -> list[str]:
    return [
        "--pretrain-steps", str(args.pretrain_steps),
        "--unifashion-steps", str(args.unifashion_steps),
        "--unifashion-batch-size", str(args.unifashion_batch_size),
    ]  # fmt: skip
