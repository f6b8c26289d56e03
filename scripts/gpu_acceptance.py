"""One acceptance command for a bare GPU machine: pre-training steps (>= 200, bf16, samples/s), the
pre-training bench's three paths and data-path ratio, UniFashion phase 1 at real sizes (>= 50 steps,
a 7B-sized LLM built on the GPU, samples/s, peak memory), the try-on bench and the evaluation bench;
one JSON (acceptance.json) and one markdown table (acceptance.md) in --out-dir. See docs/performance.md.

  python scripts/gpu_acceptance.py --out-dir $OUT                  # GPU, random weights, synthetic data
  python scripts/gpu_acceptance.py --cpu-smoke --out-dir /tmp/acc  # the same steps, tiny configs, CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashion_vl.bench.acceptance import STEPS, run_all, run_step


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny configs on CPU, one process (CI)")
    p.add_argument("--out-dir", default="acceptance", help="where the JSON, the table and step logs go")
    p.add_argument("--steps", default=None, help=f"only these steps, comma-separated ({','.join(STEPS)})")
    p.add_argument("--data-dir", default=None, help="a datasets/ folder (default: synthetic, generated once)")
    p.add_argument("--pretrain-steps", type=int, default=220, help="pretrain_fit steps (>= 200 asked)")
    p.add_argument("--unifashion-steps", type=int, default=60, help="unifashion_phase1 steps (>= 50 asked)")
    p.add_argument("--unifashion-batch-size", type=int, default=128, help="the reference's per-device 128")
    p.add_argument("--step-timeout", type=int, default=150, help="seconds a GPU step may take")
    p.add_argument("--budget", type=int, default=450, help="seconds all GPU steps may take together")
    p.add_argument("--strict", action="store_true", help="--cpu-smoke: raise on the first failing step")
    p.add_argument("--run-step", default=None, help=argparse.SUPPRESS)  # one step, in a child process
    args = p.parse_args(argv)
    if args.run_step:
        out = Path(args.out_dir) / f"{args.run_step}.json"
        return run_step(args.run_step, False, args, Path(args.data_dir), out)
    return run_all(args)


if __name__ == "__main__":
    main(sys.argv[1:])
