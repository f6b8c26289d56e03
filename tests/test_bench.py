"""The benchmarks run on CPU on tiny configs, and the fast training path keeps the maths."""

from __future__ import annotations

import functools
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_vl.bench.cli import training_main
from fashion_vl.bench.training import ExecutionPath, StepBench, build, compose_experiment, reference_paths
from fashion_vl.utils.speed import multi_tensor_kwargs

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"itc", "itm", "mlm", "mpfc", "mvc", "pac"}
SMALL = [
    "data.batch_size=4",
    "data.num_workers=0",
    "data.pad_to_max_length=true",
    "image_size=64",
    "resize_size=72",
]


def test_bench_pretrain_reports_every_task_path_and_derived_figure(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--experiment",
        "demo_pretrain",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--num-batches",
        "2",
        "--codebook-size",
        "64",
        "--device",
        "cpu",
        "--paths",
        "eager_fp32,default",
        "--data-dir",
        str(synth_dir),
        "--num-workers",
        "0",
        "--out",
        str(out),
        "image_size=64",
        "resize_size=72",
        "data.patch_masking.grid=[4,4]",
        "data.patch_masking.num_masked=3",
    ]
    result = training_main(argv, "bench", ["demo_pretrain"])
    assert json.loads(out.read_text())["batch_size"] == 4
    for path in ("eager_fp32", "default"):
        tasks = result["paths"][path]["tasks"]
        assert set(tasks) == TASKS | {"mix"}
        assert all(row["samples_per_s"] > 0 and row["mfu"] > 0 for row in tasks.values())
    assert result["paths"]["default"]["tasks"]["mix"]["speedup_vs_eager_fp32"] > 0
    flops = result["flops_per_sample"]
    # MVC fuses two views and ITM adds a no-grad mining pass: both cost more than ITC's image + text
    assert flops["mvc"] > flops["itc"] and flops["itm"] > flops["itc"]
    assert min(flops[t] for t in TASKS) < flops["mix"] < max(flops[t] for t in TASKS)
    assert set(result["overhead_ratio"]) == {"itc", "mlm"}
    assert set(result["components_s"]) == {"cnn", "bert_text", "bert_fused", "optimizer"}
    assert result["data_path"]["ratio"] > 0
    assert result["config"]["model"]["text_encoder"]["pretrained"] is False


def script(name: str) -> dict:
    """A benchmark script's globals, run in this process (its ``__main__`` block is one call to them):
    the same code as ``python scripts/<name>`` without a second interpreter importing torch."""
    return runpy.run_path(str(ROOT / "scripts" / name), run_name="bench_script")


def test_bench_finetune_and_eval_scripts_run(synth_dir: Path, tmp_path: Path) -> None:
    common = ["--device", "cpu", "--data-dir", str(synth_dir)]
    finetune = script("bench_finetune.py")
    assert "finetune_composed_fashioniq" in finetune["EXPERIMENTS"]
    finetune["training_main"](
        ["--experiment", "demo_finetune_retrieval", "--batch-size", "4", "--steps", "1", "--warmup", "0",
         "--num-batches", "1", "--num-workers", "0", "--paths", "eager_fp32", "--no-components",
         "--no-data-path", "--out", str(tmp_path / "ft.json"), *common, "image_size=64", "resize_size=72"],
        finetune["__doc__"].splitlines()[0],
        finetune["EXPERIMENTS"],
    )  # fmt: skip
    ft = json.loads((tmp_path / "ft.json").read_text())
    assert ft["paths"]["eager_fp32"]["tasks"]["train"]["samples_per_s"] > 0
    script("bench_eval.py")["main"](
        ["--experiment", "demo_pretrain", "--num-items", "40", "--image-size", "64", "--batch-size", "16",
         "--chunk-size", "8", "--paths", "default", "--out", str(tmp_path / "ev.json"), *common]
    )  # fmt: skip
    ev = json.loads((tmp_path / "ev.json").read_text())["paths"][0]
    assert ev["num_items"] == 40 and ev["full_gallery_recall_s"] > 0 and ev["images_per_s"] > 0


@pytest.mark.parametrize(
    "compile_units",
    [
        False,
        # ~25 s of graph capture on 2 cores: slow; the compile callback's test below compiles the same units
        pytest.param(True, marks=pytest.mark.slow),
    ],
)
def test_fast_path_gives_the_eager_fp32_losses(synth_dir: Path, compile_units: bool) -> None:
    """channels_last, torch.compile (graph capture and AOT autograd; the aot_eager backend, as CPU CI
    has no time for inductor's code generation) and the multi-tensor optimizer leave every task's loss
    where the eager fp32 path puts it, before and after one optimisation step."""
    cfg = compose_experiment(
        "demo_pretrain",
        str(synth_dir),
        [*SMALL, "data.patch_masking.grid=[4,4]", "data.patch_masking.num_masked=3"],
    )
    device = torch.device("cpu")
    bench = StepBench(cfg, device, steps=1, warmup=0, num_batches=2, codebook_size=64)
    fast = ExecutionPath(
        "fast",
        None,
        channels_last=True,
        compile=compile_units,
        tf32=False,
        project_optimizer=True,
        compile_backend="aot_eager",
    )
    losses = {}
    for path in (reference_paths()["eager_fp32"], fast):
        built = build(cfg, path, device)
        before = bench.initial_losses(built, path)
        built.lit.eval()  # no drop-out: the step is deterministic on both paths
        for name, loss_of in built.tasks.items():
            if name == "mix":
                continue
            built.optimizer.zero_grad(set_to_none=True)
            loss_of(bench.batches[0], 0).backward()
            built.optimizer.step()
        with torch.no_grad():
            after = {
                n: float(loss_of(bench.batches[1], 1)) for n, loss_of in built.tasks.items() if n != "mix"
            }
        losses[path.name] = (before, after)
        if path.compile:
            assert built.lit.net.text_encoder.encoder._compiled_call_impl is not None
            assert (
                isinstance(built.optimizer.defaults.get("foreach"), bool)
                and built.optimizer.defaults["foreach"]
            )
    for when in (0, 1):
        eager, compiled = losses["eager_fp32"][when], losses["fast"][when]
        assert set(eager) == TASKS
        for task in TASKS:
            assert compiled[task] == pytest.approx(eager[task], rel=1e-4, abs=1e-5), (when, task)


def test_optimizer_implementation_follows_the_device() -> None:
    factory = functools.partial(torch.optim.AdamW, lr=1e-3)
    assert multi_tensor_kwargs(factory, torch.device("cuda")) == {"fused": True}
    assert multi_tensor_kwargs(factory, torch.device("cpu")) == {"foreach": True}
    explicit = functools.partial(torch.optim.AdamW, lr=1e-3, foreach=False)
    assert multi_tensor_kwargs(explicit, torch.device("cuda")) == {}
    assert multi_tensor_kwargs(functools.partial(torch.optim.SGD, lr=0.1), torch.device("cpu")) == {
        "foreach": True
    }


def test_compile_callback_compiles_units_in_place_only_where_asked(tmp_path: Path) -> None:
    from lightning import Trainer

    from fashion_vl.lit.base import FashionLitModule
    from fashion_vl.lit.callbacks import CompileModules
    from tests.test_models import tiny_fashionvil

    net = tiny_fashionvil()
    lit = FashionLitModule(net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))
    keys = list(lit.state_dict())
    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    auto = CompileModules(enabled="auto")
    auto.setup(trainer, lit, "fit")
    assert auto.compiled == [] and net.text_encoder.encoder._compiled_call_impl is None
    forced = CompileModules(enabled=True, backend="aot_eager")
    forced.setup(trainer, lit, "fit")
    assert forced.compiled == ["image_encoder", "text_encoder.embeddings", "text_encoder.encoder"]
    assert list(lit.state_dict()) == keys  # checkpoints stay interchangeable with eager runs
    ids, mask = torch.randint(5, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    assert net.encode_fused(ids, mask, torch.randn(2, 3, 56, 56)).pooled.shape == (2, net.hidden_size)
    with pytest.raises(ValueError, match=r"callbacks\.compile\.enabled"):
        CompileModules(enabled="yes")


@pytest.fixture(scope="module")
def vitonhd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fashion_vl.data.synth import generate

    out = tmp_path_factory.mktemp("bench_tryon") / "datasets"
    generate(out, size="tiny", image_size=64, workers=1, only=["vitonhd"])
    return out


def test_bench_tryon_trains_through_fvl_train_and_times_sampling(vitonhd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tryon.json"
    script("bench_tryon.py")["main"](
        ["--experiment", "demo_unifashion_phase2_tryon", "--steps", "3", "--warmup", "1", "--batch-size", "2",
         "--sample-images", "3", "--sample-steps", "2", "--num-workers", "0", "--data-dir", str(vitonhd_dir),
         "--out", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    train, sample = result["train"], result["sample"]
    assert train["steps"] == 3 and train["warmup_steps_excluded"] == 1 and train["losses_finite"]
    assert (train["height"], train["width"], train["batch_size"]) == (64, 48, 2)
    assert train["samples_per_s"] == pytest.approx(2 / train["median_step_s"])
    assert (
        0 < train["parameters"]["trainable"] < train["parameters"]["total"]
    )  # the VAE and Q-Former are frozen
    assert (sample["images"], sample["height"], sample["width"], sample["ddim_steps"]) == (3, 64, 48, 2)
    assert sample["finite"] and sample["seconds"] > 0
    assert "model/diffusion@model.branch=sd15_random" not in result["overrides"]  # a demo: its tiny model


def test_real_size_random_tryon_has_sd15s_architecture(vitonhd_dir: Path, tmp_path: Path) -> None:
    """What scripts/bench_tryon.py builds on a GPU without the hub: SD v1.5's UNet (859,520,964
    parameters, + 9 x 320 x 3 x 3 for the 9 extra input channels), VAE and CLIP text tower, at
    VITON-HD's 512x384 in bf16; built on the meta device (no memory)."""
    from hydra.utils import instantiate

    from fashion_vl.bench.tryon import REAL_SIZE_RANDOM, bench_overrides, parameter_counts

    overrides = REAL_SIZE_RANDOM + bench_overrides(60, 16, 8, None)
    cfg = compose_experiment("unifashion_phase2_tryon", vitonhd_dir, overrides, output_dir=tmp_path)
    assert (cfg.data.height, cfg.data.width, cfg.trainer.precision) == (512, 384, "bf16-mixed")
    with torch.device("meta"):
        net = instantiate(cfg.model, _convert_="all")

    def count(module: torch.nn.Module) -> int:
        return parameter_counts(module)["total"]

    assert count(net.branch.unet) == 859_520_964 + 9 * 320 * 9
    assert count(net.branch.vae) == 83_653_863
    assert count(net.branch.text_encoder) == 123_060_480
    assert net.branch.unet.config.in_channels == 13


def test_bench_data_pieces_time_loader_floor_and_decoders(synth_dir: Path) -> None:
    """The fast counterpart of the script's test below: its pieces, in-process, on tiny data."""
    from fashion_vl.bench.data import DecodeFloor, LoaderStream, PillowJpegStream, decoder_rates, interleaved
    from fashion_vl.data import images
    from fashion_vl.data.formats import BigFACADSource
    from fashion_vl.data.products import ProductDataModule
    from fashion_vl.data.transforms import resize_crop

    datamodule = ProductDataModule(
        train_sources={"bigfacad": BigFACADSource(synth_dir, "train")},
        tokenizer=str(synth_dir / "tokenizer"),
        train_transform=resize_crop(True, size=32, resize=40),
        eval_transform=resize_crop(False, size=32, resize=40),
        batch_size=4,
        num_workers=0,
        num_views=2,
    )
    datamodule.setup("fit")
    decode_jpeg = images.decode_jpeg
    runs = {
        "loader": lambda: LoaderStream(datamodule).rate(1),
        "pillow": lambda: PillowJpegStream(datamodule).rate(1),
        "floor": lambda: DecodeFloor(datamodule, 40, 32).rate(2),
        "distinct_floor": lambda: DecodeFloor(datamodule, 40, 32, distinct=True).rate(2),
    }
    floor = DecodeFloor(datamodule, 40, 32)
    shared = [len(set(paths)) == 1 for paths in floor.paths]
    assert floor.shared_view_share() == pytest.approx(sum(shared) / len(shared))
    figures = interleaved(runs, rounds=2)
    assert images.decode_jpeg is decode_jpeg  # the Pillow A/B puts the decoder back
    for name, fig in figures.items():
        assert len(fig["rounds"]) == len(fig["rounds_cpu"]) == 2, name
        assert fig["samples_per_s"] > 0 and fig["samples_per_cpu_s"] > 0, name
    jpegs = sorted((synth_dir / "BigFACAD" / "images").rglob("*.jpg"))[:2]
    rates = decoder_rates({"jpeg_64px": jpegs}, rounds=1, resize=32)
    assert {"pil", "pil+draft", "simplejpeg (jpeg only)"} <= set(rates["jpeg_64px"])
    assert set(rates["jpeg_64px (per CPU-s)"]) == set(rates["jpeg_64px"])


def test_a_baseline_checkout_without_its_config_is_refused_with_the_fix(tmp_path: Path) -> None:
    from fashion_vl.bench.data import CheckoutLoader

    (tmp_path / "src" / "fashion_vl").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no conf/__init__.py \(--baseline-checkout takes the root"):
        CheckoutLoader(tmp_path, "pretrain_fashionall", tmp_path, 4)


@pytest.mark.slow
def test_bench_data_reports_every_path_ratio_and_decoder(synth_dir: Path, tmp_path: Path) -> None:
    from fashion_vl.data.synth import generate

    fashiongen = tmp_path / "fashiongen" / "datasets"
    generate(fashiongen, size="tiny", image_size=64, workers=1, only=["fashiongen"], image_store="both")
    out = tmp_path / "data.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_data.py"), "--data-dir", str(synth_dir),
         "--fashiongen-dir", str(fashiongen), "--synth-image-size", "64", "--batch-size", "4",
         "--batches", "1", "--warmup", "0", "--rounds", "1", "--decoder-images", "3",
         "--draft-sides", "160", "--scratch-dir", str(tmp_path / "scratch"), "--profile-batches", "1",
         "--resize", "72", "--crop", "64", "--only", "mix,fashiongen,decoders", "--out", str(out),
         "--baseline-checkout", str(ROOT),
         "image_size=64", "resize_size=72"],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    paths = {"mix_loader", "mix_loader_pillow", "mix_floor", "mix_floor_distinct", "mix_loader_baseline",
             "fashiongen_files", "fashiongen_array", "fashiongen_floor"}  # fmt: skip
    assert set(result["paths"]) == paths
    assert all(p["samples_per_s"] > 0 and p["samples_per_cpu_s"] > 0 for p in result["paths"].values())
    rates = {k: v["samples_per_s"] for k, v in result["paths"].items()}
    ratios = result["ratios"]
    assert ratios["mix_loader_over_floor"] == pytest.approx(rates["mix_loader"] / rates["mix_floor"])
    assert ratios["fashiongen_array_over_files"] == pytest.approx(
        rates["fashiongen_array"] / rates["fashiongen_files"]
    )
    assert ratios["mix_loader_over_baseline"] == pytest.approx(
        rates["mix_loader"] / rates["mix_loader_baseline"]
    )
    assert 0 <= result["mix_products_with_one_file_for_both_views"] <= 1
    assert set(result["ratios_cpu"]) == set(ratios)
    assert result["mix_loader_profile"] and result["mix_loader_profile"][0]["own_s"] > 0
    decoders = result["decoders_images_per_s"]
    assert {"jpeg_64px", "png_64px", "jpeg_160px"} <= set(decoders)
    assert {"pil", "pil+draft", "simplejpeg (jpeg only)"} <= set(decoders["jpeg_160px"])
    assert "simplejpeg (jpeg only)" not in decoders["png_64px"]


def test_mpfc_flops_split_the_tokenizer_from_the_step(synth_dir: Path) -> None:
    """The counts scale with the batch (per-sample figures agree at two batch sizes) and the share is
    the tokenizer's part of the total (tiny demo model and tiny VQ encoder: 6x6 grid at 96 px)."""
    from fashion_vl.bench.mpfc import mpfc_flops

    tiny_vq = dict(hidden_dim=4, ch_mult=[1, 2, 4, 8, 8], num_res_blocks=1, attn_resolutions=[],
                   z_channels=32, num_tokens=64, codebook_dim=32, norm_num_groups=4)  # fmt: skip
    one, two = (
        mpfc_flops(synth_dir, "demo_pretrain", batch_size=b, image_size=96, vq_overrides=tiny_vq)
        for b in (1, 2)
    )
    for key in ("tokenizer_forward_gflops_per_sample", "mpfc_step_without_tokenizer_gflops_per_sample"):
        assert one[key] > 0 and one[key] == pytest.approx(two[key], rel=0.02), key
    tokens, rest = (
        two["tokenizer_forward_gflops_per_sample"],
        two["mpfc_step_without_tokenizer_gflops_per_sample"],
    )
    assert two["tokenizer_share_of_mpfc_step"] == pytest.approx(tokens / (tokens + rest))
