"""UniFashion's diffusion branch on the synthetic data, end to end on CPU: does it learn?

Two checks, each against the same pipeline before training and against chance:

- **try-on editing** (``demo_unifashion_phase2_tryon``): after training, the edited people keep the
  region outside the agnostic mask (``test/keep_psnr``, dB, no paste-back) better than before, and
  above ``--min-keep-psnr``;
- **generation** (``demo_unifashion_phase1_diffusion``): pictures redrawn from a product's query outputs
  and text show the colour and the category the text names more often than before training and
  than the best constant guess, as judged by an attribute classifier trained on the synthetic images
  (``demo_attribute_judge``). The same judge on the fitted VAE's reconstructions of those products is
  the ceiling generation through that VAE can reach ("VAE ceiling"). Pattern is reported, not
  checked: that ceiling is no higher than the constant answer.

The tiny VAEs are fitted first (``demo_diffusion_vae``, ``demo_diffusion_vae_products``): a random VAE
does not invert itself.

Usage (what ``make demo-generation`` runs):
  python scripts/demo_generation.py --data data/synthetic_generation --logs logs/demo_generation \\
      --out logs/demo_generation/results.json

Prints the table, writes the JSON and the four result grids (``<logs>/eval/runs/*/generated_examples.png``),
and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
from demo_runs import metrics, run_once

from fashion_vl.data.formats import FashionGenSource
from fashion_vl.data.garment_labels import GARMENT_VOCABS, asked_from_texts
from fashion_vl.data.images import load_image
from fashion_vl.data.transforms import FASHION_MEAN, FASHION_STD, resize_crop
from fashion_vl.metrics.generation import attribute_accuracy
from fashion_vl.models.attribute_judge import load_attribute_judge
from fashion_vl.models.unifashion.diffusion import load_fitted_vae, to_vae_range
from fashion_vl.utils.rich_utils import print_table, results_table

GENERATED = 150  # test products redrawn and judged: all of the small FashionGen val split


def constant_guess(data: Path, count: int, split: str = "val") -> dict[str, float]:
    """Percent right of the best constant answer per attribute, over what the texts of the first
    ``count`` products of ``split`` ask (FashionGen's test split is its val file; the test loader
    reads its products in file order)."""
    texts = [p.text for p in FashionGenSource(data, split).read().products][:count]
    asked = asked_from_texts(texts)
    out = {}
    for name in GARMENT_VOCABS:
        values = [int(v) for v in asked[name] if v >= 0]
        out[name] = 100.0 * Counter(values).most_common(1)[0][1] / len(values) if values else float("nan")
    return out


@torch.no_grad()
def vae_ceiling(data: Path, vae_ckpt: Path, judge_ckpt: Path, count: int, side: int = 32) -> dict[str, float]:
    """Attribute accuracy of the fitted VAE's reconstructions of the judged products' first images:
    what generation through that VAE can reach at best."""
    from hydra.utils import instantiate

    payload = torch.load(vae_ckpt, map_location="cpu", weights_only=True)
    vae = instantiate(payload["fvl_config"]["model"]).eval()
    load_fitted_vae(vae, str(vae_ckpt))
    judge = load_attribute_judge(judge_ckpt)
    table = FashionGenSource(data, "val").read()
    products = table.products[:count]
    transform = resize_crop(train=False, size=side, resize=side)
    images = torch.stack([transform(load_image(table.image_dir, p.images[0])) for p in products])
    pixels = to_vae_range(images, FASHION_MEAN, FASHION_STD)
    recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
    asked = asked_from_texts([p.text for p in products])
    return {k.removesuffix("_acc"): v for k, v in attribute_accuracy(judge, recon, asked).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synthetic_generation"))
    ap.add_argument("--logs", type=Path, default=Path("logs/demo_generation"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tryon-steps", type=int, default=400)
    ap.add_argument("--generation-steps", type=int, default=600)
    ap.add_argument("--min-keep-psnr", type=float, default=15.0)
    ap.add_argument("--reuse", action="store_true", help="keep the runs that already wrote metrics.json")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data, logs = args.data.resolve(), args.logs.resolve()
    manifest = data / "synthetic_manifest.json"
    written = json.loads(manifest.read_text()).get("datasets", []) if manifest.is_file() else []
    if not {"fashiongen", "vitonhd"} <= set(written):
        if data.exists():
            shutil.rmtree(data)
        subprocess.check_call(
            ["fvl-data", "synth", "--out", str(data), "--size", "small", "--seed", str(args.seed),
             "--image-size", "64", "--only", "fashiongen,vitonhd"]
        )  # fmt: skip
    logs.mkdir(parents=True, exist_ok=True)
    common = [f"paths.data_dir={data}", f"seed={args.seed}"]
    train_runs = logs / "train" / "runs"

    def run(tool: str, run_args: list[str], logs: Path) -> None:
        run_once(tool, run_args, logs, args.reuse)

    # ---- try-on editing
    run("fvl-train", ["experiment=demo_diffusion_vae", "run_name=vae_people", *common], logs)
    vae_people = f"model.branch.vae_from={train_runs / 'vae_people/checkpoints/last.ckpt'}"
    tryon = ["experiment=demo_unifashion_phase2_tryon", vae_people, *common]
    run("fvl-eval", [*tryon, "run_name=tryon_untrained", "+viz=true"], logs)
    run("fvl-train", [*tryon, "run_name=tryon", f"trainer.max_steps={args.tryon_steps}",
                      f"trainer.val_check_interval={args.tryon_steps // 2}"], logs)  # fmt: skip
    run("fvl-eval", [*tryon, "run_name=tryon_trained", "+viz=true",
                     f"ckpt_path={train_runs / 'tryon/checkpoints/last.ckpt'}"], logs)  # fmt: skip

    # ---- generation
    run("fvl-train", ["experiment=demo_attribute_judge", "run_name=judge", *common], logs)
    run("fvl-train", ["experiment=demo_diffusion_vae_products", "run_name=vae_products", *common], logs)
    generation = [
        "experiment=demo_unifashion_phase1_diffusion", *common,
        f"model.diffusion.vae_from={train_runs / 'vae_products/checkpoints/last.ckpt'}",
        f"lit.generation_eval.judge={train_runs / 'judge/checkpoints/last.ckpt'}",
        f"lit.generation_eval.max_images={GENERATED}", "lit.caption_eval.max_images=0",
        # the reference's "generative alignment" routine without the LLM: the diffusion loss alone
        "lit.task_weights.itc=0", "lit.task_weights.itm=0", "lit.task_weights.itg=0", "lit.task_weights.caption=0",
    ]  # fmt: skip
    run("fvl-eval", [*generation, "run_name=generation_untrained", "+viz=true"], logs)
    run("fvl-train", [*generation, "run_name=generation", f"trainer.max_steps={args.generation_steps}",
                      f"trainer.val_check_interval={args.generation_steps}"], logs)  # fmt: skip
    run("fvl-eval", [*generation, "run_name=generation_trained", "+viz=true",
                     f"ckpt_path={train_runs / 'generation/checkpoints/last.ckpt'}"], logs)  # fmt: skip

    # ---- table and checks
    before, after = metrics(logs, "eval", "tryon_untrained"), metrics(logs, "eval", "tryon_trained")
    g0, g1 = metrics(logs, "eval", "generation_untrained"), metrics(logs, "eval", "generation_trained")
    chance = constant_guess(data, GENERATED)
    ceiling = vae_ceiling(data, train_runs / "vae_products/checkpoints/last.ckpt",
                          train_runs / "judge/checkpoints/last.ckpt", GENERATED)  # fmt: skip
    rows = [
        {"check": "try-on: PSNR outside the mask (dB)", "chance": f"> {args.min_keep_psnr:.0f} (bound)",
         "untrained": before["test/keep_psnr"], "trained": after["test/keep_psnr"], "VAE ceiling": "-"},
        {"check": "try-on: SSIM outside the mask", "chance": "-",
         "untrained": before["test/keep_ssim"], "trained": after["test/keep_ssim"], "VAE ceiling": "-"},
    ]  # fmt: skip
    for name in GARMENT_VOCABS:
        rows.append(
            {"check": f"generation: {name} accuracy (%)", "chance": chance[name],
             "untrained": g0[f"test/generation/{name}_acc"], "trained": g1[f"test/generation/{name}_acc"],
             "VAE ceiling": ceiling[name]}
        )  # fmt: skip
    columns = ["check", "chance", "untrained", "trained", "VAE ceiling"]
    print_table(results_table("UniFashion diffusion on the synthetic data", rows, columns))
    failures = []
    if not after["test/keep_psnr"] > max(before["test/keep_psnr"], args.min_keep_psnr):
        failures.append("try-on keep-region PSNR")
    for name in ("colour", "category"):  # pattern: the VAE ceiling is the constant answer (docs)
        key = f"test/generation/{name}_acc"
        if not g1[key] > max(g0[key], chance[name]):
            failures.append(f"generation {name} accuracy")
    grids = sorted(str(p) for p in (logs / "eval" / "runs").glob("*/generated_examples.png"))
    payload = {"rows": rows, "chance": chance, "vae_ceiling": ceiling, "failures": failures, "grids": grids,
               "settings": vars(args) | {"data": str(data), "logs": str(logs)}}  # fmt: skip
    out = args.out or logs / "results.json"
    out.write_text(json.dumps(payload, indent=1, default=str))
    print("grids:", *grids, sep="\n  ")
    if failures:
        sys.exit(f"FAILED: {', '.join(failures)}")
    print("PASS")


if __name__ == "__main__":
    main()
