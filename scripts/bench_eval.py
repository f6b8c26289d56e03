"""Speed of full-gallery evaluation: embedding a FashionGen-val-sized gallery (32,528 images and texts,
random tensors on the device, FashionViL at real size, random weights) and the full-gallery recall in
memory-bounded chunks, under eager fp32, bf16 autocast and the project's default path. JSON out.

  python scripts/bench_eval.py --out bench_eval.json
  python scripts/bench_eval.py --experiment demo_pretrain --num-items 256 --image-size 96 --device cpu
"""

from __future__ import annotations

import argparse
import sys

import torch
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from fashion_vl.bench.evaluation import FASHIONGEN_VAL_IMAGES, bench_gallery
from fashion_vl.bench.report import ensure_synthetic, environment, write_json
from fashion_vl.bench.training import compose_experiment, default_path, reference_paths


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="pretrain_fashionall", help="whose model config to build")
    p.add_argument("--num-items", type=int, default=FASHIONGEN_VAL_IMAGES)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--text-length", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=1024, help="queries ranked at once")
    p.add_argument("--paths", default="eager_fp32,bf16,default")
    p.add_argument("--data-dir", default=None, help="only for the tokenizer (default: synthetic)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_dir = ensure_synthetic(args.data_dir, "tiny", 64)
    cfg = compose_experiment(args.experiment, str(data_dir), args.overrides)
    known = {**reference_paths(), "default": default_path(cfg, device)}
    rows = []
    for name in args.paths.split(","):
        torch.manual_seed(0)
        net = instantiate(cfg.model, _convert_="all")
        rows.append(
            bench_gallery(
                net,
                device,
                known[name],
                num_items=args.num_items,
                image_size=args.image_size,
                text_length=args.text_length,
                vocab_size=net.vocab_size,
                batch_size=args.batch_size,
                chunk_size=args.chunk_size,
            )
        )
        del net
    result = {"environment": environment(device), "experiment": args.experiment, "paths": rows}
    table = Table(title=f"full-gallery evaluation, {args.num_items} items ({device})")
    for col in ("path", "images/s", "texts/s", "recall s", "total s", "peak GiB"):
        table.add_column(col, justify="right")
    for r in rows:
        mem = r["peak_memory_gib"]
        table.add_row(
            r["path"],
            f"{r['images_per_s']:.0f}",
            f"{r['texts_per_s']:.0f}",
            f"{r['full_gallery_recall_s']:.2f}",
            f"{r['total_s']:.2f}",
            f"{mem:.1f}" if mem else "-",
        )
    Console(stderr=True).print(table)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
