"""What the training benchmarks share around the timing: the data folder, the run environment, the
summary figures (speed-ups, MFU, overhead ratio, precision deviation), JSON and the printed table."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from fashion_vl.bench.timing import matmul_peak
from fashion_vl.bench.training import ExecutionPath, StepBench, default_path, reference_paths


def ensure_synthetic(
    data_dir: str | None,
    size: str,
    image_size: int,
    only: Sequence[str] | None = None,
    image_store: str = "files",
) -> Path:
    """The data folder to read: ``data_dir`` as given, else synthetic data generated once into the
    user cache (FashionGen-like 256 px images by default, so decoding costs what the real files do;
    ``only``: just those datasets, e.g. ``["vitonhd"]``; ``image_store``: FashionGen's images as
    ``files``, ``array`` or ``both``)."""
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--data-dir {path} does not exist")
        return path
    from fashion_vl.data.synth import generate

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fashion_vl"
    which = "_".join(only) + "_" if only else ""
    store = f"_{image_store}" if image_store != "files" else ""
    path = cache / f"bench_synth_{which}{size}_{image_size}px{store}" / "datasets"
    if not (path / "synthetic_manifest.json").is_file():
        print(f"writing synthetic data ({size}, {image_size} px) to {path}", file=sys.stderr)
        generate(path, size=size, image_size=image_size, overwrite=True, only=only, image_store=image_store)
    return path


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def resolved_sections(cfg: DictConfig, keys: tuple[str, ...] = ("data", "model", "lit", "trainer")) -> dict:
    out = {}
    for key in keys:
        try:
            out[key] = OmegaConf.to_container(cfg[key], resolve=True)
        except Exception:  # an interpolation into Hydra's runtime (output paths): keep it unresolved
            out[key] = OmegaConf.to_container(cfg[key], resolve=False)
    return out


def run_training_bench(
    bench: StepBench,
    paths: list[str],
    *,
    tasks: list[str] | None = None,
    components: bool = True,
    data_path: bool = True,
    flops: bool = True,
) -> dict[str, Any]:
    """Every requested path, then the derived figures; the JSON payload of ``bench_pretrain.py``."""
    device = bench.device
    known: dict[str, ExecutionPath] = {**reference_paths(), "default": default_path(bench.cfg, device)}
    unknown = sorted(set(paths) - set(known))
    if unknown:
        raise ValueError(f"--paths: unknown {unknown}; choose from {sorted(known)}")
    result: dict[str, Any] = {
        "environment": environment(device),
        "batch_size": bench.batch_size,
        "steps": bench.steps,
        "warmup": bench.warmup,
        "config": resolved_sections(bench.cfg),
        "paths": {},
    }
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result["matmul_peak_tflops"] = {
        str(peak_dtype).removeprefix("torch."): matmul_peak(device, peak_dtype) / 1e12
    }
    for name in paths:
        result["paths"][name] = bench.run_path(known[name], tasks)
    if flops:
        result["flops_per_sample"] = bench.flops_per_sample()
    if components and "default" in known:
        result["components_s"] = bench.components(known["default"])
    if data_path:
        main = "mix" if "mix" in next(iter(result["paths"].values()))["tasks"] else "train"
        result["data_path"] = bench.data_path(known["default"], main)
    derive(result)
    return result


def derive(result: dict[str, Any]) -> None:
    """Speed-up over eager fp32, MFU, overhead ratio and the loss deviation of each path, in place."""
    paths = result["paths"]
    base = paths.get("eager_fp32")
    peak = next(iter(result["matmul_peak_tflops"].values())) * 1e12
    flops = result.get("flops_per_sample", {})
    for name, figures in paths.items():
        for task, row in figures["tasks"].items():
            if base and task in base["tasks"]:
                row["speedup_vs_eager_fp32"] = row["samples_per_s"] / base["tasks"][task]["samples_per_s"]
            if task in flops:
                row["mfu"] = flops[task] * row["samples_per_s"] / peak
        if base and name != "eager_fp32":
            figures["loss_deviation_vs_eager_fp32"] = {
                t: abs(v - base["initial_loss"][t])
                for t, v in figures["initial_loss"].items()
                if t in base["initial_loss"]
            }
    parts = result.get("components_s") or {}
    default = paths.get("default")
    if parts and default:
        batch = result["batch_size"]
        shapes = {
            "itc": parts["cnn"] + parts["bert_text"] + parts["optimizer"],
            "mlm": parts["cnn"] + parts["bert_fused"] + parts["optimizer"],
        }
        result["overhead_ratio"] = {
            task: (batch / default["tasks"][task]["samples_per_s"]) / total
            for task, total in shapes.items()
            if task in default["tasks"]
        }


def write_json(result: dict[str, Any], path: str | None) -> None:
    text = json.dumps(result, indent=1, default=str)
    if path:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(path).expanduser().write_text(text)


def print_training_table(result: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    paths = result["paths"]
    tasks = list(next(iter(paths.values()))["tasks"])
    table = Table(
        title=f"{title}: samples/s at batch {result['batch_size']} ({result['environment']['device']})"
    )
    table.add_column("path")
    for task in tasks:
        table.add_column(task, justify="right")
    table.add_column("peak GiB", justify="right")
    table.add_column("x eager fp32", justify="right")
    table.add_column("MFU", justify="right")
    main = "mix" if "mix" in tasks else tasks[-1]
    for name, figures in paths.items():
        rows = figures["tasks"]
        memory = max((r["peak_memory_gib"] or 0.0) for r in rows.values())
        head = rows.get(main, {})
        table.add_row(
            name,
            *(f"{rows[t]['samples_per_s']:.1f}" if t in rows else "-" for t in tasks),
            f"{memory:.1f}" if memory else "-",
            f"{head.get('speedup_vs_eager_fp32', float('nan')):.2f}",
            f"{100 * head['mfu']:.1f}%" if "mfu" in head else "-",
        )
    console.print(table)
    extra = []
    if "overhead_ratio" in result:
        extra.append(
            "overhead step/(sum of parts): "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["overhead_ratio"].items())
        )
    if "data_path" in result:
        d = result["data_path"]
        extra.append(
            f"data path: {d['files_samples_per_s']:.1f} samples/s from files vs {d['tensors_samples_per_s']:.1f} "
            f"from device tensors (ratio {d['ratio']:.2f})"
        )
    for name, figures in paths.items():
        dev = figures.get("loss_deviation_vs_eager_fp32")
        if dev:
            extra.append(f"{name}: max |loss - eager fp32 loss| {max(dev.values()):.2e}")
    for line in extra:
        console.print(line)
