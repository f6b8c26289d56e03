"""Speed of FashionViL pre-training steps: samples/s per task and for the sampled six-task mix.

Compares in one run (a) eager fp32 (TF32 off), (b) bf16 autocast, (c) the project's default path, and
(d) the step's components at the same shapes (overhead ratio); adds FLOPs per sample, MFU against a
measured matmul peak, peak memory, the loss deviation of each path, and the DataLoader-fed rate.
See docs/performance.md.

  python scripts/bench_pretrain.py --out bench_pretrain.json            # real sizes, batch 256, GPU
  python scripts/bench_pretrain.py --experiment demo_pretrain --batch-size 8 --steps 3 --device cpu
"""

from __future__ import annotations

import sys

from fashion_vl.bench.cli import training_main

if __name__ == "__main__":
    training_main(sys.argv[1:], __doc__.splitlines()[0], ["pretrain_fashionall"])
