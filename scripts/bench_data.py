"""Speed of the data path per DataLoader worker process: the pre-training mix's loader, FashionGen from
PNG files vs from the uint8 array store, the decode floor, and the image decoders (with
``--baseline-checkout``, another checkout's mix loader in the same rounds); and the FLOPs of
the frozen VQ tokenizer against the rest of an MPFC step (precomputed MPFC targets or not). JSON out.

All in one process (num_workers=0) on synthetic 256 px data, rounds interleaved (docs/performance.md).

  python scripts/bench_data.py --out bench_data.json
  python scripts/bench_data.py --synth-size tiny --synth-image-size 64 --batch-size 8 --batches 2 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fashion_vl.bench.data import (
    ONLY_FASHIONGEN,
    CheckoutLoader,
    DecodeFloor,
    LoaderStream,
    PillowJpegStream,
    build_datamodule,
    decoder_rates,
    interleaved,
    loader_config_overrides,
    pil_build,
    profile_loader,
    resized_copies,
)
from fashion_vl.bench.report import ensure_synthetic, write_json


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="pretrain_fashionall", help="whose data config to build")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="timed batches per path and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per path first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--data-dir", default=None, help="a datasets/ folder for the mix (default: synthetic)")
    p.add_argument(
        "--fashiongen-dir",
        default=None,
        help="a datasets/ folder with FashionGen's PNGs and its array store (default: synthetic)",
    )
    p.add_argument("--synth-size", default="small")
    p.add_argument("--synth-image-size", type=int, default=256)
    p.add_argument("--resize", type=int, default=256, help="the floor's resize (the transform's)")
    p.add_argument("--crop", type=int, default=224, help="the floor's crop (the transform's)")
    p.add_argument("--decoder-images", type=int, default=150, help="files per decoder set (0: skip)")
    p.add_argument("--draft-sides", default="512,1024", help="larger JPEG copies for Image.draft")
    p.add_argument(
        "--scratch-dir",
        default=str(Path.home() / ".cache" / "fashion_vl" / "bench_data_scratch"),
        help="where the larger JPEG copies are written",
    )
    p.add_argument("--profile-batches", type=int, default=0, help="cProfile the mix loader (0: skip)")
    p.add_argument("--only", default="mix,fashiongen,decoders,mpfc", help="parts to run, comma-separated")
    p.add_argument("--mpfc-batch", type=int, default=2, help="batch the MPFC FLOPs are counted at")
    p.add_argument(
        "--baseline-checkout",
        default=None,
        help="another fashion-vl checkout (its root): its mix loader runs as mix_loader_baseline, a subprocess a round",
    )
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every loader")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    torch.set_num_threads(1)  # one worker process: what each DataLoader worker gets
    overrides = loader_config_overrides(args.batch_size) + args.overrides
    result: dict = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pil": pil_build(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": os.getloadavg()[0],
            "command": " ".join(sys.argv),
        },
        "experiment": args.experiment,
        "batch_size": args.batch_size,
        "batches_per_round": args.batches,
        "rounds": args.rounds,
    }
    runs = {}
    warm = []
    samples = args.batch_size * args.batches
    mix_dir = ensure_synthetic(args.data_dir, args.synth_size, args.synth_image_size)
    if "mix" in parts:
        mix = build_datamodule(args.experiment, mix_dir, overrides)
        stream = LoaderStream(mix)
        pillow = PillowJpegStream(build_datamodule(args.experiment, mix_dir, overrides))
        floor = DecodeFloor(mix, args.resize, args.crop)
        distinct_floor = DecodeFloor(mix, args.resize, args.crop, distinct=True)
        result["mix_products_with_one_file_for_both_views"] = floor.shared_view_share()
        runs["mix_loader"] = lambda: stream.rate(args.batches)
        runs["mix_loader_pillow"] = lambda: pillow.rate(args.batches)
        runs["mix_floor"] = lambda: floor.rate(samples)
        runs["mix_floor_distinct"] = lambda: distinct_floor.rate(samples)
        warm += [lambda: stream.rate(args.warmup), lambda: pillow.rate(args.warmup), lambda: floor.rate(1)]
        if args.baseline_checkout:
            baseline = CheckoutLoader(Path(args.baseline_checkout), args.experiment, mix_dir, args.batch_size)
            result["baseline_checkout"] = str(baseline.checkout)
            runs["mix_loader_baseline"] = lambda: baseline.rate(args.batches)
    if "fashiongen" in parts:
        fg_dir = ensure_synthetic(
            args.fashiongen_dir,
            args.synth_size,
            args.synth_image_size,
            only=["fashiongen"],
            image_store="both",
        )
        files = LoaderStream(build_datamodule(args.experiment, fg_dir, overrides + ONLY_FASHIONGEN))
        array_dm = build_datamodule(
            args.experiment, fg_dir, [*overrides, *ONLY_FASHIONGEN, "data.image_store=array"]
        )
        array = LoaderStream(array_dm)
        fg_floor = DecodeFloor(files.datamodule, args.resize, args.crop)
        runs["fashiongen_files"] = lambda: files.rate(args.batches)
        runs["fashiongen_array"] = lambda: array.rate(args.batches)
        runs["fashiongen_floor"] = lambda: fg_floor.rate(samples)
        warm += [lambda: files.rate(args.warmup), lambda: array.rate(args.warmup), lambda: fg_floor.rate(1)]
    for run in warm if args.warmup else []:
        run()
    if runs:
        result["paths"] = interleaved(runs, args.rounds)
        result["ratios"] = derived_ratios({k: v["samples_per_s"] for k, v in result["paths"].items()})
        result["ratios_cpu"] = derived_ratios({k: v["samples_per_cpu_s"] for k, v in result["paths"].items()})
    if args.profile_batches and "mix" in parts:
        result["mix_loader_profile"] = profile_loader(stream, args.profile_batches)
    if "decoders" in parts and args.decoder_images:
        jpegs = sorted((mix_dir / "BigFACAD" / "images").rglob("*.jpg"))[: args.decoder_images]
        pngs = sorted((mix_dir / "FashionGen" / "train").glob("*.png"))[: args.decoder_images]
        sets = {f"jpeg_{args.synth_image_size}px": jpegs, f"png_{args.synth_image_size}px": pngs}
        for side in (int(s) for s in args.draft_sides.split(",") if s):
            sets[f"jpeg_{side}px"] = resized_copies(jpegs, side, Path(args.scratch_dir) / f"jpeg_{side}px")
        result["decoders_images_per_s"] = decoder_rates(sets, args.rounds, resize=args.resize)
    if "mpfc" in parts:
        from fashion_vl.bench.mpfc import mpfc_flops

        result["mpfc_flops"] = mpfc_flops(mix_dir, args.experiment, batch_size=args.mpfc_batch)
    print_tables(result)
    write_json(result, args.out)
    return result


def derived_ratios(rate: dict[str, float]) -> dict[str, float]:
    ratios = {}
    if "mix_loader" in rate:
        ratios["mix_loader_over_floor"] = rate["mix_loader"] / rate["mix_floor"]
        ratios["mix_loader_pillow_over_floor"] = rate["mix_loader_pillow"] / rate["mix_floor"]
        ratios["mix_loader_over_pillow"] = rate["mix_loader"] / rate["mix_loader_pillow"]
        ratios["mix_loader_over_distinct_floor"] = rate["mix_loader"] / rate["mix_floor_distinct"]
        if "mix_loader_baseline" in rate:
            ratios["mix_loader_over_baseline"] = rate["mix_loader"] / rate["mix_loader_baseline"]
    if "fashiongen_array" in rate:
        ratios["fashiongen_array_over_files"] = rate["fashiongen_array"] / rate["fashiongen_files"]
        ratios["fashiongen_files_over_floor"] = rate["fashiongen_files"] / rate["fashiongen_floor"]
        ratios["fashiongen_array_over_png_floor"] = rate["fashiongen_array"] / rate["fashiongen_floor"]
        if "mix_loader" in rate:
            ratios["fashiongen_array_over_mix_loader"] = rate["fashiongen_array"] / rate["mix_loader"]
    return ratios


def print_tables(result: dict) -> None:
    console = Console(stderr=True)
    if "paths" in result:
        table = Table(
            title=f"data path, one process, batch {result['batch_size']}: samples/s (median of rounds)"
        )
        table.add_column("path")
        table.add_column("samples/s", justify="right")
        table.add_column("rounds", justify="right")
        table.add_column("samples/CPU-s", justify="right")
        table.add_column("rounds", justify="right")
        for name, fig in result["paths"].items():
            table.add_row(
                name,
                f"{fig['samples_per_s']:.0f}",
                " ".join(f"{v:.0f}" for v in fig["rounds"]),
                f"{fig['samples_per_cpu_s']:.0f}",
                " ".join(f"{v:.0f}" for v in fig["rounds_cpu"]),
            )
        console.print(table)
        console.print("wall: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
        console.print("CPU: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios_cpu"].items()))
    if "decoders_images_per_s" in result:
        rates = result["decoders_images_per_s"]
        names = sorted({n for row in rates.values() for n in row})
        table = Table(title=f"decoders, images/s ({result['environment']['pil']})")
        table.add_column("files")
        for name in names:
            table.add_column(name, justify="right")
        for kind, row in rates.items():
            table.add_row(kind, *(f"{row[n]:.0f}" if n in row else "-" for n in names))
        console.print(table)
    if "mpfc_flops" in result:
        console.print("MPFC: " + ", ".join(f"{k} {v:.3g}" for k, v in result["mpfc_flops"].items()))
    for row in result.get("mix_loader_profile", [])[:12]:
        console.print(f"{row['own_share']:6.1%}  {row['own_s']:7.3f}s  {row['function']}")


if __name__ == "__main__":
    main(sys.argv[1:])
