"""FashionViL encoder: shapes, the three entry points, offline loading errors, purity."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from fashion_vl import hub
from fashion_vl.hub import load_tokenizer
from fashion_vl.models.encoders.image import GridImageEncoder, create_timm_trunk
from fashion_vl.models.encoders.text import build_bert
from fashion_vl.models.fashionvil import FashionViL, masked_mean


def tiny_fashionvil(vocab: int = 100, **kwargs) -> FashionViL:
    image = GridImageEncoder("resnet10t", output_stride=16, channels=(8, 16, 32, 64), stem_width=8)
    text = build_bert(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return FashionViL(image, text, **kwargs).eval()


@pytest.fixture(scope="module")
def model() -> FashionViL:
    torch.manual_seed(0)
    return tiny_fashionvil()


def batch(b: int = 3, length: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, 112, 112, generator=g)
    ids = torch.randint(5, 100, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 5:] = 0
    return images, ids, mask


def test_shapes_of_the_three_entry_points(model: FashionViL) -> None:
    images, ids, mask = batch()
    assert model.image_grid(images).shape == (3, 49, 64)  # 7x7 grid at 112 px, output stride 16
    assert model.encode_image(images).shape == (3, 32)
    assert model.encode_text(ids, mask).shape == (3, 32)
    fused = model.encode_fused(ids, mask, images)
    assert (
        fused.text.shape == (3, 9, 32) and fused.visual.shape == (3, 49, 32) and fused.pooled.shape == (3, 32)
    )


def test_normalised_embeddings_have_norm_s(model: FashionViL) -> None:
    images, _, _ = batch()
    emb = model.encode_image(images, normalize=True)
    assert torch.allclose(emb.norm(dim=-1), torch.full((3,), 4.0), atol=1e-5)


def test_image_only_path_bypasses_the_transformer(model: FashionViL) -> None:
    images, _, _ = batch()
    before = model.encode_image(images)
    with torch.no_grad():
        for p in model.text_encoder.parameters():
            p.add_(1.0)
    try:
        assert torch.equal(before, model.encode_image(images))
    finally:
        with torch.no_grad():
            for p in model.text_encoder.parameters():
                p.sub_(1.0)


def test_padding_does_not_change_outputs(model: FashionViL) -> None:
    images, ids, mask = batch()
    other = ids.clone()
    other[0, 5:] = 7  # different tokens under the padding mask
    assert torch.allclose(model.encode_text(ids, mask), model.encode_text(other, mask), atol=1e-6)
    a, b = model.encode_fused(ids, mask, images), model.encode_fused(other, mask, images)
    assert torch.allclose(a.visual, b.visual, atol=1e-6) and torch.allclose(a.pooled, b.pooled, atol=1e-6)


def test_text_mean_counts_only_real_tokens() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_visual_tables_start_from_berts() -> None:
    model = tiny_fashionvil()
    bert_pos = model.text_encoder.embeddings.position_embeddings.weight[:49]
    assert torch.equal(model.visual_embeddings.position_embeddings.weight, bert_pos)
    assert torch.equal(
        model.visual_embeddings.token_type_embeddings.weight[0],
        model.text_encoder.embeddings.token_type_embeddings.weight[0],
    )


def test_masked_grid_positions_are_zeroed(model: FashionViL) -> None:
    images, _, _ = batch()
    mask = torch.zeros(3, 49, dtype=torch.bool)
    mask[:, :8] = True
    grid = model.image_grid(images, grid_mask=mask)
    assert grid[:, :8].abs().sum() == 0 and grid[:, 8:].abs().sum() > 0


def test_offline_pretrained_load_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr("fashion_vl.models.encoders.image.hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(hub.PretrainedUnavailableError) as err:
        build_bert("some-org/not-cached-bert", pretrained=True)
    assert "model.text_encoder.name=/path/to/not-cached-bert" in str(err.value)
    assert "pretrained: false" in str(err.value)
    with pytest.raises(hub.PretrainedUnavailableError, match=r"model\.image_encoder\.name"):
        create_timm_trunk("resnet50.tv_in1k", pretrained=True)
    with pytest.raises(hub.PretrainedUnavailableError, match=r"tokenizer="):
        load_tokenizer("some-org/not-cached-bert")
    assert time.perf_counter() - start < 10


def test_hub_probe_respects_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False


def test_local_weight_file_for_image_encoder(tmp_path) -> None:
    trunk = create_timm_trunk("resnet10t", channels=(8, 16, 32, 64), stem_width=8)
    torch.save(trunk.state_dict(), tmp_path / "w.pth")
    loaded = create_timm_trunk(
        "resnet10t", checkpoint_path=str(tmp_path / "w.pth"), channels=(8, 16, 32, 64), stem_width=8
    )
    for (name, a), b in zip(trunk.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        create_timm_trunk("resnet10t", checkpoint_path=str(tmp_path / "none.pth"))


def test_pure_modules_do_not_import_lightning() -> None:
    code = (
        "import sys; import fashion_vl.models.fashionvil, fashion_vl.losses, fashion_vl.metrics.retrieval, "
        "fashion_vl.data.formats, fashion_vl.data.datasets, fashion_vl.data.synth; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
