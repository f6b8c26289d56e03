"""``fvl-convert``: import the authors' checkpoints as checkpoints of ours.

Subcommands:
  mmf    a FashionViL checkpoint of the MMF code (pre-training or a fine-tune) -> our LightningModule's
         state dict, usable as ``model.init_from=<out>`` or ``ckpt_path=<out>``; optionally also the
         MPFC VQ-VAE encoder file (``--vqvae``) -> a file for ``model/image_tokenizer/vq_ckpt``
  vqvae  only the VQ-VAE encoder file
  lavis  a LAVIS BLIP-2 / UniFashion checkpoint -> transformers ``Blip2ForImageTextRetrieval`` names
         (+ ``prompt_tokens``, ``llm_proj.*``, ``temp``, ``itg_head.*``, ``proj_layer.*``); the authors'
         EVA ViT, when the file has it, is what ``model.image_encoder`` then loads

Every source key must be used (or be known to be redundant) and every target key filled; otherwise
the command prints what is unmapped or missing, writes nothing and exits with 2, unless
``--allow-missing``. A shape mismatch is always refused. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fashion_vl.convert.common import (
    CheckpointLoadError,
    ConversionReport,
    extract_state_dict,
    lightning_checkpoint,
    load_file,
)
from fashion_vl.utils.io import save_atomic

console = Console(width=200) if not Console().is_terminal else Console()

EXIT_REFUSED = 2
EXIT_ERROR = 1
# the LightningModule config (conf/lit) whose state dict a converted MMF checkpoint of each task is
LIT_OF_TASK = {
    "pretrain": "pretrain",
    "classification": "classification",
    "contrastive": "retrieval",
    "composition": "composed",
}


def report_table(title: str, report: ConversionReport) -> Table:
    table = Table(title=title)
    table.add_column("keys", justify="left")
    table.add_column("count", justify="right")
    bad = {"unmapped source keys", "missing target keys", "tied-tensor conflicts", "shape mismatches"}
    for label, n in report.counts():
        style = "red" if label in bad and n else None
        table.add_row(label, str(n), style=style)
    return table


def show(title: str, report: ConversionReport, verbose: bool = False) -> None:
    console.print(report_table(title, report))
    for line in report.problems():
        console.print(Text(f"  {line}", style="red"))
    if verbose:
        for target, note in sorted(report.converted.items()):
            console.print(f"  converted: {target}: {note}", highlight=False, markup=False)
        for key, reason in sorted(report.dropped.items()):
            console.print(f"  dropped:   {key}: {reason}", highlight=False, markup=False)
    for key, reason in sorted(report.defaulted.items()):
        console.print(f"  defaulted: {key}: {reason}", highlight=False, markup=False)


def read_state(path: str, trust_pickle: bool) -> dict:
    return extract_state_dict(load_file(path, trust_pickle), what=str(path))


def read_architecture(path: str | None) -> dict[str, Any] | None:
    """``build_vqmodel`` arguments from a YAML file: a ``conf/model/vqvae*.yaml`` (its ``defaults``
    and ``_target_`` ignored) or a tokenizer config with an ``architecture:`` block
    (``conf/model/image_tokenizer/vq_random_tiny.yaml``)."""
    if path is None:
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    if "architecture" in cfg:
        cfg = cfg.architecture
    data = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in data.items() if k != "defaults" and not str(k).startswith("_")}


def decide(reports: Mapping[str, ConversionReport], allow_missing: bool) -> bool:
    """Print the verdict; True when the outputs may be written."""
    unloadable = [name for name, r in reports.items() if not r.loadable]
    lossy = [name for name, r in reports.items() if not r.lossless]
    if unloadable:
        console.print(
            f"[red]refused: shape mismatches in {', '.join(unloadable)} (the source does not fit this "
            "architecture; check --num-visual-tokens / --vqvae-architecture); nothing written"
        )
        return False
    if lossy and not allow_missing:
        console.print(
            f"[red]refused: {', '.join(lossy)} would lose or lack weights (listed above); nothing written. "
            "Pass --allow-missing to write what maps anyway."
        )
        return False
    if lossy:
        console.print(f"[yellow]--allow-missing: writing {', '.join(lossy)} without the keys listed above")
    return True


def source_note(kind: str, path: str, report: ConversionReport, **more: Any) -> dict[str, Any]:
    return {
        "converter": "fvl-convert",
        "format": kind,
        "file": str(Path(path).expanduser().resolve()),
        **more,
        "report": report.as_dict(),
    }


def vq_payload(state: Mapping, architecture: Mapping[str, Any] | None, path: str, report) -> dict:
    """A checkpoint ``VQTokenizer.from_checkpoint`` (``model/image_tokenizer/vq_ckpt``) reads: weights under
    ``net.`` and the architecture as ``fvl_config.model``."""
    from fashion_vl.convert.mmf import vq_architecture_args

    model = {"_target_": "fashion_vl.models.vqvae.build_vqmodel", **vq_architecture_args(architecture)}
    return lightning_checkpoint(
        {f"net.{k}": v for k, v in state.items()},
        source_note("taming-vq", path, report),
        fvl_config={"model": model},
    )


def _same_file(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


# ---------------------------------------------------------------------------------------------------


def cmd_mmf(args: argparse.Namespace) -> int:
    from fashion_vl.convert.mmf import convert_mmf_state_dict, convert_vq_state_dict

    if (args.vqvae is None) != (args.vqvae_out is None):
        console.print("[red]--vqvae and --vqvae-out go together")
        return EXIT_REFUSED
    if _same_file(args.src, args.out) or (args.vqvae and _same_file(args.vqvae, args.vqvae_out)):
        console.print("[red]the output would overwrite its own source")
        return EXIT_REFUSED
    architecture = read_architecture(args.vqvae_architecture)
    state = read_state(args.src, args.trust_pickle)
    vq_state = read_state(args.vqvae, args.trust_pickle) if args.vqvae else None
    ours, report = convert_mmf_state_dict(
        state, args.task, args.num_visual_tokens, architecture, vq_state=vq_state
    )
    reports = {args.out: report}
    show(f"MMF FashionViL ({report.kind.split(':')[1]})", report, args.verbose)
    if vq_state is not None:
        vq, vq_report = convert_vq_state_dict(vq_state, architecture)
        reports[args.vqvae_out] = vq_report
        show("MPFC VQ-VAE encoder", vq_report, args.verbose)
    if not decide(reports, args.allow_missing):
        return EXIT_REFUSED
    task = report.kind.split(":")[1]
    save_atomic(lightning_checkpoint(ours, source_note("mmf", args.src, report, task=task)), args.out)
    console.print(f"[green]wrote {args.out}[/] ({len(ours)} tensors)")
    console.print(
        f"  fine-tune from its encoder: model.init_from={args.out}\n"
        f"  evaluate it as is: fvl-eval lit={LIT_OF_TASK[task]} ... ckpt_path={args.out}",
        highlight=False,
    )
    if vq_state is not None:
        save_atomic(vq_payload(vq, architecture, args.vqvae, vq_report), args.vqvae_out)
        console.print(
            f"[green]wrote {args.vqvae_out}[/]: "
            f"model/image_tokenizer=vq_ckpt model.image_tokenizer.path={args.vqvae_out}"
        )
    return 0


def cmd_vqvae(args: argparse.Namespace) -> int:
    from fashion_vl.convert.mmf import convert_vq_state_dict

    if _same_file(args.src, args.out):
        console.print("[red]the output would overwrite its own source")
        return EXIT_REFUSED
    architecture = read_architecture(args.vqvae_architecture)
    vq, report = convert_vq_state_dict(read_state(args.src, args.trust_pickle), architecture)
    show("MPFC VQ-VAE encoder", report, args.verbose)
    if not decide({args.out: report}, args.allow_missing):
        return EXIT_REFUSED
    save_atomic(vq_payload(vq, architecture, args.src, report), args.out)
    console.print(
        f"[green]wrote {args.out}[/]: model/image_tokenizer=vq_ckpt model.image_tokenizer.path={args.out}"
    )
    return 0


def cmd_lavis(args: argparse.Namespace) -> int:
    from fashion_vl.convert.lavis import convert_lavis_state_dict

    if _same_file(args.src, args.out):
        console.print("[red]the output would overwrite its own source")
        return EXIT_REFUSED
    ours, report = convert_lavis_state_dict(read_state(args.src, args.trust_pickle))
    show("LAVIS BLIP-2 / UniFashion", report, args.verbose)
    if not decide({args.out: report}, args.allow_missing):
        return EXIT_REFUSED
    save_atomic(lightning_checkpoint(ours, source_note("lavis", args.src, report)), args.out)
    console.print(
        f"[green]wrote {args.out}[/] ({len(ours)} tensors, transformers Blip2ForImageTextRetrieval names)"
    )
    vit = (
        "loads the authors' EVA ViT from it"
        if any(k.startswith("vision_model.encoder.") for k in ours)
        else "stays as built: no ViT in this file"
    )
    console.print(
        f"  UniFashion from it: model.qformer.init_from={args.out} (the frozen ViT {vit})", highlight=False
    )
    if any(k.startswith("proj_layer.") for k in ours):
        console.print(
            f"  diffusion ProjLayer: lit.objectives.diffusion.branch.proj_from={args.out}", highlight=False
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvl-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("src", help="the authors' checkpoint (.pth / .ckpt)")
        p.add_argument("out", help="where to write ours (.ckpt)")
        p.add_argument(
            "--allow-missing",
            action="store_true",
            help="write even if some source keys are unmapped or some target keys missing",
        )
        p.add_argument(
            "--trust-pickle",
            action="store_true",
            help="load a source that torch.load(weights_only=True) refuses (only for trusted files)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="also list converted and dropped keys")

    def vq_arch(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--vqvae-architecture",
            metavar="YAML",
            help="build_vqmodel arguments of the VQ-VAE (e.g. conf/model/vqvae_tiny.yaml); "
            "default: the authors' (conf/model/vqvae.yaml)",
        )

    mmf = sub.add_parser("mmf", help="FashionViL (MMF) checkpoint -> ours")
    common(mmf)
    mmf.add_argument(
        "--task",
        choices=["pretrain", "classification", "contrastive", "composition"],
        help="which MMF training_head_type the checkpoint is from (default: detected from its keys)",
    )
    mmf.add_argument("--num-visual-tokens", type=int, default=49, help="grid tokens per image (7x7 = 49)")
    mmf.add_argument("--vqvae", metavar="ENCODER_PTH", help="also convert the MPFC VQ-VAE encoder file")
    mmf.add_argument("--vqvae-out", metavar="FILE", help="where to write the converted VQ-VAE encoder")
    vq_arch(mmf)
    mmf.set_defaults(fn=cmd_mmf)

    vqvae = sub.add_parser("vqvae", help="the MPFC VQ-VAE encoder file (taming names) -> ours")
    common(vqvae)
    vq_arch(vqvae)
    vqvae.set_defaults(fn=cmd_vqvae)

    lavis = sub.add_parser("lavis", help="LAVIS BLIP-2 / UniFashion checkpoint -> transformers names")
    common(lavis)
    lavis.set_defaults(fn=cmd_lavis)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, CheckpointLoadError, ValueError) as err:
        console.print(f"[red]{type(err).__name__}: {err}", highlight=False)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
