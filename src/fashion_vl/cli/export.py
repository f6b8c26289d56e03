"""``fvl-export``: a checkpoint as a Hugging Face style folder (``save_pretrained``).

``fvl-export logs/train/runs/<run>/checkpoints/last.ckpt exported/my-model`` writes ``config.json``,
``model.safetensors``, the tokenizer files and a model card (``README.md``) that ``fashion_vl.load``
and ``Embedder.from_pretrained`` read back (and ``huggingface-cli upload`` publishes). A converted
checkpoint (``fvl-convert`` output) stores no config: name its experiment with ``--experiment``.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source", help="a checkpoint (.ckpt of fvl-train or fvl-convert) or an exported folder"
    )
    parser.add_argument("out", help="the folder to write")
    parser.add_argument(
        "--experiment", help="the experiment the checkpoint's model is (for fvl-convert output)"
    )
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="a Hydra override (repeatable)"
    )
    parser.add_argument("--config", help="instead of --experiment: a run config YAML (.hydra/config.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from fashion_vl.inference import load

    try:
        model = load(
            args.source, device="cpu", experiment=args.experiment, overrides=args.override, config=args.config
        )
        model.save_pretrained(args.out)
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as err:
        print(f"fvl-export: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR
    files = sorted(p.relative_to(args.out).as_posix() for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {args.out}: {', '.join(files)}")
    print(f"  load it: fashion_vl.load({args.out!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
