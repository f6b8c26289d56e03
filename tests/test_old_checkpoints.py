"""Checkpoints written before the restructuring of issue #24 still load and compute what they did.

``tests/fixtures/old_checkpoints/`` holds tiny checkpoints of the old layout and what the old code
computed from them on fixed inputs (``make_old_checkpoints.py`` wrote both). Each test builds the same
run from today's configs, loads the old checkpoint through the path a user takes and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning import Callback
from safetensors.torch import load_file
from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_vl.build import build
from fashion_vl.losses import StepContext
from fashion_vl.models.checkpoint import migrate_key
from tests.conftest import compose_config

FIXTURES = Path(__file__).parent / "fixtures" / "old_checkpoints"

QUIET = ["data.num_workers=0", "logger=csv", "print_config=false"]
# The stored outputs were computed by the old code with 2 torch threads (the 2-core machine's default);
# CPU reductions split by thread count, so the comparison is bit-exact only at the same count.
FIXTURE_THREADS = 2


@pytest.fixture(autouse=True)
def fixture_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(FIXTURE_THREADS)
    yield
    torch.set_num_threads(before)


TINY_FASHIONVIL = [
    "model.text_encoder.hidden_size=32",
    "model.text_encoder.num_hidden_layers=1",
    "model.text_encoder.num_attention_heads=2",
    "model.text_encoder.intermediate_size=64",
    "model.text_encoder.max_position_embeddings=64",
    "model.text_encoder.vocab_size=256",
    "model.image_encoder.channels=[8,8,16,16]",
    "model.image_encoder.stem_width=8",
    "image_size=64",
    "resize_size=72",
    "data.batch_size=4",
    "data.max_text_length=16",
]
TINY_VQ = "model.image_tokenizer.architecture"
DIFFUSION = "model.diffusion"
# make_old_checkpoints.py's runs, in today's config layout
RUNS: dict[str, list[str]] = {
    "fashionvil_pretrain": [
        "experiment=demo_pretrain",
        *TINY_FASHIONVIL,
        "data.patch_masking.grid=[4,4]",
        "data.patch_masking.num_masked=4",
        f"{TINY_VQ}.resolution=64",
        f"{TINY_VQ}.hidden_dim=2",
        f"{TINY_VQ}.z_channels=8",
        f"{TINY_VQ}.codebook_dim=8",
        f"{TINY_VQ}.num_tokens=16",
        f"{TINY_VQ}.norm_num_groups=2",
    ],
    "fashionvil_classification": ["experiment=demo_finetune_classification", *TINY_FASHIONVIL],
    "unifashion_phase1_diffusion": [
        "experiment=demo_unifashion_phase1_diffusion",
        "model.llm=null",
        "model.qformer.llm_hidden_size=null",
        "lit.task_weights.caption=0",
        "lit.caption_eval.max_images=0",
        "lit.generation_eval.max_images=0",
        "image_size=32",
        "model.image_encoder.embed_dim=16",
        "model.image_encoder.depth=1",
        "model.image_encoder.num_heads=2",
        "model.qformer.num_query_tokens=4",
        "model.qformer.embed_dim=16",
        "model.qformer.hidden_size=32",
        "model.qformer.num_hidden_layers=1",
        "model.qformer.num_attention_heads=2",
        "model.qformer.intermediate_size=64",
        "model.qformer.encoder_hidden_size=16",
        "model.qformer.max_position_embeddings=64",
        "model.qformer.vocab_size=256",
        "model.qformer.bos_token_id=255",
        "lit.fast_modules=[]",
        f"{DIFFUSION}.text_encoder.vocab_size=256",
        f"{DIFFUSION}.proj_hidden_dim=32",
        f"{DIFFUSION}.text_encoder.intermediate_size=64",
        f"{DIFFUSION}.text_encoder.num_hidden_layers=1",
        f"{DIFFUSION}.text_encoder.num_attention_heads=2",
        f"{DIFFUSION}.unet.block_out_channels=[8,16]",
        f"{DIFFUSION}.unet.norm_num_groups=8",
        f"{DIFFUSION}.vae.block_out_channels=[8,16]",
        f"{DIFFUSION}.vae.norm_num_groups=8",
    ],
}


def expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}.safetensors"))


def build_lit(name: str, tmp_path: Path, extra: list[str] = ()):
    """The run's LightningModule from today's configs, freshly initialised (other seed: nothing may
    survive from the initialisation)."""
    overrides = [*RUNS[name], *QUIET, "seed=12345", *extra]
    cfg = compose_config("train", overrides, tmp_path, tmp_path / "no_data")
    return build(cfg, data=False, trainer=False).lit


def load_like_lightning(lit, path: Path) -> dict:
    """What ``Trainer`` does with ``ckpt_path``: the module's ``on_load_checkpoint``, then a strict load."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    lit.on_load_checkpoint(checkpoint)
    lit.load_state_dict(checkpoint["state_dict"], strict=True)
    return checkpoint


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for key, value in got.items():
        assert torch.equal(value, want[key]), key


@torch.no_grad()
def test_old_fashionvil_pretraining_checkpoint(tmp_path: Path) -> None:
    lit = build_lit("fashionvil_pretrain", tmp_path)
    load_like_lightning(lit, FIXTURES / "fashionvil_pretrain.ckpt")
    lit.eval()
    want = expected("fashionvil_pretrain")
    net, objectives, heads = lit.net, lit.objectives, lit.net.heads
    images, ids, mask = want["input_images"], want["input_input_ids"], want["input_attention_mask"]
    fused = net.encode_fused(ids, mask, images)
    got = {
        "image_embedding": net.encode_image(images, normalize=True),
        "text_embedding": net.encode_text(ids, mask, normalize=True),
        "fused_pooled": fused.pooled,
        "itm_logits": heads["itm"](fused.pooled),
        "mlm_logits": heads["mlm"](fused.text[:, :3]),
        "mpfc_logits": heads["mpfc"](fused.visual),
        "pac_logits": heads["pac"](net.encode_image(images)),
        "vq_indices": net.image_tokenizer(images),
    }
    batch = {k.removeprefix("input_batch_"): v for k, v in want.items() if k.startswith("input_batch_")}
    for name in sorted(objectives):
        got[f"loss_{name}"] = objectives[name](net, batch, StepContext(torch.Generator().manual_seed(7)))[
            "loss"
        ]
    assert_same(got, want)


@torch.no_grad()
def test_old_classification_checkpoint(tmp_path: Path) -> None:
    lit = build_lit("fashionvil_classification", tmp_path)
    load_like_lightning(lit, FIXTURES / "fashionvil_classification.ckpt")
    want = expected("fashionvil_classification")
    logits = lit.eval().logits(want["input_images"], want["input_input_ids"], want["input_attention_mask"])
    assert_same({"classification_logits": logits}, want)


@torch.no_grad()
def test_old_unifashion_diffusion_checkpoint(tmp_path: Path) -> None:
    lit = build_lit("unifashion_phase1_diffusion", tmp_path)
    load_like_lightning(lit, FIXTURES / "unifashion_phase1_diffusion.ckpt")
    lit.eval()
    want = expected("unifashion_phase1_diffusion")
    net = lit.net
    images, ids, mask = want["input_images"], want["input_input_ids"], want["input_attention_mask"]
    enc = net.encode_pair(images, ids, mask)
    branch = net.diffusion
    context = branch.text_encoder(want["input_prompt_ids"], branch.proj(enc.query_states))[0]
    got = {
        "image_feats": enc.image_feats,
        "text_feat": enc.text_feat,
        "query_states": enc.query_states,
        "itm_logits": net.qformer.itm_logits(enc.image_tokens, ids, mask),
        "diffusion_context": context,
        "diffusion_noise_prediction": branch.predict_noise(
            want["input_latents"], want["input_timesteps"], context
        ),
        "vae_latent_mean": branch.vae.encode(images * 0.5).latent_dist.mean,
    }
    batch = {"input_ids": ids, "attention_mask": mask, "image": images, "product_id": torch.tensor([1, 2, 3])}
    for name in ("itc", "itm", "itg"):
        step = StepContext(torch.Generator().manual_seed(7), enc)
        got[f"loss_{name}"] = lit.objectives[name](net, batch, step)["loss"]
    assert_same(got, want)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixture_is_small(name: str) -> None:
    assert (FIXTURES / f"{name}.ckpt").stat().st_size < 1_000_000


def test_old_optimizer_state_lines_up_with_the_parameters(tmp_path: Path) -> None:
    """Resuming an old pre-training checkpoint restores its optimizer state by position: the
    parameters, migrated names and all, come in the order they had (the heads after the encoder, in the
    tasks' order), so every moment tensor lands on the parameter it belongs to."""
    lit = build_lit("fashionvil_pretrain", tmp_path)
    checkpoint = torch.load(FIXTURES / "fashionvil_pretrain.ckpt", map_location="cpu", weights_only=True)
    old_order = [migrate_key(k) for k in checkpoint["state_dict"]]  # the old module's registration order
    optimizer = lit.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in lit.named_parameters()}
    saved = checkpoint["optimizer_states"][0]
    params, checked = dict(lit.named_parameters()), 0
    assert len(saved["param_groups"]) == len(optimizer.param_groups)
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        ours = [names[id(p)] for p in group["params"]]
        assert ours == sorted(ours, key=old_order.index)  # same relative order as the old module's
        assert len(saved_group["params"]) == len(ours)
        for index, name in zip(saved_group["params"], ours, strict=True):
            if index in saved["state"]:  # parameters no step has reached yet have no state
                checked += 1
                assert saved["state"][index]["exp_avg"].shape == params[name].shape, name
    assert checked > 50


@torch.no_grad()
def test_old_checkpoints_as_init_from(tmp_path: Path) -> None:
    """``init_from`` of an old pre-training checkpoint (and of an ``fvl-convert`` output of that time,
    the same names in a converter's wrapper) starts the encoder and ignores the heads; the Q-Former of an
    old phase-1 checkpoint with its diffusion branch starts phase 1 or 2."""
    from fashion_vl.convert.common import lightning_checkpoint

    pretrain = expected("fashionvil_pretrain")
    images, ids, mask = (
        pretrain["input_images"],
        pretrain["input_input_ids"],
        pretrain["input_attention_mask"],
    )
    state = torch.load(FIXTURES / "fashionvil_pretrain.ckpt", weights_only=True)["state_dict"]
    converted = tmp_path / "converted_before_24.ckpt"
    torch.save(lightning_checkpoint(state, {"format": "mmf", "task": "pretrain"}), converted)
    for source in (FIXTURES / "fashionvil_pretrain.ckpt", converted):
        # fine-tuning (a classification head of its own); reinit=[] keeps the scale, to compare exactly
        lit = build_lit(
            "fashionvil_classification", tmp_path, [f"model.init_from={source}", "model.reinit=[]"]
        )
        net = lit.net.eval()
        assert torch.equal(net.encode_image(images, normalize=True), pretrain["image_embedding"])
        assert torch.equal(net.encode_fused(ids, mask, images).pooled, pretrain["fused_pooled"])
    lit = build_lit("fashionvil_classification", tmp_path, [f"model.init_from={source}"])
    assert lit.net.contrastive_norm.scale.item() == 4.0  # fine-tuning re-initialises it, as the reference

    phase1 = expected("unifashion_phase1_diffusion")
    old = FIXTURES / "unifashion_phase1_diffusion.ckpt"
    overrides = [f"model.qformer.init_from={old}", "model.diffusion=null", "lit.task_weights.diffusion=0"]
    net = build_lit("unifashion_phase1_diffusion", tmp_path, overrides).net.eval()
    enc = net.encode_pair(phase1["input_images"], phase1["input_input_ids"], phase1["input_attention_mask"])
    assert torch.equal(enc.image_feats, phase1["image_feats"]) and torch.equal(
        enc.text_feat, phase1["text_feat"]
    )


@pytest.mark.slow
def test_old_checkpoints_through_fvl_eval_and_resuming(tmp_path: Path, synth_dir: Path) -> None:
    """The Lightning paths end to end: ``fvl-eval ckpt_path=<old classification checkpoint>`` and
    resuming an old pre-training run (``ckpt_path=``, its optimizer state restored) for one more step.
    The fast tests above cover the same hooks (``on_load_checkpoint``, the strict load)."""
    from fashion_vl.cli.eval import evaluate
    from fashion_vl.cli.train import train

    old = FIXTURES / "fashionvil_classification.ckpt"
    extra = [f"ckpt_path={old}", "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false"]
    quiet = ["data.num_workers=0", "print_config=false"]  # fvl-eval has no logger
    cfg = compose_config(
        "eval", [*RUNS["fashionvil_classification"], *quiet, *extra], tmp_path / "e", synth_dir
    )
    metrics, _ = evaluate(cfg)
    assert 0 <= metrics["test/acc"] <= 100
    GlobalHydra.instance().clear()

    run = [
        *RUNS["fashionvil_pretrain"], *QUIET, f"ckpt_path={FIXTURES / 'fashionvil_pretrain.ckpt'}",
        "trainer.max_steps=3", "callbacks.checkpoint_last.every_n_train_steps=3", "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "~callbacks.rich_progress_bar",
    ]  # fmt: skip
    metrics, _ = train(compose_config("train", run, tmp_path / "t", synth_dir))
    resumed = torch.load(tmp_path / "t" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3 and "net.heads.itm.seq_relationship.weight" in resumed["state_dict"]
    GlobalHydra.instance().clear()


class LossRecorder(Callback):
    """Every training step's loss (``outputs["loss"]``)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


# the shrunk demos' overrides in today's config layout
MOVED_KEYS = {"lit.objectives.mpfc.tokenizer.vqmodel.": "model.image_tokenizer.architecture."}


def todays(override: str) -> str:
    for old, new in MOVED_KEYS.items():
        override = override.replace(old, new)
    return override


FIRST_LOSSES = json.loads((FIXTURES / "first_losses.json").read_text())
# Runs whose streams a later change moved on purpose: the losses this code gives, and why they moved
RERECORDED = json.loads((FIXTURES / "first_losses_rerecorded.json").read_text())


def loader_without_its_generator(*args, generator=None, **kwargs):
    """A training loader whose iterators draw their base seed from the global generator, as the code
    before the restructuring did. Since then loaders carry their own generator (data/base.py), on
    purpose: a run with and without workers leaves dropout the same stream. The old code's extra
    global draw is all that moved the other runs (checked: with it back, they give its losses)."""
    return StatefulDataLoader(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(FIRST_LOSSES))
def test_first_losses_are_the_old_codes(
    run: str, tmp_path: Path, synth_dir: Path, tmp_path_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The random streams and the initialisation order did not move: a few steps of each shrunk demo
    give the losses the code before the restructuring gave, within float rounding (same machine and
    libraries; on others, within float noise), once the loader's own generator is taken away
    (:func:`loader_without_its_generator`). A run a later change moved on purpose is compared with
    the losses recorded after that change (``first_losses_rerecorded.json`` says why)."""
    from fashion_vl.cli.train import train

    monkeypatch.setattr("fashion_vl.data.base.StatefulDataLoader", loader_without_its_generator)

    data = synth_dir
    if "tryon" in run:
        from fashion_vl.data.synth import generate

        data = tmp_path_factory.mktemp("vitonhd") / "datasets"
        generate(data, size="tiny", seed=0, image_size=64, workers=1, only=["vitonhd"])
    overrides = [todays(o) for o in FIRST_LOSSES[run]["overrides"]]
    extra = [
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "~callbacks.rich_progress_bar",
        "~callbacks.model_summary", "++trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
        "+callbacks.loss_recorder._target_=tests.test_old_checkpoints.LossRecorder",
    ]  # fmt: skip
    _, objects = train(compose_config("train", [*overrides, *QUIET, *extra], tmp_path, data))
    GlobalHydra.instance().clear()
    recorder = next(c for c in objects["trainer"].callbacks if isinstance(c, LossRecorder))
    want = RERECORDED.get(run, FIRST_LOSSES[run])["losses"]
    assert recorder.losses == pytest.approx(want, rel=1e-6, abs=1e-6)
