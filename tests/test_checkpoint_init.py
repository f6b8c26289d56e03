"""Starting a model from a checkpoint: strict, explicit about every key, re-initialising what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_vl.models.checkpoint import (
    CheckpointMismatchError,
    load_from_checkpoint,
    migrate_checkpoint,
    migrate_state_dict,
    read_state_dict,
)
from fashion_vl.models.encoders.image import GridImageEncoder
from fashion_vl.models.encoders.text import build_bert
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import ItmHead
from tests.test_models import tiny_fashionvil


def tiny(init_from: str | None = None, hidden: int = 32) -> FashionViL:
    image = GridImageEncoder("resnet10t", output_stride=16, channels=(8, 16, 32, 64), stem_width=8)
    text = build_bert(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return FashionViL(image, text, init_from=init_from)


def lightning_style_checkpoint(tmp_path: Path, net: FashionViL, extra: dict | None = None) -> Path:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state.update(extra or {})
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, path)
    return path


def test_init_from_a_task_checkpoint_loads_the_encoder_and_reinits_the_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny()
    with torch.no_grad():
        source.contrastive_norm.scale.fill_(9.0)
    heads = {  # a pre-training checkpoint's heads and tokenizer, today's names and the old ones: ignored
        "net.heads.itm.seq_relationship.weight": torch.zeros(2, 32),
        "net.image_tokenizer.quant_conv.weight": torch.zeros(4, 4, 1, 1),
        "objectives.pac.head.weight": torch.zeros(32, 20),
        "objectives.mpfc.tokenizer.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3),
    }
    path = lightning_style_checkpoint(tmp_path, source, heads)
    torch.manual_seed(1)
    model = tiny(init_from=str(path))
    for key, value in source.state_dict().items():
        if key.startswith("contrastive_norm"):
            assert model.state_dict()[key].item() == 4.0  # re-initialised, not 9
        else:
            assert torch.equal(model.state_dict()[key], value), key


def test_init_from_leaves_the_tasks_own_heads_at_their_initialisation(tmp_path: Path) -> None:
    """A fine-tuning network's heads are built after the encoder's weights are loaded, and a
    pre-training checkpoint's heads of the same name do not replace them."""
    heads = {"itm": ItmHead}
    source = tiny_fashionvil(heads=heads)
    with torch.no_grad():
        source.heads["itm"].seq_relationship.weight.fill_(7.0)
    path = lightning_style_checkpoint(tmp_path, source)
    torch.manual_seed(3)
    fresh = tiny_fashionvil(heads=heads)
    torch.manual_seed(3)
    loaded = tiny_fashionvil(heads=heads, init_from=str(path))
    assert torch.equal(
        loaded.heads["itm"].seq_relationship.weight, fresh.heads["itm"].seq_relationship.weight
    )
    assert torch.equal(loaded.text_encoder.pooler.dense.weight, source.text_encoder.pooler.dense.weight)


def test_legacy_keys_move_to_the_network_and_todays_are_left_alone() -> None:
    legacy = {
        "net.text_encoder.x": 0,
        "objectives.itm.head.seq_relationship.weight": 1,
        "objectives.mlm.head.predictions.bias": 2,
        "objectives.mpfc.tokenizer.encoder.conv_in.weight": 3,
        "objectives.diffusion.branch.unet.conv_in.weight": 4,
        "head.classifier.weight": 5,
    }
    assert migrate_state_dict(legacy) == {
        "net.text_encoder.x": 0,
        "net.heads.itm.seq_relationship.weight": 1,
        "net.heads.mlm.predictions.bias": 2,
        "net.image_tokenizer.encoder.conv_in.weight": 3,
        "net.diffusion.unet.conv_in.weight": 4,
        "net.heads.classification.classifier.weight": 5,
    }
    today = migrate_state_dict(legacy)
    assert migrate_state_dict(today) == today
    plain = {"head.weight": 0, "blocks.0.x": 1}  # a plain timm state dict is no LightningModule's
    assert migrate_state_dict(plain) == plain
    checkpoint = {"state_dict": dict(legacy), "current_model_state": {"net.a": 0, "head.b": 1}}
    migrate_checkpoint(checkpoint)
    assert checkpoint["state_dict"] == today
    assert checkpoint["current_model_state"] == {"net.a": 0, "net.heads.classification.b": 1}
    with pytest.raises(CheckpointMismatchError, match="legacy key and its new name"):
        migrate_state_dict({"net.heads.classification.w": 0, "head.w": 1})


def test_plain_state_dict_works_too(tmp_path: Path) -> None:
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "encoder.pt")
    model = tiny(init_from=str(tmp_path / "encoder.pt"))
    assert torch.equal(model.visual_embeddings.projection.weight, source.visual_embeddings.projection.weight)


def test_mismatched_checkpoint_lists_the_keys(tmp_path: Path) -> None:
    path = lightning_style_checkpoint(tmp_path, tiny(hidden=48))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches .*text_encoder") as err:
        tiny(init_from=str(path))
    assert "model=" in str(err.value)
    state = {f"net.{k}": v for k, v in tiny().state_dict().items() if not k.startswith("visual_embeddings")}
    state["net.something.new"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointMismatchError) as err:
        tiny(init_from=str(tmp_path / "partial.ckpt"))
    message = str(err.value)
    assert (
        "missing keys (4): visual_embeddings" in message and "unexpected keys (1): something.new" in message
    )


def test_nothing_under_the_prefix_says_what_the_file_has(tmp_path: Path) -> None:
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"no weights under 'net\.'.*has: model\."):
        load_from_checkpoint(tiny_fashionvil(), tmp_path / "other.ckpt", prefix="net.")
    with pytest.raises(FileNotFoundError, match="init_from"):
        tiny(init_from=str(tmp_path / "none.ckpt"))


def test_state_dicts_read_memory_mapped_and_from_legacy_files(tmp_path: Path) -> None:
    """The zip format is mapped (each part of a model reads its keys from one large checkpoint); a
    pre-zip file, which cannot be mapped, is read whole."""
    zipped, legacy = tmp_path / "run.ckpt", tmp_path / "legacy.pth"
    torch.save({"state_dict": {"net.x": torch.arange(4.0)}}, zipped)
    torch.save({"x": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(zipped)["net.x"], torch.arange(4.0))
    assert torch.equal(read_state_dict(legacy)["x"], torch.ones(2))
