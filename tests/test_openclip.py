"""CLIP-family encoders: the tiny open_clip config with open_clip's shipped tokenizer, local weight files,
transformers CLIP, the model's own preprocessing, and the offline failure of hub models."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from fashion_vl.data.transforms import CLIP_MEAN, clip_preprocess  # noqa: E402
from fashion_vl.hub import PretrainedUnavailableError  # noqa: E402
from fashion_vl.models.openclip import (  # noqa: E402
    ClipEncoder,
    build_open_clip,
    build_transformers_clip,
    open_clip_tokenizer,
    open_clip_transform,
    resolve_config_file,
)

TINY = "fvl-tiny-clip"
TINY_CONFIG = "pkg://fashion_vl.conf/model/open_clip/fvl-tiny-clip.json"


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    torch.manual_seed(0)
    return build_open_clip(TINY, model_config=TINY_CONFIG).eval()


def test_tiny_open_clip_speaks_our_encoder_vocabulary(tiny: ClipEncoder) -> None:
    tokenizer = open_clip_tokenizer(TINY, model_config=TINY_CONFIG)
    batch = tokenizer(["a red silk dress", "black leather ankle boots with a block heel"], padding="longest")
    assert batch["input_ids"].shape == (2, tiny.context_length) == (2, 32)  # always the model's length
    assert batch["attention_mask"].sum(1).tolist() == [6, 10]  # <start> + words + <end>, pad id 0
    assert len(tokenizer) == tiny.vocab_size == 49408
    transform = open_clip_transform(False, TINY, model_config=TINY_CONFIG)
    images = torch.stack([transform(torch.randint(0, 256, (3, 90, 60), dtype=torch.uint8)) for _ in range(3)])
    assert images.shape == (3, 3, 64, 64)
    with torch.no_grad():
        image = tiny.encode_image(images, normalize=True)
        text = tiny.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        raw = tiny.model.encode_image(tiny.input_norm(images))  # uint8 -> the model's own mean/std
    assert image.shape == (3, 64) and text.shape == (2, 64) and tiny.embed_dim == tiny.hidden_size == 64
    # dot products of normalised embeddings are the model's logits: exp(logit_scale) * cosine
    cosine = (
        torch.nn.functional.normalize(raw, dim=-1)
        @ torch.nn.functional.normalize(tiny.model.encode_text(batch["input_ids"]), dim=-1).T
    )
    assert torch.allclose(image @ text.T, tiny.model.logit_scale.exp() * cosine, atol=1e-4)
    assert tiny.logit_bias is None


def test_local_weight_file_and_init_from_reproduce_the_model(tiny: ClipEncoder, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), weights)
    from_file = build_open_clip(TINY, pretrained=str(weights), model_config=TINY_CONFIG).eval()
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in tiny.state_dict().items()}}, ckpt)
    from_run = build_open_clip(TINY, model_config=TINY_CONFIG, init_from=str(ckpt)).eval()
    ids = open_clip_tokenizer(TINY, model_config=TINY_CONFIG)(["a blue denim jacket"])["input_ids"]
    with torch.no_grad():
        expected = tiny.encode_text(ids)
        assert torch.equal(from_file.encode_text(ids), expected)
        assert torch.equal(from_run.encode_text(ids), expected)
    assert str(weights) in from_file.name


@pytest.mark.parametrize(
    "name, pretrained",
    [("hf-hub:Marqo/marqo-fashionSigLIP", None), ("hf-hub:patrickjohncyh/fashion-clip", None),
     ("ViT-B-16", "laion2b_s34b_b88k")],
)  # fmt: skip
def test_hub_models_fail_at_once_offline(name: str, pretrained: str | None, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    key = r"model\.name" if pretrained is None else r"model\.pretrained=/path/to/CLIP-ViT-B-16-laion2B"
    with pytest.raises(PretrainedUnavailableError, match=key):
        build_open_clip(name, pretrained=pretrained)
    if name.startswith("hf-hub:"):
        with pytest.raises(PretrainedUnavailableError):
            open_clip_tokenizer(name)
    assert time.perf_counter() - start < 30  # no minute of retries


def test_bad_sources_are_named() -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.model_config"):
        resolve_config_file("/nonexistent/x.json")
    with pytest.raises(ValueError, match="file stem"):
        build_open_clip("ViT-B-16", model_config=TINY_CONFIG)
    with pytest.raises(ValueError, match=r"model\.pretrained='no-such-tag' is neither .* laion2b_s34b_b88k"):
        build_open_clip("ViT-B-16", pretrained="no-such-tag")


def test_transformers_clip_tiny_random(synth_dir: Path, tmp_path: Path) -> None:
    from fashion_vl.hub import load_tokenizer

    tokenizer = load_tokenizer(str(synth_dir / "tokenizer"))
    net = build_transformers_clip(
        pretrained=False,
        text_config={"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 40,
                     "eos_token_id": tokenizer.sep_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    ).eval()  # fmt: skip
    tokens = tokenizer(["red dress", "blue wool coat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = net.encode_text(tokens["input_ids"], tokens["attention_mask"], normalize=True)
        image = net.encode_image(torch.randn(3, 3, 32, 32), normalize=True)
    assert text.shape == (2, 16) and image.shape == (3, 16) and net.backend == "transformers"
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    from fashion_vl.models.openclip import transformers_clip_transform

    CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(
        tmp_path / "clip"
    )
    SiglipImageProcessor(size={"height": 24, "width": 24}).save_pretrained(tmp_path / "siglip")
    picture = torch.full((3, 80, 40), 255, dtype=torch.uint8)
    clip_input = transformers_clip_transform(False, str(tmp_path / "clip"))(picture)
    siglip_input = transformers_clip_transform(False, str(tmp_path / "siglip"))(picture)
    assert clip_input.shape == (3, 32, 32) and siglip_input.shape == (3, 24, 24)
    assert (siglip_input == 255).all() and siglip_input.dtype == torch.uint8  # normalised by the model
    assert net.input_norm.mean == pytest.approx(CLIP_MEAN)  # a random tower: CLIP's statistics
    assert torch.allclose((text * text).sum(-1), net.logit_scale.expand(2), atol=1e-4)


@pytest.mark.parametrize(
    "mode, expected", [("shortest", (3, 32, 32)), ("squash", (3, 32, 32)), ("longest", (3, 32, 32))]
)
def test_clip_preprocess_modes(mode: str, expected: tuple) -> None:
    image = torch.full((3, 80, 40), 255, dtype=torch.uint8)
    out = clip_preprocess(False, size=32, resize_mode=mode)(image)
    assert tuple(out.shape) == expected
    # shortest crops (no padding), longest pads the sides with zeros, squash stretches
    assert (out[:, :, 0].min() == 0) == (mode == "longest")
    assert clip_preprocess(True, size=32)(image).shape == (3, 32, 32)


def test_clip_embedder_meets_the_inference_contract(tmp_path: Path) -> None:
    from PIL import Image

    from fashion_vl.data.images import ImageLoadError
    from fashion_vl.inference import ClipEmbedder

    torch.manual_seed(0)
    embedder = ClipEmbedder.from_open_clip(TINY, model_config=TINY_CONFIG, device="cpu")
    assert embedder.embed_dim == 64 and embedder.vectors_per_image == 1
    assert {"image", "text", "composed"} <= embedder.capabilities
    picture = Image.new("RGB", (48, 80), (200, 30, 30))
    picture.save(tmp_path / "red.png")
    raw = torch.from_numpy(__import__("numpy").asarray(picture).copy()).permute(2, 0, 1)
    images = embedder.encode_images([picture, tmp_path / "red.png", raw], batch_size=2)
    assert images.shape == (3, 64) and torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(images[0], images[1], atol=1e-5) and torch.allclose(images[0], images[2], atol=1e-5)
    texts = embedder.encode_texts(["a red dress", "a blue coat"], to_numpy=True)
    assert texts.shape == (2, 64)
    composed = embedder.encode_composed([picture, picture], ["make it blue", "longer"])
    expected = torch.nn.functional.normalize(
        images[:1] + torch.from_numpy(embedder.encode_texts(["make it blue"], to_numpy=True)), dim=-1
    )
    assert torch.allclose(composed[:1], expected, atol=1e-5)
    assert torch.equal(embedder.image_query([picture]), embedder.encode_images([picture]))
    with pytest.raises(ImageLoadError):
        embedder.encode_images([tmp_path / "missing.png"])
