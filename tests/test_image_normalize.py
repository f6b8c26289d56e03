"""uint8 to the device: transforms stop at uint8, each model normalises on its own device, and the model
inputs are the float path's (torchvision's ToDtype + Normalize in the worker) within float rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from fashion_vl.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    FASHION_MEAN,
    FASHION_STD,
    clip_preprocess,
    random_resized_crop,
    resize_crop,
    target_pad,
)
from fashion_vl.models.csanet import CSANet
from fashion_vl.models.encoders.image import GridImageEncoder
from fashion_vl.models.encoders.pixels import ImageNormalize, to_signed, to_unit
from fashion_vl.models.unifashion import FrozenViT
from fashion_vl.models.unifashion.diffusion import to_vae_range
from fashion_vl.models.vqvae import VQTokenizer, build_vqmodel

# float32 rounding of (x / 255 - m) / s against x * (1 / (255 s)) - m / s, |values| < 9
ATOL = 1e-5


def old_float_path(images: torch.Tensor, mean, std) -> torch.Tensor:
    """What the workers did before: uint8 -> float in [0, 1] -> normalised."""
    return v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(images))


def pixels(b: int = 2, side: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("mean, std", [(FASHION_MEAN, FASHION_STD), (CLIP_MEAN, CLIP_STD), ((0.5,), (0.5,))])
def test_normalise_on_device_matches_the_worker_float_path(mean, std) -> None:
    images = pixels()
    norm = ImageNormalize(mean, std)
    ours = norm(images)
    assert ours.dtype == torch.float32
    expected = old_float_path(images, mean * (3 // len(mean)), std * (3 // len(std)))
    assert torch.allclose(ours, expected, atol=ATOL, rtol=0)
    assert norm(expected) is expected  # float input passes through
    # every value a pixel can take, per channel
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.allclose(norm(every), old_float_path(every, *[v * (3 // len(v)) for v in (mean, std)]),
                          atol=ATOL, rtol=0)  # fmt: skip
    assert norm.state_dict() == {}  # non-persistent: checkpoints keep their keys
    with pytest.raises(ValueError, match="std must be positive"):
        ImageNormalize(mean, (0.0, 1.0, 1.0))


def test_transforms_stop_at_uint8_and_keep_their_geometry() -> None:
    image = pixels(1, 80)[0]
    for transform in (
        resize_crop(True, size=56, resize=64),
        resize_crop(False, size=56, resize=64),
        random_resized_crop(True, size=56),
        random_resized_crop(False, size=56),
        target_pad(False, size=56),
        clip_preprocess(False, size=56),
        clip_preprocess(True, size=56),
    ):
        out = transform(image)
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 56, 56)
    # the geometry is the float path's: same crop, resize, then the same normalisation
    eval_crop = resize_crop(False, size=56, resize=64)
    old = v2.Compose([*eval_crop.transforms, v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(list(FASHION_MEAN), list(FASHION_STD))])  # fmt: skip
    assert torch.allclose(ImageNormalize()(eval_crop(image)[None])[0], old(image), atol=ATOL, rtol=0)


def _same_outputs(module: torch.nn.Module, images: torch.Tensor, mean, std, atol: float = 1e-4) -> None:
    module.eval()
    with torch.no_grad():
        ours = module(images)
        old = module(old_float_path(images, mean, std))
    assert torch.allclose(ours, old, atol=atol, rtol=1e-4), float((ours - old).abs().max())


def test_fashionvil_grid_encoder_normalises_uint8() -> None:
    torch.manual_seed(0)
    enc = GridImageEncoder("resnet10t", output_stride=16, channels=(8, 16, 32, 64), stem_width=8)
    _same_outputs(enc, pixels(2, 112), FASHION_MEAN, FASHION_STD)
    assert not any("input_norm" in k for k in enc.state_dict())
    cl = GridImageEncoder("resnet10t", output_stride=16, channels=(8, 16, 32, 64), stem_width=8,
                          channels_last=True)  # fmt: skip
    cl.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert torch.allclose(cl.eval()(pixels(2, 112)), enc(pixels(2, 112)), atol=1e-4)


def test_csanet_normalises_uint8() -> None:
    torch.manual_seed(0)
    net = CSANet("resnet10t", feature_dim=16, num_categories=5, output_stride=16, channels=(8, 16, 32, 64),
                 stem_width=8)  # fmt: skip
    net.eval()
    images = pixels(2, 112)
    with torch.no_grad():
        ours = net.features(images)
        old = net.features(old_float_path(images, FASHION_MEAN, FASHION_STD))
    assert torch.allclose(ours, old, atol=1e-4, rtol=1e-4)


def test_unifashion_vit_normalises_uint8_with_clip_statistics() -> None:
    torch.manual_seed(0)
    vit = FrozenViT("eva_giant_patch14_clip_224", img_size=28, patch_size=14, embed_dim=32, depth=1,
                    num_heads=2, mlp_ratio=2.0)  # fmt: skip
    _same_outputs(vit, pixels(2, 28), CLIP_MEAN, CLIP_STD)


def test_vq_tokenizer_gives_the_same_targets_from_uint8() -> None:
    torch.manual_seed(0)
    vq = build_vqmodel(resolution=56, hidden_dim=4, ch_mult=[1, 2, 4, 8], num_res_blocks=1, z_channels=8,
                       num_tokens=16, codebook_dim=8, norm_num_groups=4)  # fmt: skip
    for renorm in (None, {"from_mean": FASHION_MEAN, "from_std": FASHION_STD, "to_mean": 0.5, "to_std": 0.5}):
        tok = VQTokenizer(vq, chunk_size=2, input_renormalization=renorm)
        images = pixels(3, 56)
        assert torch.equal(tok(images), tok(old_float_path(images, FASHION_MEAN, FASHION_STD)))


def test_vae_and_tryon_ranges_from_uint8() -> None:
    images = pixels(2, 16)
    old_vae = to_vae_range(old_float_path(images, CLIP_MEAN, CLIP_STD), CLIP_MEAN, CLIP_STD)
    assert torch.allclose(to_vae_range(images, CLIP_MEAN, CLIP_STD), old_vae, atol=ATOL, rtol=0)
    assert torch.allclose(to_vae_range(images, (0.5,) * 3, (0.5,) * 3), old_vae, atol=ATOL, rtol=0)
    old_tryon = images.float().div(127.5).sub(1.0)  # what TryOnDataset returned before
    assert torch.equal(to_signed(images), old_tryon)
    assert to_signed(old_tryon) is old_tryon and to_unit(old_tryon) is old_tryon
    assert torch.equal(to_unit(images), images.float() / 255)


def test_open_clip_tower_normalises_with_its_own_preprocessing() -> None:
    pytest.importorskip("open_clip")
    from fashion_vl.models.openclip import build_open_clip, preprocess_config

    tiny, config = "fvl-tiny-clip", "pkg://fashion_vl.conf/model/open_clip/fvl-tiny-clip.json"
    torch.manual_seed(0)
    net = build_open_clip(tiny, model_config=config).eval()
    cfg = preprocess_config(tiny, None, config)
    assert net.input_norm.mean == pytest.approx(tuple(cfg["mean"]))
    images = pixels(2, int(cfg["size"]) if isinstance(cfg["size"], int) else int(cfg["size"][0]))
    with torch.no_grad():
        ours = net.encode_image(images)
        old = net.encode_image(old_float_path(images, cfg["mean"], cfg["std"]))
    assert torch.allclose(ours, old, atol=1e-4, rtol=1e-4)


def test_attribute_judge_reads_uint8_batches() -> None:
    from fashion_vl.models.attribute_judge import AttributeJudge

    torch.manual_seed(0)
    judge = AttributeJudge("resnet10t", heads={"colour": 3}, channels=(8, 16, 32, 64), stem_width=8)
    judge.eval()
    images = pixels(2, 56)
    with torch.no_grad():
        ours = judge.forward_features(images)
        old = judge.forward_features(old_float_path(images, FASHION_MEAN, FASHION_STD))
    assert torch.allclose(ours, old, atol=1e-4, rtol=1e-4)


def test_pretrain_batches_are_uint8(synth_dir: Path, tmp_path: Path) -> None:
    """The pre-training DataLoader collates uint8 images (a quarter of float32's bytes)."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=demo_pretrain", "data.num_workers=0", "data.batch_size=4"],
                         tmp_path, synth_dir)  # fmt: skip
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for key in ("image", "image_view1"):
        if key in batch:
            assert batch[key].dtype == torch.uint8 and batch[key].shape[1] == 3
