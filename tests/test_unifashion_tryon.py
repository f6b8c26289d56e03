"""UniFashion's try-on editor on tiny random models: the 13-channel widening, the sketch ControlNet at
initialisation, the training loss's gradients, guided DDIM sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from fashion_vl.data.synth.tokenizer import train_wordpiece
from fashion_vl.models.unifashion.diffusion import widen_unet_input
from fashion_vl.models.unifashion.tryon import TryOnEditor
from tests.test_unifashion_diffusion import PROMPTS, WIDTH, queries, tiny_branch

SIDE = 16  # pixels; the tiny VAE halves it -> 8x8 latents


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared CPU: one thread avoids hand-off costs (see test_unifashion_diffusion)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(PROMPTS * 2 + ["black leather boots", "a photo"], out, vocab_size=128)
    return str(out)


def tiny_editor(tokenizer: str, seed: int = 0, condition_drop: float = 0.2) -> TryOnEditor:
    return TryOnEditor(tiny_branch(tokenizer, seed=seed), condition_drop=condition_drop)


def tryon_batch(b: int = 2, seed: int = 0, height: int = SIDE, width: int = SIDE) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, height, width, generator=g) > 0.5).float()
    image = torch.rand(b, 3, height, width, generator=g) * 2 - 1
    return {
        "image": image,
        "agnostic": torch.where(mask.bool(), torch.zeros_like(image), image),
        "agnostic_mask": mask,
        "densepose": torch.rand(b, 3, height, width, generator=g) * 2 - 1,
        "sketch": (torch.rand(b, 1, height, width, generator=g) > 0.8).float(),
        "caption": PROMPTS[:b],
    }


def perturb_zero_convs(editor: TryOnEditor, seed: int = 1) -> None:
    """Give the ControlNet's zero convolutions and the UNet's new input weights non-zero values, as
    training would, so that the sketch and the extra channels change the prediction."""
    g = torch.Generator().manual_seed(seed)
    cn = editor.controlnet
    with torch.no_grad():
        for conv in [
            *cn.controlnet_down_blocks,
            cn.controlnet_mid_block,
            cn.controlnet_cond_embedding.conv_out,
        ]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        w = editor.branch.unet.conv_in.weight
        w[:, 4:] = torch.randn(w[:, 4:].shape, generator=g) * 0.05


def test_widened_unet_and_controlnet_at_init_leave_the_unet_output_unchanged(tokenizer_dir: str) -> None:
    branch = tiny_branch(tokenizer_dir)
    original = copy.deepcopy(branch.unet).eval()
    editor = TryOnEditor(branch).eval()
    unet = branch.unet
    assert unet.config.in_channels == 13 and unet.conv_in.weight.shape[1] == 13
    assert not unet.conv_in.weight[:, 4:].any()
    assert editor.controlnet.conv_in.weight.shape[1] == 13
    assert editor.controlnet.controlnet_cond_embedding.conv_in.weight.shape[1] == 1

    g = torch.Generator().manual_seed(0)
    latents, extra = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 9, 8, 8, generator=g) * 3
    context, t = torch.randn(2, 6, WIDTH, generator=g), torch.tensor([10, 500])
    sketch = (torch.rand(2, 1, SIDE, SIDE, generator=g) > 0.5).float()
    with torch.no_grad():
        expected = original(latents, t, encoder_hidden_states=context).sample
        # (a) the 13-channel UNet with zero-initialised extra weights ignores the extra channels
        wide = unet(torch.cat([latents, extra], dim=1), t, encoder_hidden_states=context).sample
        # (b) the ControlNet's zero convolutions give zero residuals: the full path is the plain UNet
        down, mid = editor.controlnet(
            torch.cat([latents, extra], 1), t, encoder_hidden_states=context, controlnet_cond=sketch,
            return_dict=False,
        )  # fmt: skip
        full = editor.predict_noise(latents, t, extra, context, sketch)
    torch.testing.assert_close(wide, expected, rtol=1e-5, atol=1e-5)
    assert all(not r.any() for r in down) and not mid.any()
    torch.testing.assert_close(full, wide, rtol=1e-5, atol=1e-5)

    # An already widened UNet is kept; any other width is refused.
    again = TryOnEditor(branch)
    assert again.branch.unet.config.in_channels == 13
    bad = tiny_branch(tokenizer_dir)
    widen_unet_input(bad.unet, 5)
    with pytest.raises(ValueError, match="9 input channels"):
        TryOnEditor(bad)


def test_spatial_inputs_are_agnostic_mask_and_pose_latents(tokenizer_dir: str) -> None:
    editor = tiny_editor(tokenizer_dir).eval()
    batch = tryon_batch()
    spatial = editor.spatial_inputs(batch)
    assert spatial.shape == (2, 9, 8, 8)
    vae = editor.branch.vae
    with torch.no_grad():
        agn = vae.encode(batch["agnostic"]).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(spatial[:, :4], agn)
    torch.testing.assert_close(spatial[:, 4:5], batch["agnostic_mask"][:, :, ::2, ::2])  # nearest
    assert set(spatial[:, 4].unique().tolist()) <= {0.0, 1.0}


def test_training_loss_reaches_the_controlnet_and_the_new_input_weights(tokenizer_dir: str) -> None:
    editor = tiny_editor(tokenizer_dir).train()
    branch = editor.branch
    assert editor.controlnet.training and branch.unet.training and not branch.vae.training
    batch = tryon_batch()
    loss = editor.training_loss(batch, queries(), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    cn = editor.controlnet
    # At init only the zero convolutions get gradient (everything behind them is multiplied by 0).
    assert all(conv.weight.grad is not None and conv.weight.grad.any() for conv in cn.controlnet_down_blocks)
    assert cn.controlnet_mid_block.weight.grad.any()
    assert branch.unet.conv_in.weight.grad[:, 4:].any()  # agnostic, mask and pose channels
    assert branch.proj.dense1.weight.grad is not None  # the queries condition the UNet
    assert all(p.grad is None for p in branch.vae.parameters())
    assert all(p.grad is None for p in branch.text_encoder.parameters())

    # The caption-only path (no queries) works too.
    assert torch.isfinite(editor.training_loss(batch, None, torch.Generator().manual_seed(0)))


def test_dropped_conditions_ignore_sketch_and_queries(tokenizer_dir: str) -> None:
    editor = tiny_editor(tokenizer_dir)
    perturb_zero_convs(editor)  # otherwise the sketch would not matter anyway
    editor.train()
    editor.branch.proj.dropout.p = 0.0
    batch, other = tryon_batch(), tryon_batch()
    other["sketch"] = 1 - other["sketch"]

    def loss(b: dict, q: torch.Tensor, p: float) -> torch.Tensor:
        with torch.no_grad():
            return editor.training_loss(b, q, torch.Generator().manual_seed(0), condition_drop=p)

    torch.testing.assert_close(loss(batch, queries(), 0.999), loss(other, queries(seed=5), 0.999))
    assert not torch.allclose(loss(batch, queries(), 0.0), loss(other, queries(seed=5), 0.0))


def test_guidance_at_scale_one_is_the_conditional_prediction(tokenizer_dir: str) -> None:
    editor = tiny_editor(tokenizer_dir)
    perturb_zero_convs(editor)
    editor.eval()
    batch = tryon_batch()
    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor(400)
    with torch.no_grad():
        spatial = editor.spatial_inputs(batch)
        cond = editor.encode_context(batch["caption"], queries())
        uncond = editor.branch.encode_unconditional(2, cond.shape[1])
        sketch = batch["sketch"]
        eps_c = editor.predict_noise(latents, t, spatial, cond, sketch)
        eps_u = editor.predict_noise(latents, t, spatial, uncond, torch.zeros_like(sketch))
        one = editor.guided_noise(latents, t, spatial, cond, uncond, sketch, 1.0)
        three = editor.guided_noise(latents, t, spatial, cond, uncond, sketch, 3.0)
    torch.testing.assert_close(one, eps_c)
    torch.testing.assert_close(three, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(three, eps_c)


def test_sampling_is_deterministic_for_a_seed_in_range_and_pastes_back_on_request(tokenizer_dir: str) -> None:
    editor = tiny_editor(tokenizer_dir)
    perturb_zero_convs(editor)
    editor.train()
    batch = tryon_batch(height=SIDE, width=8)  # non-square, as 512x384 is

    def draw(seed: int, scale: float = 2.0, **kw) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return editor.sample(batch, num_steps=3, guidance_scale=scale, generator=g, **kw)

    first = draw(0)
    assert first.shape == (2, 3, SIDE, 8) and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(draw(0), first, rtol=0, atol=0)
    assert not torch.equal(draw(1), first)
    assert not torch.equal(draw(0, scale=1.0), first)
    assert editor.training and editor.controlnet.training  # the mode is restored

    pasted = draw(0, paste_back=True)
    keep = batch["agnostic_mask"].expand_as(pasted) == 0
    torch.testing.assert_close(pasted[keep], batch["image"][keep])
    torch.testing.assert_close(pasted[~keep], first[~keep])

    with pytest.raises(ValueError, match="multiples of 4"):
        editor.sample(tryon_batch(height=SIDE, width=6), num_steps=1)


def test_a_frozen_unet_still_trains_its_new_input_weights(tokenizer_dir: str) -> None:
    editor = TryOnEditor(tiny_branch(tokenizer_dir, train_unet=False)).train()
    unet = editor.branch.unet
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {"conv_in.weight", "conv_in.bias"}
    editor.training_loss(tryon_batch(), None, torch.Generator().manual_seed(0)).backward()
    assert unet.conv_in.weight.grad[:, 4:].any()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_lightning_module_steps_and_optimizes_only_the_trainable_parts(tokenizer_dir: str) -> None:
    import functools

    from fashion_vl.lit.unifashion_tryon import UniFashionTryOnModule

    branch = tiny_branch(tokenizer_dir)
    lit = UniFashionTryOnModule(branch, functools.partial(torch.optim.AdamW, lr=1e-3), seed=3)
    assert isinstance(lit.net, TryOnEditor) and lit.net.condition_drop == 0.2
    optimizer = lit.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in lit.net.controlnet.parameters())
    assert id(branch.unet.conv_in.weight) in in_optimizer
    assert not any(id(p) in in_optimizer for p in branch.vae.parameters())
    assert not any(id(p) in in_optimizer for p in branch.text_encoder.parameters())

    lit.train()
    batch = tryon_batch()
    loss = lit.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    lit.eval()
    with torch.no_grad():
        lit.validation_step(batch, 0)


# ------------------------------------------------------------------- the Q-Former reading sketch + caption
def tiny_query_encoder(seed: int = 0, trainable: bool = False):
    from fashion_vl.models.unifashion import FrozenViT, UniFashion, build_qformer
    from fashion_vl.models.unifashion.tryon import SketchTextEncoder

    torch.manual_seed(seed)
    vit = FrozenViT(
        "eva_giant_patch14_clip_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0
    )  # fmt: skip
    qformer = build_qformer(
        num_query_tokens=4, embed_dim=16, bos_token_id=127, vocab_size=128, hidden_size=WIDTH,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        encoder_hidden_size=32, initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return SketchTextEncoder(UniFashion(vit, qformer), trainable=trainable)


def tokenised(batch: dict, tokenizer: str) -> dict:
    from fashion_vl.data.collate import TextTokenizer
    from fashion_vl.hub import load_tokenizer

    return {**batch, **TextTokenizer(load_tokenizer(tokenizer), 16)(batch["caption"])}


def test_query_encoder_reads_sketch_and_caption_and_stays_frozen(tokenizer_dir: str) -> None:
    encoder = tiny_query_encoder()
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    batch = tokenised(tryon_batch(), tokenizer_dir)
    pixels = encoder.pixels(batch["sketch"])
    assert pixels.shape == (2, 3, 32, 32)
    q = encoder(batch["sketch"], batch["input_ids"], batch["attention_mask"])
    assert q.shape == (2, 4, WIDTH) and not q.requires_grad
    other_sketch = encoder(1 - batch["sketch"], batch["input_ids"], batch["attention_mask"])
    other_caption = encoder(batch["sketch"], batch["input_ids"].flip(0), batch["attention_mask"].flip(0))
    assert (q - other_sketch).abs().max() > 1e-4 and (q - other_caption).abs().max() > 1e-4
    # a 16x8 sketch is padded with white (no line) to a square before resizing: no stretching
    tall = torch.zeros(1, 1, 16, 8)
    tall[..., :, 0] = 1.0  # a line down the left edge
    column = encoder.pixels(tall)[0, 0] * encoder.std[0, 0] + encoder.mean[0, 0]
    # 4 px of white padding left of the line in 16 -> the line at x = 8..9 of 32, white left of it
    assert int(column.mean(0).argmin()) in (8, 9) and column[:, :6].min() > 0.99


def test_editor_with_query_encoder_conditions_on_it_and_needs_tokenised_captions(tokenizer_dir: str) -> None:
    editor = TryOnEditor(tiny_branch(tokenizer_dir), query_encoder=tiny_query_encoder())
    assert (
        editor.vocab_size == 128 and tiny_editor(tokenizer_dir).vocab_size is None
    )  # for check_tokenizer_fits
    perturb_zero_convs(editor)
    raw = tryon_batch()
    with pytest.raises(KeyError, match=r"data\.tokenizer"):
        editor.training_loss(raw, generator=torch.Generator().manual_seed(0))
    batch = tokenised(raw, tokenizer_dir)
    editor.train()
    loss = editor.training_loss(batch, generator=torch.Generator().manual_seed(0), condition_drop=0.0)
    loss.backward()
    assert editor.branch.proj.dense1.weight.grad is not None  # the queries reach the ProjLayer
    assert all(p.grad is None for p in editor.query_encoder.parameters())
    # the conditioning is the encoder's: other sketch queries give another loss on the same noise
    swapped = {
        **batch,
        "input_ids": batch["input_ids"].flip(0),
        "attention_mask": batch["attention_mask"].flip(0),
    }
    editor.eval()  # no ProjLayer dropout: the same inputs give the same loss
    with torch.no_grad():
        first = editor.training_loss(batch, generator=torch.Generator().manual_seed(0), condition_drop=0.0)
        again = editor.training_loss(batch, generator=torch.Generator().manual_seed(0), condition_drop=0.0)
        other = editor.training_loss(swapped, generator=torch.Generator().manual_seed(0), condition_drop=0.0)
    assert torch.equal(first, again) and not torch.isclose(other, first, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="query_dim"):
        TryOnEditor(tiny_branch(tokenizer_dir), query_encoder=_wider_encoder())


def _wider_encoder():
    encoder = tiny_query_encoder()
    encoder.unifashion.qformer.config.hidden_size = 2 * WIDTH  # what a mismatched config would report
    return encoder


def test_collate_tokenises_captions_when_the_datamodule_has_a_tokenizer(tokenizer_dir: str) -> None:
    from fashion_vl.data.collate import TextTokenizer
    from fashion_vl.data.tryon import collate_tryon
    from fashion_vl.hub import load_tokenizer

    samples = [{"image": torch.zeros(3, 4, 4), "caption": c, "bad_images": []} for c in PROMPTS]
    plain = collate_tryon(samples)
    assert "input_ids" not in plain and plain["caption"] == PROMPTS
    tokens = collate_tryon(samples, TextTokenizer(load_tokenizer(tokenizer_dir), 16))
    assert tokens["input_ids"].shape[0] == 2 and tokens["attention_mask"].shape == tokens["input_ids"].shape


# ------------------------------------------------------------------------------ test-time generation
class _MeanColourQuality(torch.nn.Module):
    """Stands in for FID/KID: counts what it is given (real vs generated)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # would enter the state dict if registered
        self.reset()

    def reset(self) -> None:
        self.seen = {True: 0, False: 0}

    def update(self, images: torch.Tensor, real: bool) -> None:
        self.seen[real] += images.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return {"fid": torch.tensor(float(self.seen[False]))}


def test_test_step_scores_samples_outside_the_mask_and_keeps_examples(tokenizer_dir: str) -> None:
    import functools

    from fashion_vl.lit.unifashion_tryon import UniFashionTryOnModule

    def run(paste_back: bool) -> tuple[dict, UniFashionTryOnModule]:
        quality = _MeanColourQuality()
        lit = UniFashionTryOnModule(
            tiny_branch(tokenizer_dir), functools.partial(torch.optim.AdamW, lr=1e-3), seed=0,
            sampling={"max_images": 3, "num_steps": 2, "guidance_scale": 2.0, "paste_back": paste_back,
                      "num_examples": 2},
            quality=quality,
        )  # fmt: skip
        assert not any(k.startswith("external") or "quality" in k for k in lit.state_dict())
        logged = {}
        lit.log_dict = lambda values, **kw: logged.update({k: float(v) for k, v in values.items()})
        lit.on_test_epoch_start()
        with torch.no_grad():
            lit.test_step({**tryon_batch(2), "bad_images": []}, 0)
            lit.test_step({**tryon_batch(2, seed=1), "bad_images": []}, 1)  # only 1 of these is sampled
            lit.test_step({**tryon_batch(2, seed=2), "bad_images": []}, 2)  # budget spent
        lit.on_test_epoch_end()
        return logged, lit

    logged, lit = run(paste_back=False)
    assert lit.sampled == 3 and len(lit.test_examples) == 2
    assert logged["test/fid"] == 3.0  # 3 generated pictures reached the quality metric
    assert 0 < logged["test/keep_psnr"] < 30 and -1 <= logged["test/keep_ssim"] < 0.9  # random model
    assert lit.test_examples[0]["output"].shape == (3, SIDE, SIDE)
    pasted, _ = run(paste_back=True)  # the kept region is copied: exact outside the mask
    assert pasted["test/keep_psnr"] > 60 and pasted["test/keep_ssim"] > 0.99
    with pytest.raises(KeyError, match=r"lit\.sampling"):
        UniFashionTryOnModule(tiny_branch(tokenizer_dir), None, sampling={"steps": 3})


def test_result_grid_of_tryon_examples(tmp_path) -> None:
    from fashion_vl.viz.examples import TRYON_COLUMNS, save_examples

    class Done:
        test_examples = [
            {"agnostic": torch.zeros(3, 8, 6), "sketch": torch.ones(1, 8, 6), "mask": torch.ones(1, 8, 6),
             "output": torch.rand(3, 8, 6) * 2 - 1, "person": torch.zeros(3, 8, 6), "caption": "red t-shirt"}
        ] * 3  # fmt: skip

    from PIL import Image

    path = save_examples(Done(), None, tmp_path / "grid.png", n=2)
    with Image.open(path) as grid:
        assert grid.width > 128 * len(TRYON_COLUMNS) and grid.height > 2 * 128


# ------------------------------------------------------------------------------------ fitted tiny VAE
def test_fitted_vae_loads_into_the_branch_and_mismatches_are_clear(tmp_path, tokenizer_dir: str) -> None:
    import functools

    from diffusers import AutoencoderKL

    from fashion_vl.lit.autoencoder_kl import AutoencoderKLModule
    from fashion_vl.models.unifashion.diffusion import build_diffusion_branch
    from tests.test_unifashion_diffusion import TEXT, UNET, VAE

    torch.manual_seed(0)
    lit = AutoencoderKLModule(AutoencoderKL(**VAE), functools.partial(torch.optim.AdamW, lr=3e-3))
    optimizer = lit.configure_optimizers()["optimizer"]
    batch = {"image": tryon_batch(4)["image"]}
    losses = []
    for _ in range(15):
        loss = lit.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]  # it learns to reconstruct
    ckpt = tmp_path / "vae.ckpt"
    torch.save({"state_dict": lit.state_dict()}, ckpt)
    branch = build_diffusion_branch(
        pretrained=False, tokenizer=tokenizer_dir, query_dim=WIDTH, proj_hidden_dim=64, resolution=16,
        unet=UNET, vae=VAE, text_encoder=TEXT, vae_from=str(ckpt),
    )  # fmt: skip
    for name, value in lit.net.state_dict().items():
        torch.testing.assert_close(branch.vae.state_dict()[name], value)
    # scaled latents of unit variance: the scaling factor is 1 / the fitted latents' std
    assert float(lit.latent_std) > 0
    assert branch.vae.config.scaling_factor == pytest.approx(1 / float(lit.latent_std))
    assert not any(p.requires_grad for p in branch.vae.parameters())  # still frozen in the branch
    with pytest.raises(ValueError, match="does not fit"):
        build_diffusion_branch(
            pretrained=False, tokenizer=tokenizer_dir, query_dim=WIDTH, proj_hidden_dim=64, resolution=16,
            unet=UNET, vae={**VAE, "latent_channels": 8}, text_encoder=TEXT, vae_from=str(ckpt),
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="demo_diffusion_vae"):
        build_diffusion_branch(
            pretrained=False, tokenizer=tokenizer_dir, query_dim=WIDTH, proj_hidden_dim=64, resolution=16,
            unet=UNET, vae=VAE, text_encoder=TEXT, vae_from=str(tmp_path / "missing.ckpt"),
        )  # fmt: skip


def test_vae_fit_weights_foreground_pixels() -> None:
    import functools

    from diffusers import AutoencoderKL

    from fashion_vl.lit.autoencoder_kl import AutoencoderKLModule
    from tests.test_unifashion_diffusion import VAE

    def module(weight: float) -> AutoencoderKLModule:
        return AutoencoderKLModule(
            AutoencoderKL(**VAE), functools.partial(torch.optim.AdamW, lr=1e-3), foreground_weight=weight
        )

    x = torch.ones(1, 3, 4, 4)  # white background
    x[..., :1, :] = -1.0  # a dark garment: the top row, 4 of 16 pixels
    miss_garment = x.clone()
    miss_garment[..., :1, :] = 1.0  # the garment reconstructed as background
    miss_background = x.clone()
    miss_background[..., 1:2, :] = -1.0  # one background row drawn dark
    plain, weighted = module(1.0), module(10.0)
    # plain L1 cannot tell the two misses apart; the weighted loss counts the garment 10x
    assert plain.recon_loss(miss_garment, x) == plain.recon_loss(miss_background, x)
    assert weighted.recon_loss(miss_garment, x) == pytest.approx(10 * weighted.recon_loss(miss_background, x))
    assert weighted.recon_loss(x, x) == 0
    with pytest.raises(ValueError, match="foreground_weight"):
        module(0.5)
