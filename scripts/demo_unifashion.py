"""UniFashion part 1 on the synthetic data, end to end on CPU: phase 1 -> phase 2, each model evaluated
before and after training.

- **Phase 1** (``demo_unifashion_phase1``: ITC, ITM, ITG and the LLM caption loss on FashionGen): the
  test products' first images captioned by the LLM branch, scored with BLEU-4 and CIDEr against the
  product texts, and how often a caption names the product's colour and its category (the words of the
  synthetic taxonomy, :mod:`fashion_vl.metrics.caption_attributes`); examples are printed.
- **Phase 2** (``demo_unifashion_phase2``: ITC, TTC and ITM on FashionIQ, from the phase-1 Q-Former):
  FashionIQ mean R@10 over the three categories with and without ITM re-ranking, against chance (10 /
  gallery size per category) and the untrained model.

Checks (the script exits non-zero when one fails; under ``--fidelity reference`` they are reported, not
gated: they are the acceptance of our defaults, and the authors' computation fails the re-ranking one,
docs/fidelity.md): trained BLEU-4 and CIDEr above the untrained model's;
trained R@10 above chance and the untrained model's; re-ranking not worse than the ITC ranking
(:func:`rerank_worse`: a lower re-ranked R@10 fails only when the paired sign test over the queries whose
top-10 hit changed says so, p < 0.05; one query is 0.56 points, and at this scale the ITM head moves a
handful of queries either way from run to run). The caption-attribute shares are stated, not gated.

Usage (what ``make demo-unifashion`` runs; ``make demo-unifashion FIDELITY=reference`` adds
``--fidelity reference``, every run then computes as the authors' code, ``docs/fidelity.md``):
  python scripts/demo_unifashion.py --data data/synthetic --data-seed 0 --logs logs/demo_unifashion

Prints the table and caption examples, writes ``<logs>/results.json``; ``--reuse`` skips the runs that
finished (their ``metrics.json`` exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from demo_runs import metrics, run_dir, run_once

from fashion_vl.data.composed import fashioniq_eval_items
from fashion_vl.data.formats.fashioniq import FASHIONIQ_CATEGORIES
from fashion_vl.data.synth.taxonomy import caption_vocabulary
from fashion_vl.metrics.caption_attributes import caption_attribute_shares
from fashion_vl.metrics.composed import chance_group_recall, sign_test_worse
from fashion_vl.utils.rich_utils import print_table, results_table

NEEDED = {"fashiongen", "fashioniq"}  # what the two phases read (FashionIQ includes Fashion-IQ-Cap)
ALPHA = 0.05  # the sign test's level for "re-ranking is worse"


def rerank_worse(itc: float, reranked: float, gained: int, lost: int, alpha: float = ALPHA) -> str | None:
    """Why re-ranking counts as worse than the ITC ranking, or None: its recall is lower *and* the
    queries it dropped from the top K outnumber those it brought in beyond chance (one-sided exact sign
    test, :func:`~fashion_vl.metrics.composed.sign_test_worse`, p < ``alpha``)."""
    if reranked >= itc:
        return None
    p = sign_test_worse(gained, lost)
    if p >= alpha:
        return None
    return f"ITM re-ranking lowers FashionIQ R@10 ({itc:.2f} -> {reranked:.2f}; {lost} queries lost, {gained} gained, sign test p={p:.3g})"


def fashioniq_chance(data: Path, k: int = 10) -> float:
    """Mean R@k of a random ranking over the test gallery (FashionIQ's val: every distinct target of a
    category, ``fake_data`` included)."""
    items = fashioniq_eval_items(data, FASHIONIQ_CATEGORIES, "val")
    return chance_group_recall([(i.gallery.group, i.gallery.key) for i in items], k)


def caption_rows(logs: Path, name: str) -> list[dict]:
    path = run_dir(logs, "eval", name) / "captions.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: the phase-1 evaluation wrote no captions")
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--logs", type=Path, default=Path("logs/demo_unifashion"))
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: <logs>/results.json)")
    ap.add_argument("--seed", type=int, default=42, help="the runs' seed (the experiments' default)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data, when written")
    ap.add_argument("--captions", type=int, default=64, help="test products captioned")
    ap.add_argument("--examples", type=int, default=8, help="captions printed")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose metrics.json exists")
    ap.add_argument(
        "--fidelity", choices=("ours", "reference"), default="ours",
        help="fidelity=<preset> for every run: ours, or the authors' computation (docs/fidelity.md)",
    )  # fmt: skip
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data, logs = args.data.resolve(), args.logs.resolve()
    manifest = data / "synthetic_manifest.json"
    written = set(json.loads(manifest.read_text()).get("datasets", [])) if manifest.is_file() else set()
    if not written >= NEEDED:
        synth = ["fvl-data", "synth", "--out", str(data), "--size", "small", "--seed", str(args.data_seed)]
        subprocess.check_call([*synth, "--skip-existing"])
    logs.mkdir(parents=True, exist_ok=True)
    # one seed for both phases (phase 2 loads phase 1's frozen random ViT with its Q-Former either way)
    common = [f"paths.data_dir={data}", f"seed={args.seed}", f"fidelity={args.fidelity}"]

    def run(tool: str, run_args: list[str]) -> None:
        run_once(tool, run_args, logs, args.reuse)

    phase1 = ["experiment=demo_unifashion_phase1", *common, f"lit.caption_eval.max_images={args.captions}"]
    run("fvl-eval", [*phase1, "run_name=phase1_untrained"])
    run("fvl-train", [*phase1, "run_name=phase1"])
    phase1_ckpt = run_dir(logs, "train", "phase1") / "checkpoints" / "last.ckpt"
    run("fvl-eval", [*phase1, "run_name=phase1_trained", f"ckpt_path={phase1_ckpt}"])
    phase2 = ["experiment=demo_unifashion_phase2", *common]
    run("fvl-eval", [*phase2, "run_name=phase2_untrained"])
    run("fvl-train", [*phase2, "run_name=phase2", f"model.qformer.init_from={phase1_ckpt}"])

    c0, c1 = metrics(logs, "eval", "phase1_untrained"), metrics(logs, "eval", "phase1_trained")
    r0, r1 = metrics(logs, "eval", "phase2_untrained"), metrics(logs, "train", "phase2")
    captions = {name: caption_rows(logs, name) for name in ("phase1_untrained", "phase1_trained")}
    shares = {
        name: caption_attribute_shares(
            [r["caption"] for r in rows], [r["references"][0] for r in rows], *caption_vocabulary()
        )
        for name, rows in captions.items()
    }
    s0, s1 = shares["phase1_untrained"], shares["phase1_trained"]
    chance, chance50 = fashioniq_chance(data, 10), fashioniq_chance(data, 50)
    rows = [
        {"check": "captioning: BLEU-4", "chance": "-",
         "untrained": c0["test/caption/bleu_4"], "trained": c1["test/caption/bleu_4"]},
        {"check": "captioning: CIDEr", "chance": "-",
         "untrained": c0["test/caption/cider"], "trained": c1["test/caption/cider"]},
        {"check": f"captions naming the colour (%, n={s1.n})", "chance": "-",
         "untrained": 100 * s0.colour, "trained": 100 * s1.colour},
        {"check": f"captions naming the category (%, n={s1.n})", "chance": "-",
         "untrained": 100 * s0.category, "trained": 100 * s1.category},
        {"check": "captions naming both (%)", "chance": "-",
         "untrained": 100 * s0.colour_and_category, "trained": 100 * s1.colour_and_category},
        {"check": "FashionIQ mean R@10, ITC", "chance": chance,
         "untrained": r0["test/mean_r@10"], "trained": r1["test/mean_r@10"]},
        {"check": "FashionIQ mean R@10, ITM re-ranked", "chance": chance,
         "untrained": r0["test/rerank/mean_r@10"], "trained": r1["test/rerank/mean_r@10"]},
        {"check": "FashionIQ mean R@50, ITC", "chance": chance50,
         "untrained": r0["test/mean_r@50"], "trained": r1["test/mean_r@50"]},
        {"check": "FashionIQ mean R@50, ITM re-ranked", "chance": chance50,
         "untrained": r0["test/rerank/mean_r@50"], "trained": r1["test/rerank/mean_r@50"]},
    ]  # fmt: skip
    print_table(results_table("UniFashion phase 1 -> phase 2 on the synthetic data", rows,
                              ["check", "chance", "untrained", "trained"]))  # fmt: skip
    examples = [
        {"product text": r["references"][0], "untrained": u["caption"], "trained": r["caption"]}
        for u, r in zip(captions["phase1_untrained"], captions["phase1_trained"], strict=True)
    ][: args.examples]
    print_table(results_table("captions of test products", examples))

    failures = []
    for key, what in (("test/caption/bleu_4", "BLEU-4"), ("test/caption/cider", "CIDEr")):
        if not c1[key] > c0[key]:
            failures.append(f"captioning {what} not above the untrained model's")
    if not r1["test/mean_r@10"] > max(chance, r0["test/mean_r@10"]):
        failures.append("FashionIQ R@10 not above chance and the untrained model")
    gained, lost = int(r1["test/rerank/gained_r@10"]), int(r1["test/rerank/lost_r@10"])
    print(
        f"re-ranking, top 10: {gained} queries gained, {lost} lost "
        f"(one-sided sign test that it is worse: p={sign_test_worse(gained, lost):.3g})"
    )
    worse = rerank_worse(r1["test/mean_r@10"], r1["test/rerank/mean_r@10"], gained, lost)
    if worse:
        failures.append(worse)
    payload = {
        "rows": rows, "examples": examples, "failures": failures,
        "rerank_top10_changes": {"gained": gained, "lost": lost, "sign_test_p_worse": sign_test_worse(gained, lost)},
        "caption_shares": {name: vars(s) for name, s in shares.items()},
        "settings": vars(args) | {"data": str(data), "logs": str(logs)},
    }  # fmt: skip
    out = args.out or logs / "results.json"
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"results written to {out}")
    outcome = verdict(failures, args.fidelity)
    if outcome.startswith("FAILED"):
        sys.exit(outcome)
    print(outcome)


def verdict(failures: list[str], fidelity: str) -> str:
    """``PASS``, or ``FAILED: ...`` (the script exits non-zero); under ``fidelity=reference`` the checks,
    which hold our defaults, are reported and the run does not fail."""
    if not failures:
        return "PASS"
    if fidelity == "reference":
        return (
            "the authors' computation (fidelity=reference) fails checks of our defaults, reported only: "
            + "; ".join(failures)
        )
    return "FAILED: " + "; ".join(failures)


if __name__ == "__main__":
    main()
