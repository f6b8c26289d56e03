"""Print the demo's results table: the trained model against the randomly initialised one.

Usage: python scripts/demo_report.py --trained <metrics.json> --random <metrics.json> [--min-ratio 3]
Exits non-zero when the trained model's text->image R@10 is below ``min_ratio`` x the random one's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashion_vl.utils.rich_utils import print_table, results_table

COLUMNS = ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "rsum")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trained", type=Path, required=True)
    parser.add_argument("--random", type=Path, required=True)
    parser.add_argument("--min-ratio", type=float, default=3.0)
    args = parser.parse_args()
    rows = []
    for name, path in (("random init", args.random), ("trained (ITC)", args.trained)):
        metrics = json.loads(path.read_text())["metrics"]
        split = next(iter(metrics)).split("/")[0]
        rows.append(
            {"model": name, "protocol": "full gallery", **{c: metrics[f"{split}/{c}"] for c in COLUMNS}}
        )
    print_table(
        results_table(
            "FashionViL-tiny on synthetic FashionGen val: image<->text recall (%)",
            rows,
            ["model", "protocol", *COLUMNS],
        )
    )
    trained, random_ = rows[1]["t2i_r@10"], rows[0]["t2i_r@10"]
    ratio = trained / max(random_, 1e-9)
    verdict = "PASS" if ratio >= args.min_ratio else "FAIL"
    print(
        f"text->image R@10: trained {trained:.2f} vs random init {random_:.2f} = {ratio:.1f}x "
        f"(target >= {args.min_ratio:.0f}x): {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
