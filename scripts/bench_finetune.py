"""Speed of the fine-tuning steps (retrieval, FashionIQ and Fashion200k composition, classification):
samples/s under eager fp32, bf16 autocast and the project's default path, with FLOPs, MFU, peak memory
and the DataLoader-fed rate, as bench_pretrain.py. See docs/performance.md.

  python scripts/bench_finetune.py --out bench_finetune.json
  python scripts/bench_finetune.py --experiment demo_finetune_retrieval --batch-size 8 --device cpu
"""

from __future__ import annotations

import sys

from fashion_vl.bench.cli import training_main

EXPERIMENTS = [
    "finetune_retrieval_fashiongen",
    "finetune_composed_fashioniq",
    "finetune_composed_fashion200k",
    "finetune_classification_fashiongen",
]

if __name__ == "__main__":
    training_main(sys.argv[1:], __doc__.splitlines()[0], EXPERIMENTS)
