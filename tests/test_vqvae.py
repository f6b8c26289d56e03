"""The MPFC image tokenizer: VQ-VAE architecture, the frozen tokenizer, the authors' (taming) file
format, and training our own VQ-VAE end to end on the tiny synthetic data."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import nn

from fashion_vl.data.transforms import FASHION_MEAN, FASHION_STD
from fashion_vl.lit.vqvae import CodebookUsage, VQVAEModule
from fashion_vl.models.vqvae import (
    TOKENIZER_PREFIXES,
    VQTokenizer,
    build_vqmodel,
    diffusers_to_taming,
    load_taming_state_dict,
    load_vqvae_checkpoint,
    taming_to_diffusers,
)
from tests.conftest import compose_config

TINY = dict(
    resolution=56, hidden_dim=16, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(7,),
    z_channels=32, num_tokens=64, codebook_dim=32, norm_num_groups=8,
)  # fmt: skip
EMA_KEYS = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(build_vqmodel(**TINY), chunk_size=8)


# --------------------------------------------------------------------------------------------------
# A reference taming-transformers encoder (taming/modules/diffusionmodules/model.py, as the authors'
# file was saved from): the names and the computation the mapping must reproduce.


class TamingResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class TamingAttnBlock(nn.Module):
    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        w = torch.softmax(torch.bmm(q, k.reshape(b, c, hh * ww)) * c**-0.5, dim=2)  # b, hw(q), hw(k)
        out = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class TamingDownsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class TamingEncoder(nn.Module):
    def __init__(
        self, resolution, hidden_dim, ch_mult, num_res_blocks, attn_resolutions, z_channels, groups, **_
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(3, hidden_dim, 3, 1, 1)
        in_mult, res = (1, *ch_mult), resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            c_in, c_out = hidden_dim * in_mult[level], hidden_dim * mult
            for _ in range(num_res_blocks):
                stage.block.append(TamingResnetBlock(c_in, c_out, groups))
                c_in = c_out
                if res in attn_resolutions:
                    stage.attn.append(TamingAttnBlock(c_in, groups))
            if level != len(ch_mult) - 1:
                stage.downsample = TamingDownsample(c_in)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = TamingResnetBlock(c_in, c_in, groups)
        self.mid.attn_1 = TamingAttnBlock(c_in, groups)
        self.mid.block_2 = TamingResnetBlock(c_in, c_in, groups)
        self.norm_out = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class TamingVQEncoder(nn.Module):
    """What the authors' file holds: encoder, quant_conv and an EMA codebook."""

    def __init__(self, arch: dict) -> None:
        super().__init__()
        self.encoder = TamingEncoder(groups=arch["norm_num_groups"], **arch)
        self.quant_conv = nn.Conv2d(arch["z_channels"], arch["codebook_dim"], 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Module()
        self.quantize.embedding.weight = nn.Parameter(torch.randn(arch["num_tokens"], arch["codebook_dim"]))
        self.quantize.embedding.register_buffer("cluster_size", torch.rand(arch["num_tokens"]))
        self.quantize.embedding.register_buffer(
            "embed_avg", torch.randn(arch["num_tokens"], arch["codebook_dim"])
        )
        with torch.no_grad():  # no parameter at its trivial init, so a mis-mapped tensor shows
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.1)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))

    def indices(self, images: torch.Tensor) -> torch.Tensor:
        z = self.latents(images).permute(0, 2, 3, 1)  # b, h, w, D
        flat = z.reshape(-1, z.shape[-1])
        dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.quantize.embedding.weight.T
        dist = dist + (self.quantize.embedding.weight**2).sum(1)[None]
        return dist.argmin(1).view(z.shape[0], -1)


@pytest.fixture
def taming() -> TamingVQEncoder:
    torch.manual_seed(1)
    return TamingVQEncoder(TINY).double().eval()


def taming_state(model: TamingVQEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Architecture


def test_authors_architecture_maps_onto_vqmodel_and_gives_a_7x7_grid() -> None:
    model = build_vqmodel()
    cfg = model.config
    assert tuple(cfg.block_out_channels) == (128, 128, 256, 256, 512, 512)
    assert cfg.down_block_types == ("DownEncoderBlock2D",) * 5 + ("AttnDownEncoderBlock2D",)
    assert cfg.up_block_types == ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 5
    assert (cfg.layers_per_block, cfg.latent_channels, cfg.num_vq_embeddings, cfg.vq_embed_dim) == (
        2,
        256,
        1024,
        256,
    )
    assert (cfg.norm_num_groups, cfg.act_fn, cfg.sample_size) == (32, "silu", 224)
    enc = model.encoder
    assert enc.conv_in.weight.shape == (128, 3, 3, 3) and enc.conv_out.weight.shape == (256, 512, 3, 3)
    assert sum(len(b.downsamplers or []) for b in enc.down_blocks) == 5
    assert len(enc.down_blocks[5].attentions) == 2 and len(enc.mid_block.attentions) == 1
    assert model.quant_conv.weight.shape == (256, 256, 1, 1)
    assert model.quantize.embedding.weight.shape == (1024, 256)
    assert model.quantize.legacy is False and model.quantize.beta == 0.25  # VQ-VAE paper weighting
    tokenizer = VQTokenizer(model)
    assert tokenizer.grid_size == (7, 7) and tokenizer.codebook_size == 1024
    indices = tokenizer(torch.randn(1, 3, 224, 224))
    assert indices.shape == (1, 49) and indices.dtype == torch.long


def test_architecture_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        build_vqmodel(**{**TINY, "resolution": 60})
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_vqmodel(**{**TINY, "norm_num_groups": 32})


def test_tiny_vqmodel_reconstructs_at_input_size() -> None:
    model = build_vqmodel(**TINY)
    out = model(torch.randn(2, 3, 56, 56))
    assert out.sample.shape == (2, 3, 56, 56) and out.commit_loss.ndim == 0
    assert model.encode(torch.randn(2, 3, 56, 56)).latents.shape == (2, 32, 7, 7)


# --------------------------------------------------------------------------------------------------
# VQTokenizer


def test_tokenizer_gives_grid_indices_in_codebook_range(tokenizer: VQTokenizer) -> None:
    indices = tokenizer(torch.randn(5, 3, 56, 56))
    assert indices.shape == (5, 49) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < tokenizer.codebook_size == 64
    assert tokenizer(torch.empty(0, 3, 56, 56)).shape == (0, 49)


def test_tokenizer_indices_are_the_nearest_codebook_entries_row_major(tokenizer: VQTokenizer) -> None:
    images = torch.randn(3, 3, 56, 56)
    z = tokenizer.quant_conv(tokenizer.encoder(images)).detach()  # [B, D, 7, 7]
    codebook = tokenizer.quantize.embedding.weight
    dist = ((z.permute(0, 2, 3, 1)[..., None, :] - codebook) ** 2).sum(-1)  # [B, 7, 7, K]
    assert torch.equal(tokenizer(images), dist.argmin(-1).flatten(1))


def test_tokenizer_is_frozen_and_stays_in_eval(tokenizer: VQTokenizer) -> None:
    parent = nn.ModuleDict({"tokenizer": tokenizer, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not tokenizer.training and not any(m.training for m in tokenizer.modules())
    assert not any(p.requires_grad for p in tokenizer.parameters())
    images = torch.randn(2, 3, 56, 56, requires_grad=True)
    indices = tokenizer(images)
    assert indices.grad_fn is None and not indices.requires_grad
    assert all(p.grad is None for p in tokenizer.parameters())


def test_tokenizer_chunks_give_the_same_indices(tokenizer: VQTokenizer) -> None:
    images = torch.randn(7, 3, 56, 56)
    calls = []
    hook = tokenizer.encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    tokenizer.chunk_size = 3
    chunked = tokenizer(images)
    tokenizer.chunk_size = None
    whole = tokenizer(images)
    hook.remove()
    assert calls == [3, 3, 1, 7]
    assert torch.equal(chunked, whole)


def test_tokenizer_renormalises_its_input() -> None:
    spec = {"from_mean": list(FASHION_MEAN), "from_std": list(FASHION_STD), "to_mean": 0.5, "to_std": 0.5}
    tokenizer = VQTokenizer(build_vqmodel(**TINY), input_renormalization=spec)
    seen = []
    tokenizer.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    images = torch.randn(2, 3, 56, 56)
    tokenizer(images)
    mean, std = torch.tensor(FASHION_MEAN).view(1, 3, 1, 1), torch.tensor(FASHION_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (images * std + mean - 0.5) / 0.5)
    plain = VQTokenizer(build_vqmodel(**TINY))
    plain.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    plain(images)
    assert torch.equal(seen[1], images)  # None: fed as given
    assert "input_scale" not in tokenizer.state_dict()  # the setting lives in config, not in weights
    with pytest.raises(ValueError, match="to_std"):
        VQTokenizer(build_vqmodel(**TINY), input_renormalization={"from_mean": 0.5, "from_std": 0.5})
    with pytest.raises(ValueError, match="3 channels"):
        VQTokenizer(build_vqmodel(**TINY), input_renormalization={**spec, "to_mean": [0.5, 0.5]})


def test_tokenizer_ignores_autocast_by_default(tokenizer: VQTokenizer) -> None:
    images = torch.randn(2, 3, 56, 56)
    reference = tokenizer(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tokenizer(images), reference)


# --------------------------------------------------------------------------------------------------
# The authors' taming-style file


def test_taming_file_loads_and_gives_the_reference_indices(taming: TamingVQEncoder, tmp_path: Path) -> None:
    state = taming_state(taming)
    tokenizer = VQTokenizer(build_vqmodel(**TINY)).double()
    report = load_taming_state_dict(tokenizer, state)
    assert sorted(report.ignored) == sorted(EMA_KEYS) and not report.unmapped and not report.missing
    assert len(report.loaded) == len(tokenizer.state_dict())

    # every target tensor equals the source tensor it was mapped from
    targets = tokenizer.state_dict()
    sources, unmapped = diffusers_to_taming(targets)
    assert not unmapped and set(sources) == set(state) - set(EMA_KEYS)
    for name, value in sources.items():
        assert torch.equal(value, state[name]), name

    images = torch.randn(4, 3, 56, 56, dtype=torch.double)
    torch.testing.assert_close(tokenizer.quant_conv(tokenizer.encoder(images)), taming.latents(images))
    assert torch.equal(tokenizer(images), taming.indices(images))

    # the same through the file and the config (conf/model/image_tokenizer/vq_authors.yaml)
    path = tmp_path / "vqvae_ema_pp_224_7x7_encoder_fashionall.pth"
    torch.save(state, path)
    cfg = compose_config(
        "train", ["lit=pretrain", f"model.image_tokenizer.path={path}"], tmp_path
    ).model.image_tokenizer
    assert cfg.input_renormalization is None  # the reference's pre-training
    with open_dict(cfg):
        cfg.architecture = dict(TINY)
    from_config = instantiate(cfg, _convert_="all")()  # a factory, called by the network
    assert isinstance(from_config, VQTokenizer) and from_config.chunk_size == 8
    assert torch.equal(from_config.double()(images), taming.indices(images))


def test_taming_mapping_round_trips(taming: TamingVQEncoder) -> None:
    model = build_vqmodel(**TINY)
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(TOKENIZER_PREFIXES)}
    there, unmapped = diffusers_to_taming(ours)
    back, unmapped_back = taming_to_diffusers(there)
    assert not unmapped and not unmapped_back and back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    assert there["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # 1x1 conv in taming
    assert back["encoder.mid_block.attentions.0.to_q.weight"].shape == (64, 64)  # Linear in diffusers

    state = {k: v for k, v in taming_state(taming).items() if k not in EMA_KEYS}
    forth, _ = taming_to_diffusers(state)
    again, _ = diffusers_to_taming(forth)
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)


def test_taming_missing_or_unknown_key_raises_with_its_name(taming: TamingVQEncoder) -> None:
    state = taming_state(taming)
    del state["encoder.down.1.block.0.conv1.weight"]
    name = "encoder.down_blocks.1.resnets.0.conv1.weight (taming: encoder.down.1.block.0.conv1.weight)"
    with pytest.raises(ValueError, match=re.escape(name)):
        load_taming_state_dict(VQTokenizer(build_vqmodel(**TINY)), state)
    state = {**taming_state(taming), "encoder.down.9.block.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=re.escape("encoder.down.9.block.0.conv1.weight")):
        load_taming_state_dict(VQTokenizer(build_vqmodel(**TINY)), state)
    state = {**taming_state(taming), "encoder.something_else.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=re.escape("encoder.something_else.weight")):
        load_taming_state_dict(VQTokenizer(build_vqmodel(**TINY)), state)
    state = {**taming_state(taming), "quant_conv.weight": torch.zeros(3, 3, 1, 1, dtype=torch.double)}
    with pytest.raises(ValueError, match="does not fit"):
        load_taming_state_dict(VQTokenizer(build_vqmodel(**TINY)), state, allow_missing=True)


def test_taming_allow_missing_loads_the_rest(taming: TamingVQEncoder) -> None:
    state = taming_state(taming)
    del state["encoder.conv_in.weight"]
    state["encoder.unknown.weight"] = torch.zeros(1)
    tokenizer = VQTokenizer(build_vqmodel(**TINY)).double()
    before = tokenizer.encoder.conv_in.weight.clone()
    report = load_taming_state_dict(tokenizer, state, allow_missing=True)
    assert report.missing == ["encoder.conv_in.weight"] and report.unmapped == ["encoder.unknown.weight"]
    assert torch.equal(tokenizer.encoder.conv_in.weight, before)
    assert torch.equal(tokenizer.encoder.conv_in.bias, state["encoder.conv_in.bias"])
    assert torch.equal(tokenizer.quantize.embedding.weight, state["quantize.embedding.weight"])
    assert torch.equal(
        tokenizer.encoder.mid_block.attentions[0].to_out[0].weight,
        state["encoder.mid.attn_1.proj_out.weight"][:, :, 0, 0],
    )


def test_default_tokenizer_config_says_where_the_file_should_be(tmp_path: Path) -> None:
    cfg = compose_config("train", ["lit=pretrain"], tmp_path).model.image_tokenizer
    assert cfg.path.endswith("pretrained_models/vqvae_ema_pp_224_7x7_encoder_fashionall.pth")
    build = instantiate(cfg, _convert_="all")
    with pytest.raises(FileNotFoundError, match=re.escape("vqvae_ema_pp_224_7x7_encoder_fashionall.pth")):
        build()


# --------------------------------------------------------------------------------------------------
# Our own checkpoints and training


def test_plain_state_dict_checkpoint_round_trips(tmp_path: Path) -> None:
    model = build_vqmodel(**TINY)
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, tmp_path / "vq.pt")
    loaded = load_vqvae_checkpoint(tmp_path / "vq.pt", architecture=TINY)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    encoder_only = {k: v for k, v in model.state_dict().items() if k.startswith(TOKENIZER_PREFIXES)}
    torch.save(encoder_only, tmp_path / "enc.pt")
    tokenizer = VQTokenizer.from_checkpoint(tmp_path / "enc.pt", architecture=TINY)
    images = torch.randn(2, 3, 56, 56)
    assert torch.equal(tokenizer(images), VQTokenizer(model)(images))
    del encoder_only["quant_conv.bias"]
    torch.save(encoder_only, tmp_path / "broken.pt")
    with pytest.raises(KeyError, match=re.escape("quant_conv.bias")):
        VQTokenizer.from_checkpoint(tmp_path / "broken.pt", architecture=TINY)


def test_codebook_usage() -> None:
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1], [2, 3]]))
    usage.update(torch.tensor([0, 1, 2, 3]))
    values = usage.compute()
    assert values["codebook_perplexity"].item() == pytest.approx(4.0)
    assert values["codebook_usage"].item() == pytest.approx(0.5)
    usage.reset()
    usage.update(torch.zeros(10, dtype=torch.long))
    assert usage.compute()["codebook_perplexity"].item() == pytest.approx(1.0)


def test_validation_skips_batches_without_images() -> None:
    lit = VQVAEModule(build_vqmodel(**TINY), optimizer=torch.optim.AdamW)
    assert lit.validation_step({"image": torch.empty(0)}, 0) is None
    assert not lit.val_usage.update_called
    with pytest.raises(ValueError, match="recon_loss"):
        VQVAEModule(build_vqmodel(**TINY), optimizer=torch.optim.AdamW, recon_loss="l3")


DEMO_VQVAE = [
    "experiment=demo_vqvae",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.checkpoint_last.every_n_train_steps=12",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "logger=csv",
    "print_config=false",
]


def test_demo_vqvae_trains_and_its_checkpoint_is_a_tokenizer(tmp_path: Path, synth_dir: Path) -> None:
    from fashion_vl.cli.train import train

    cfg = compose_config("train", DEMO_VQVAE, tmp_path, synth_dir)
    metrics, objects = train(cfg)
    assert {"train/recon_loss", "train/vq_loss", "train/loss", "val/recon_loss", "val/vq_loss"} <= set(
        metrics
    )
    assert 1.0 <= metrics["val/codebook_perplexity"] <= 64 and 0 < metrics["val/codebook_usage"] <= 1

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    recon = [float(r["train/recon_loss"]) for r in rows if r.get("train/recon_loss")]
    assert len(recon) == 24
    first, last = sum(recon[:4]) / 4, sum(recon[-4:]) / 4
    assert last < 0.8 * first, f"reconstruction loss did not go down: {recon}"

    best = list((tmp_path / "checkpoints").glob("best_*.ckpt"))
    assert len(best) == 1  # monitored on val/recon_loss (min)
    last_ckpt = tmp_path / "checkpoints" / "last.ckpt"
    tok_cfg = compose_config(
        "train",
        [
            "lit=pretrain",
            "model/image_tokenizer=vq_ckpt",
            f"model.image_tokenizer.path={last_ckpt}",
        ],
        tmp_path / "tok",
    )
    tokenizer = instantiate(
        tok_cfg.model.image_tokenizer, _convert_="all"
    )()  # architecture from the checkpoint
    images = torch.randn(3, 3, 56, 56)
    indices = tokenizer(images)
    assert indices.shape == (3, 49) and tokenizer.codebook_size == 64
    trained = objects["lit"].net.eval()
    with torch.no_grad():
        _, _, (_, _, expected) = trained.quantize(trained.encode(images).latents)
    assert torch.equal(indices, expected.view(3, 49))
