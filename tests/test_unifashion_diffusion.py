"""UniFashion's diffusion branch on tiny random models: the query splice into the CLIP text encoder,
the widened UNet, guidance, DDIM determinism, frozen parts, and a CLI run with the diffusion loss."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fashion_vl.cli.train import train
from fashion_vl.data.garment_labels import GARMENT_VOCABS
from fashion_vl.data.synth.tokenizer import train_wordpiece
from fashion_vl.hub import PretrainedUnavailableError
from fashion_vl.losses import StepContext
from fashion_vl.losses.diffusion import DiffusionLoss
from fashion_vl.models.outputs import ImageTextEncoding
from fashion_vl.models.unifashion.diffusion import (
    DiffusionBranch,
    ProjLayer,
    build_diffusion_branch,
    widen_unet_input,
)
from tests.conftest import compose_config

WIDTH = 32  # Q-Former and CLIP text width (ProjLayer is residual)
GARMENT_HEADS = {name: len(words) for name, words in GARMENT_VOCABS.items()}
QUERIES = 4
PROMPTS = ["red silk dress", "navy wool coat with buttons"]
TEXT = dict(
    vocab_size=256, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=24, pad_token_id=0, bos_token_id=2, eos_token_id=3,
)  # fmt: skip
UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=WIDTH, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: with two threads on a shared CPU, thread hand-offs cost more than the
    arithmetic (the module ran 60 s with torch's default threads, a few seconds with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(PROMPTS * 2 + ["black leather boots", "a photo"], out, vocab_size=128)
    return str(out)


def tiny_branch(
    tokenizer: str, train_unet: bool = True, seed: int = 0, noise_schedule: dict | None = None
) -> DiffusionBranch:
    torch.manual_seed(seed)
    return build_diffusion_branch(
        pretrained=False, tokenizer=tokenizer, query_dim=WIDTH, proj_hidden_dim=64, resolution=16,
        train_unet=train_unet, unet=UNET, vae=VAE, text_encoder=TEXT, noise_schedule=noise_schedule,
    )  # fmt: skip


def queries(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, QUERIES, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_proj_layer_is_the_blip_diffusion_residual_mlp() -> None:
    proj = ProjLayer(WIDTH, 64, WIDTH, dropout=0.1).eval()
    x = torch.randn(3, QUERIES, WIDTH)
    h = proj.dense1(
        torch.nn.functional.layer_norm(x, (WIDTH,), proj.LayerNorm.weight, proj.LayerNorm.bias, 1e-12)
    )
    expected = x + proj.dense2(h * torch.sigmoid(1.702 * h))
    torch.testing.assert_close(proj(x), expected)
    assert proj.LayerNorm.eps == 1e-12 and proj.dropout.p == 0.1
    with pytest.raises(ValueError, match="must equal"):
        ProjLayer(WIDTH, 64, 2 * WIDTH)


def test_splice_puts_the_queries_at_position_two_between_the_prompt_tokens(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir)
    encoder = branch.text_encoder
    ids = branch.tokenize(PROMPTS, 10)  # [CLS] w1 w2 ... [SEP] [PAD]...
    ctx = branch.proj(queries())
    spliced = encoder.splice(ids, ctx)
    tokens = encoder.model.embeddings.token_embedding(ids)
    assert spliced.shape == (2, 10 + QUERIES, WIDTH)
    torch.testing.assert_close(spliced[:, :2], tokens[:, :2])
    torch.testing.assert_close(spliced[:, 2 : 2 + QUERIES], ctx)
    torch.testing.assert_close(spliced[:, 2 + QUERIES :], tokens[:, 2:])

    # The spliced pass runs transformers' own positions, causal mask and layers: splicing the
    # embeddings of real tokens equals CLIPTextModel on the token sequence with those tokens inserted.
    inserted = torch.tensor([[7, 8, 9, 10]]).expand(2, -1)
    hidden, pooled = encoder(ids, encoder.model.embeddings.token_embedding(inserted))
    full_ids = torch.cat([ids[:, :2], inserted, ids[:, 2:]], dim=1)
    reference = encoder.model(input_ids=full_ids)
    torch.testing.assert_close(hidden, reference.last_hidden_state)
    torch.testing.assert_close(pooled, reference.pooler_output)  # at the moved end token

    # Causal: BOS and the first prompt token come before the queries and do not see them.
    other, _ = encoder(ids, branch.proj(queries(seed=1)))
    base, _ = encoder(ids, ctx)
    torch.testing.assert_close(other[:, :2], base[:, :2])
    assert not torch.allclose(other[:, 2:], base[:, 2:])
    assert branch.encode_condition(queries(), PROMPTS).shape == (2, TEXT["max_position_embeddings"], WIDTH)


def test_widened_unet_gives_the_same_output_at_init(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir)
    unet = branch.unet.eval()
    wide = widen_unet_input(copy.deepcopy(unet), 9)
    assert wide.config.in_channels == 13 and wide.conv_in.weight.shape[1] == 13
    assert not wide.conv_in.weight[:, 4:].any()
    g = torch.Generator().manual_seed(0)
    latents, extra = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 9, 8, 8, generator=g)
    context, t = torch.randn(2, 6, WIDTH, generator=g), torch.tensor([10, 500])
    with torch.no_grad():
        expected = unet(latents, t, encoder_hidden_states=context).sample
        got = wide(torch.cat([latents, extra], dim=1), t, encoder_hidden_states=context).sample
        branch.unet = wide
        via_branch = branch.predict_noise(latents, t, context, extra_inputs=extra)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(via_branch, got)
    with pytest.raises(ValueError, match="13 input channels"):
        branch.predict_noise(latents, t, context)


def test_guidance_at_scale_one_is_the_conditional_prediction(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir).eval()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        cond = branch.encode_condition(queries(), PROMPTS)
        uncond = branch.encode_unconditional(2, cond.shape[1])
        t = torch.tensor(400)
        eps_c = branch.predict_noise(latents, t, cond)
        eps_u = branch.predict_noise(latents, t, uncond)
        torch.testing.assert_close(
            branch.guided_noise(latents, t, cond, uncond, 1.0), eps_c, rtol=1e-5, atol=1e-5
        )
        guided = branch.guided_noise(latents, t, cond, uncond, 3.0)
        rescaled = branch.guided_noise(latents, t, cond, uncond, 3.0, guidance_rescale=1.0)
        half = branch.guided_noise(latents, t, cond, uncond, 3.0, guidance_rescale=0.5)
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, eps_c)
    # Rescaled guidance (phi = 1): the guided direction with the conditional prediction's per-sample std;
    # phi mixes it with the plain guided prediction.
    std = lambda x: x.flatten(1).std(dim=1)  # noqa: E731
    torch.testing.assert_close(std(rescaled), std(eps_c), rtol=1e-4, atol=1e-6)
    ratio = (std(eps_c) / std(guided)).view(-1, 1, 1, 1)
    torch.testing.assert_close(rescaled, guided * ratio, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(half, 0.5 * (guided + rescaled), rtol=1e-4, atol=1e-6)


def test_ddim_sampling_is_deterministic_for_a_seed(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir)
    branch.train()

    def draw(seed: int, scale: float = 2.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return branch.sample(queries(), PROMPTS, num_steps=3, guidance_scale=scale, generator=g)

    first = draw(0)
    assert first.shape == (2, 3, 16, 16) and first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(draw(0), first, rtol=0, atol=0)
    assert not torch.equal(draw(1), first)
    assert not torch.equal(draw(0, scale=1.0), first)
    assert branch.training and branch.unet.training  # the mode is restored


def test_frozen_parts_get_no_grad_and_stay_identical_while_proj_and_unet_learn(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir)
    net = SimpleNamespace(diffusion=branch)  # the network's branch is all the loss reads
    objective = DiffusionLoss(condition_drop=0.5)
    branch.train()
    assert not branch.vae.training and not branch.text_encoder.training and branch.unet.training
    frozen = {"vae": branch.vae, "text_encoder": branch.text_encoder}
    assert not any(p.requires_grad for m in frozen.values() for p in m.parameters())
    before = {
        k: copy.deepcopy(m.state_dict())
        for k, m in {**frozen, "proj": branch.proj, "unet": branch.unet}.items()
    }
    assert not list(objective.parameters())  # the loss owns no weight
    trainable = [p for p in branch.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)

    q = queries().requires_grad_(True)
    enc = ImageTextEncoding(image_tokens=None, query_states=q, image_feats=None, text_feat=None)
    batch = {"image": torch.randn(2, 3, 24, 24), "text": PROMPTS}
    out = objective(net, batch, StepContext(torch.Generator().manual_seed(0), enc))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert q.grad is None  # qformer_grad=false: the queries are detached
    assert all(p.grad is None for m in frozen.values() for p in m.parameters())
    assert all(p.grad is not None for p in branch.proj.parameters())
    optimizer.step()
    for name, module in {**frozen, "proj": branch.proj, "unet": branch.unet}.items():
        same = all(torch.equal(v, before[name][k]) for k, v in module.state_dict().items())
        assert same == (name in frozen), name

    # qformer_grad=true lets the loss reach the queries; train_unet=false freezes the UNet.
    branch = tiny_branch(tokenizer_dir, train_unet=False).train()
    objective = DiffusionLoss(qformer_grad=True)
    q = queries().requires_grad_(True)
    enc = ImageTextEncoding(image_tokens=None, query_states=q, image_feats=None, text_feat=None)
    objective(SimpleNamespace(diffusion=branch), batch, StepContext(torch.Generator().manual_seed(0), enc))[
        "loss"
    ].backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert not branch.unet.training and all(p.grad is None for p in branch.unet.parameters())


def test_dropped_conditions_train_without_the_queries(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir).train()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = branch.loss(queries(), images, PROMPTS, torch.Generator().manual_seed(0), condition_drop=1.0)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in branch.proj.parameters())
    same = branch.loss(queries(), images, PROMPTS, torch.Generator().manual_seed(0), condition_drop=1.0)
    other = branch.loss(
        queries(seed=5), images, PROMPTS, torch.Generator().manual_seed(0), condition_drop=1.0
    )
    torch.testing.assert_close(same, other)  # no query reaches the UNet


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weighting_follows_its_formula(tokenizer_dir: str, prediction: str) -> None:
    """``snr_gamma``: per-sample MSE x min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (velocity), with
    SNR_t = abar_t / (1 - abar_t); ``None`` is the plain MSE."""
    branch = tiny_branch(tokenizer_dir)
    branch.noise_scheduler.register_to_config(prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    latents, noise, pred = (torch.randn(2, 4, 4, 4, generator=g) for _ in range(3))
    timesteps = torch.tensor([10, 900])  # SD's schedule: SNR ~ 240 and ~ 0.05, either side of gamma = 5
    target = branch.noise_target(latents, noise, timesteps)
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(branch.denoising_loss(pred, latents, noise, timesteps), per_sample.mean())
    abar = branch.noise_scheduler.alphas_cumprod[timesteps]
    snr = abar / (1 - abar)
    assert snr[0] > 5 > snr[1]
    weight = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if prediction == "v_prediction" else snr)
    branch.snr_gamma = 5.0
    torch.testing.assert_close(
        branch.denoising_loss(pred, latents, noise, timesteps), (weight * per_sample).mean()
    )


def test_demo_zero_terminal_snr_schedule_reaches_training_and_sampling(
    tokenizer_dir: str, tmp_path: Path
) -> None:
    """The generation demo's schedule (Lin et al., 2024): no signal left at t = 999 in training, DDIM
    sampling that starts there (trailing spacing), v-prediction, which stays finite at SNR 0 where an
    epsilon model's x0 estimate divides by zero."""
    cfg = compose_config("train", ["experiment=demo_unifashion_phase1_diffusion"], tmp_path)
    schedule = dict(cfg.model.diffusion.noise_schedule)
    branch = tiny_branch(tokenizer_dir, noise_schedule=schedule)
    assert branch.noise_scheduler.alphas_cumprod[-1] < 1e-6  # SD v1.5's own schedule leaves 0.0047
    ddim = branch.ddim_scheduler()
    ddim.set_timesteps(20)
    assert ddim.timesteps[0] == 999 and ddim.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([999, 999])
    # at SNR 0 the noised latents are the noise and the velocity target is minus the clean latents
    torch.testing.assert_close(branch.noise_scheduler.add_noise(latents, noise, t), noise, atol=1e-3, rtol=0)
    torch.testing.assert_close(branch.noise_target(latents, noise, t), -latents, atol=1e-3, rtol=0)
    drawn = branch.sample(queries(), PROMPTS, num_steps=3, guidance_scale=2.0, generator=g)
    assert torch.isfinite(drawn).all()
    with pytest.raises(ValueError, match=r"noise_schedule\.prediction_type=v_prediction"):
        tiny_branch(tokenizer_dir, noise_schedule=schedule | {"prediction_type": "epsilon"})


def test_real_branch_offline_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match=r"model.diffusion.name"):
        build_diffusion_branch("runwayml/stable-diffusion-v1-5", pretrained=True)


def test_demo_phase1_diffusion_trains_three_steps(tmp_path: Path, synth_dir: Path) -> None:
    overrides = [
        "experiment=demo_unifashion_phase1_diffusion", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "image_size=56", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
        "+trainer.limit_val_batches=1", "lit.caption_eval.max_images=0", "logger=csv", "print_config=false",
        "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    metrics, _ = train(compose_config("train", overrides, tmp_path, synth_dir))
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["global_step"] == 3
    assert {"train/diffusion_loss", "train/itc_loss", "train/caption_loss"} <= set(metrics)
    assert torch.isfinite(torch.tensor(metrics["train/diffusion_loss"]))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.diffusion.proj.dense1.weight" in state  # the network owns the branch


def test_demo_phase1_diffusion_test_redraws_images_and_judges_their_attributes(
    tmp_path: Path, synth_dir: Path
) -> None:
    """fvl-eval's generation path: the test split's first images are redrawn from their queries and
    texts, an attribute judge (here random, saved as a demo_attribute_judge checkpoint) scores them,
    and +viz writes the input / prompt / output grid."""
    from fashion_vl.cli.eval import evaluate
    from fashion_vl.models.attribute_judge import AttributeJudge

    judge = AttributeJudge(
        "resnet10t", heads=GARMENT_HEADS, image_size=32, channels=[8, 8, 16, 16], stem_width=8
    )
    judge_ckpt = tmp_path / "judge.ckpt"
    arch = {"_target_": "fashion_vl.models.attribute_judge.AttributeJudge", "backbone": "resnet10t",
            "image_size": 32, "channels": [8, 8, 16, 16], "stem_width": 8}  # fmt: skip
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in judge.state_dict().items()}, "fvl_config": {"model": arch}},
        judge_ckpt,
    )
    overrides = [
        "experiment=demo_unifashion_phase1_diffusion", "image_size=56", "data.eval_batch_size=8",
        "data.num_workers=0", "+trainer.limit_test_batches=2", "lit.caption_eval.max_images=0",
        "lit.generation_eval.max_images=5", "lit.generation_eval.num_steps=2", "lit.generation_eval.num_examples=3",
        f"lit.generation_eval.judge={judge_ckpt}", "print_config=false", "+viz=true",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    metrics, objects = evaluate(compose_config("eval", overrides, tmp_path, synth_dir))
    lit = objects["lit"]
    assert lit.generated_count == 5 and len(lit.test_examples) == 3
    assert lit.test_examples[0]["output"].shape == (3, 32, 32)
    for name in ("colour_acc", "category_acc", "pattern_acc", "acc"):
        assert 0 <= metrics[f"test/generation/{name}"] <= 100
    assert int(lit.generated.colour_total) == 5  # every synthetic title names a colour
    assert (tmp_path / "generated_examples.png").is_file()
    assert not any(k.startswith("external") or "judge" in k for k in lit.state_dict())
