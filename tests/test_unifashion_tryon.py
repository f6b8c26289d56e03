"""UniFashion's try-on editor on tiny random models: the 13-channel widening, the sketch ControlNet at
initialisation, the training loss's gradients, guided DDIM sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from fashion_vl.data.tokenizer import train_wordpiece
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
