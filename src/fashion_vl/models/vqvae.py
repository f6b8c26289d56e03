"""The MPFC image tokenizer: a VQ-VAE that maps a 224 px image to a 7x7 grid of codebook indices.

FashionViL's masked patch feature classification predicts, for masked cells of the 7x7 ResNet grid,
the index a frozen VQ encoder gives that cell of the same augmented image (reference §2, MPFC). The
authors' encoder is a taming-transformers (VQGAN) ``Encoder`` + ``quant_conv`` + EMA codebook.

We build it with diffusers' :class:`~diffusers.VQModel` rather than writing a VQ-VAE: its ``Encoder``
is the taming encoder block for block (ResNet blocks with GroupNorm + swish, stride-2 convs with the
same asymmetric ``(0, 1, 0, 1)`` padding, single-head self-attention, a res-attn-res mid block),
its ``VectorQuantizer`` is the nearest-L2 lookup, it is tested and maintained upstream, it already is a
project dependency, and its decoder gives us the reconstruction path to train our own tokenizer. The
only differences with taming are names and attention projections (``nn.Linear`` in diffusers, 1x1
convs in taming); :func:`taming_to_diffusers` maps the authors' file onto it.

- :func:`build_vqmodel`: the authors' architecture (or a tiny one) as a ``VQModel``.
- :class:`VQTokenizer`: the frozen encoder + quant_conv + codebook; images -> ``[B, H*W]`` indices.
- :func:`load_vqvae_checkpoint`: a ``VQModel`` from our own training checkpoint (``fvl-train
  experiment=vqvae_fashionall``) or a plain state-dict file.
- :func:`load_taming_state_dict` / :meth:`VQTokenizer.from_taming`: the authors'
  ``vqvae_ema_pp_224_7x7_encoder_fashionall.pth``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import VQModel
from torch import nn

from fashion_vl.models.encoders.pixels import FASHION_MEAN, FASHION_STD, ImageNormalize

log = logging.getLogger(__name__)

# Parts of a VQModel the tokenizer keeps (their state-dict prefixes are the same in both).
TOKENIZER_PREFIXES = ("encoder.", "quant_conv.", "quantize.")


def vqmodel_config(
    resolution: int = 224,
    hidden_dim: int = 128,
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
    num_res_blocks: int = 2,
    attn_resolutions: Sequence[int] = (7,),
    z_channels: int = 256,
    num_tokens: int = 1024,
    codebook_dim: int = 256,
    in_channels: int = 3,
    norm_num_groups: int = 32,
) -> dict[str, Any]:
    """``VQModel`` keyword arguments for a taming-style VQ-VAE described by its taming parameters.

    Level ``i`` works at ``resolution / 2**i`` with ``hidden_dim * ch_mult[i]`` channels and is followed
    by a stride-2 downsample except the last, so the grid is ``resolution / 2**(len(ch_mult) - 1)``.
    A level gets self-attention after each ResNet block where its resolution is in ``attn_resolutions``
    (diffusers: ``AttnDownEncoderBlock2D``); the decoder mirrors it from the lowest resolution up.
    """
    levels = len(ch_mult)
    factor = 2 ** (levels - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not divisible by 2**(len(ch_mult) - 1) = {factor}")
    channels = tuple(hidden_dim * m for m in ch_mult)
    if any(c % norm_num_groups for c in channels):
        raise ValueError(
            f"every level's channels {channels} must be divisible by norm_num_groups={norm_num_groups}"
        )
    down_res = [resolution // 2**i for i in range(levels)]
    attn = set(attn_resolutions)
    return dict(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if r in attn else "DownEncoderBlock2D" for r in down_res
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if r in attn else "UpDecoderBlock2D" for r in down_res[::-1]
        ),
        block_out_channels=channels,
        layers_per_block=num_res_blocks,
        act_fn="silu",  # taming's swish
        latent_channels=z_channels,
        sample_size=resolution,
        num_vq_embeddings=num_tokens,
        norm_num_groups=norm_num_groups,
        vq_embed_dim=codebook_dim,
        mid_block_add_attention=True,
    )


def build_vqmodel(
    resolution: int = 224,
    hidden_dim: int = 128,
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
    num_res_blocks: int = 2,
    attn_resolutions: Sequence[int] = (7,),
    z_channels: int = 256,
    num_tokens: int = 1024,
    codebook_dim: int = 256,
    in_channels: int = 3,
    norm_num_groups: int = 32,
    commitment_cost: float = 0.25,
) -> VQModel:
    """A diffusers ``VQModel`` with the authors' architecture by default (reference §2, MPFC).

    conv_in 3->128; 6 levels with channel multipliers [1,1,2,2,4,4] and 2 ResNet blocks each
    (GroupNorm(32) + swish); a stride-2 downsample after the first 5 levels (224 -> 7); self-attention
    at resolution 7; mid block res-attn-res; GroupNorm + swish + conv_out to 256 channels; 1x1
    quant_conv 256->256; nearest L2 entry of a 1024x256 codebook.

    Args:
        resolution: training input size (also ``VQModel.config.sample_size``).
        hidden_dim, ch_mult, num_res_blocks, attn_resolutions, z_channels: taming's ``ch``,
            ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``z_channels``.
        num_tokens, codebook_dim: codebook size and entry dimension (taming's ``n_embed``, ``embed_dim``).
        norm_num_groups: GroupNorm groups (32 in taming; lower for tiny test models).
        commitment_cost: beta of the VQ-VAE loss ``||sg[z] - e||^2 + beta ||z - sg[e]||^2``. diffusers'
            quantizer defaults to ``legacy=True`` (inherited from taming), which puts beta on the
            codebook term instead; we switch to the VQ-VAE paper's weighting. Only training is affected.
    """
    model = VQModel(
        **vqmodel_config(
            resolution, hidden_dim, ch_mult, num_res_blocks, attn_resolutions,
            z_channels, num_tokens, codebook_dim, in_channels, norm_num_groups,
        )
    )  # fmt: skip
    model.quantize.legacy = False
    model.quantize.beta = float(commitment_cost)
    return model


def grid_size_of(model: VQModel) -> tuple[int, int]:
    """Index grid of a ``VQModel`` at its training resolution (7x7 for the authors' model)."""
    side = model.config.sample_size // 2 ** (len(model.config.block_out_channels) - 1)
    return side, side


class VQTokenizer(nn.Module):
    """A frozen VQ encoder: images ``[B, 3, H, W]`` -> codebook indices ``[B, h*w]`` (row-major grid).

    Holds a ``VQModel``'s ``encoder``, ``quant_conv`` and ``quantize`` (same state-dict names as in the
    ``VQModel``), never its decoder. It has no trainable parameters and stays in eval mode whatever its
    parent does (``train()`` is overridden); ``forward`` runs under ``torch.no_grad`` in chunks of
    ``chunk_size`` images (8, like the reference) to bound activation memory at 224 px.

    Input normalisation. ``input_renormalization`` converts the tensor it is given before encoding:
    ``x_vq = ((x * from_std + from_mean) - to_mean) / to_std`` per channel, or nothing when ``None``.
    The authors' code is inconsistent here (reference §2 MPFC, "Quirk"): their index-extraction script
    normalised VQ inputs with mean = std = 0.5 (so that is presumably what their VQ-VAE was trained
    on), but pre-training fed the VQ encoder the dataset-normalised tensor (FashionViL mean/std) that
    the ResNet gets. Hence, with the authors' file:

    - ``None`` reproduces their pre-training exactly: the MPFC targets FashionViL was trained with
      (the VQ encoder then sees inputs ~4x wider than it was presumably trained on, but it is a fixed,
      deterministic function of the image, which is all MPFC needs). This is our default in
      ``conf/model/image_tokenizer/vq_authors.yaml``.
    - ``{from_mean: FASHION_MEAN, from_std: FASHION_STD, to_mean: 0.5, to_std: 0.5}`` reproduces their
      extraction script, i.e. feeds the VQ-VAE the inputs it was (presumably) trained on.

    A tokenizer we trained ourselves (``lit.vqvae.VQVAEModule``) learnt on the dataset-normalised
    batches, so ``None`` is right for it.

    Args:
        vqmodel: the ``VQModel`` whose encoder, quant_conv and codebook are used.
        chunk_size: images per encoder call; ``None`` or ``0``: the whole batch at once.
        input_renormalization: ``None`` or a mapping with ``from_mean``, ``from_std``, ``to_mean``,
            ``to_std`` (each a float or one value per channel).
        autocast: ``False``: encode at the weights' dtype (float32) with autocast disabled, so the
            targets do not depend on the trainer's precision (the reference ran fp32); ``True``:
            follow the ambient autocast (faster under bf16, indices may flip near ties).
        mean, std: the dataset normalisation ``uint8`` input gets first (FashionViL's, as the image
            encoder's), so that ``uint8`` pixels and the normalised float tensor give the same indices;
            ``input_renormalization`` then applies to the normalised tensor as above.

    Attributes:
        codebook_size: number of codebook entries (the MPFC head's classes).
        grid_size: ``(h, w)`` index grid at the training resolution (``input_size``).
    """

    def __init__(
        self,
        vqmodel: VQModel,
        chunk_size: int | None = 8,
        input_renormalization: Mapping[str, float | Sequence[float]] | None = None,
        autocast: bool = False,
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
    ) -> None:
        super().__init__()
        self.input_norm = ImageNormalize(mean, std)
        self.encoder = vqmodel.encoder
        self.quant_conv = vqmodel.quant_conv
        self.quantize = vqmodel.quantize
        self.codebook_size: int = int(vqmodel.config.num_vq_embeddings)
        self.grid_size: tuple[int, int] = grid_size_of(vqmodel)
        self.input_size: int = int(vqmodel.config.sample_size)
        self.in_channels: int = int(vqmodel.config.in_channels)
        self.chunk_size = chunk_size
        self.autocast = autocast
        self.renormalizes = input_renormalization is not None
        scale, shift = _affine(input_renormalization, self.in_channels)
        # not persistent: the state dict stays the VQModel's, the setting lives in config
        self.register_buffer("input_scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, -1, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> VQTokenizer:
        """Always eval: the tokenizer is frozen, including when a parent module calls ``.train()``."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Codebook indices ``[B, h*w]`` (long) of ``images`` ``[B, 3, H, W]`` (``uint8`` or normalised)."""
        images = self.input_norm(images)
        if images.shape[0] == 0:
            return torch.zeros(
                (0, self.grid_size[0] * self.grid_size[1]), dtype=torch.long, device=images.device
            )
        step = self.chunk_size if self.chunk_size and self.chunk_size > 0 else images.shape[0]
        return torch.cat([self._encode(chunk) for chunk in images.split(step)])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.autocast:
            return self._indices(images)
        with torch.autocast(images.device.type, enabled=False):
            return self._indices(images.to(self.quant_conv.weight.dtype))

    def _indices(self, images: torch.Tensor) -> torch.Tensor:
        if self.renormalizes:
            images = images * self.input_scale + self.input_shift
        latents = self.quant_conv(self.encoder(images))  # [b, D, h, w]
        _, _, (_, _, indices) = self.quantize(latents)  # nearest L2 entry, [b*h*w] row-major
        return indices.view(latents.shape[0], -1).long()

    @classmethod
    def from_architecture(
        cls,
        architecture: Mapping[str, Any] | None = None,
        chunk_size: int | None = 8,
        input_renormalization: Mapping[str, float | Sequence[float]] | None = None,
        autocast: bool = False,
    ) -> VQTokenizer:
        """Randomly initialised, from :func:`build_vqmodel` arguments (``None``: the authors'
        architecture): a fixed function of each grid cell for the CPU demos and tests, where no trained
        VQ-VAE exists."""
        return cls(build_vqmodel(**dict(architecture or {})), chunk_size, input_renormalization, autocast)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        architecture: Mapping[str, Any] | None = None,
        chunk_size: int | None = 8,
        input_renormalization: Mapping[str, float | Sequence[float]] | None = None,
        autocast: bool = False,
    ) -> VQTokenizer:
        """From our own VQ-VAE: a ``fvl-train`` checkpoint or a plain state-dict file.

        See :func:`load_vqvae_checkpoint` for ``architecture``. Only the encoder, quant_conv and
        codebook must be in the file.
        """
        vqmodel = load_vqvae_checkpoint(path, architecture, parts=TOKENIZER_PREFIXES)
        return cls(vqmodel, chunk_size, input_renormalization, autocast)

    @classmethod
    def from_taming(
        cls,
        path: str | Path,
        architecture: Mapping[str, Any] | None = None,
        allow_missing: bool = False,
        chunk_size: int | None = 8,
        input_renormalization: Mapping[str, float | Sequence[float]] | None = None,
        autocast: bool = False,
    ) -> VQTokenizer:
        """From the authors' taming-style file (``vqvae_ema_pp_224_7x7_encoder_fashionall.pth``).

        Args:
            path: the state-dict file (``encoder.*``, ``quant_conv.*``, ``quantize.embedding.*``).
            architecture: :func:`build_vqmodel` arguments; ``None``: the authors' architecture.
            allow_missing: load what maps even if some keys do not (see :func:`load_taming_state_dict`).
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"no VQ-VAE encoder file at {path}: download the authors' "
                "vqvae_ema_pp_224_7x7_encoder_fashionall.pth (FashionViL's Drive) or train one with "
                "`fvl-train experiment=vqvae_fashionall` and use model/image_tokenizer/vq_ckpt"
            )
        tokenizer = cls(
            build_vqmodel(**dict(architecture or {})), chunk_size, input_renormalization, autocast
        )
        report = load_taming_state_dict(tokenizer, _read_state_dict(path), allow_missing=allow_missing)
        log.info("VQ tokenizer from %s: %s", path, report.summary())
        return tokenizer


def _affine(
    spec: Mapping[str, float | Sequence[float]] | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale, shift`` with ``x_vq = x * scale + shift`` for a renormalisation spec."""
    if spec is None:
        return torch.ones(channels), torch.zeros(channels)
    keys = {"from_mean", "from_std", "to_mean", "to_std"}
    if set(spec) != keys:
        raise ValueError(f"input_renormalization needs exactly the keys {sorted(keys)}, got {sorted(spec)}")

    def per_channel(name: str) -> torch.Tensor:
        value = spec[name]
        values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != channels:
            raise ValueError(f"input_renormalization.{name} has {len(values)} values for {channels} channels")
        return torch.tensor(values)

    from_mean, from_std, to_mean, to_std = (
        per_channel(k) for k in ("from_mean", "from_std", "to_mean", "to_std")
    )
    return from_std / to_std, (from_mean - to_mean) / to_std


# ---------------------------------------------------------------------------------------------------
# Our own checkpoints


def _read_state_dict(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)


def load_vqvae_checkpoint(
    path: str | Path,
    architecture: Mapping[str, Any] | None = None,
    parts: Sequence[str] | None = None,
) -> VQModel:
    """A ``VQModel`` from our own training checkpoint or a plain state-dict file.

    Args:
        path: a Lightning checkpoint written by ``fvl-train`` with ``lit=vqvae`` (weights under
            ``state_dict`` with the ``net.`` prefix, the run's config under ``fvl_config``), or a
            plain ``VQModel`` state dict (keys with or without ``net.``).
        architecture: :func:`build_vqmodel` arguments. ``None``: the checkpoint's own ``model``
            config for a Lightning checkpoint, the authors' architecture for a plain state dict.
        parts: load only keys under these prefixes (e.g. :data:`TOKENIZER_PREFIXES`: the file may
            then lack the decoder); ``None``: the whole model, strictly.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no VQ-VAE checkpoint at {path}")
    payload = _read_state_dict(path)
    state = payload.get("state_dict", payload)
    if architecture is None and "state_dict" in payload:
        architecture = _architecture_from_config(payload.get("fvl_config"), path)
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net.") :]: v for k, v in state.items()}
    elif "state_dict" in payload:  # a Lightning checkpoint: the model is under net.
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    model = build_vqmodel(**dict(architecture or {}))
    if parts is None:
        model.load_state_dict(state, strict=True)
        return model
    prefixes = tuple(parts)
    wanted = {k for k in model.state_dict() if k.startswith(prefixes)}
    missing = sorted(wanted - set(state))
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} VQ-VAE tensors: {missing}")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return model


def _architecture_from_config(config: Mapping[str, Any] | None, path: Path) -> dict[str, Any]:
    model_cfg = (config or {}).get("model")
    if not model_cfg:
        raise ValueError(f"{path} stores no model config (fvl_config.model): pass architecture=")
    target = str(model_cfg.get("_target_", ""))
    if not target.endswith("build_vqmodel"):
        raise ValueError(f"{path} was not trained with model=vqvae*: its model is {target or 'unknown'}")
    return {k: v for k, v in model_cfg.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------
# The authors' taming-style file

# taming name <-> diffusers name; {i},{j}: indices, {p}: weight|bias, {r}: a ResNet layer, {a}: q|k|v.
# The last field marks attention projections: 1x1 convs in taming, nn.Linear in diffusers.
_PAIRS: tuple[tuple[str, str, bool], ...] = (
    ("encoder.conv_in.{p}", "encoder.conv_in.{p}", False),
    ("encoder.down.{i}.block.{j}.{r}.{p}", "encoder.down_blocks.{i}.resnets.{j}.{r}.{p}", False),
    (
        "encoder.down.{i}.block.{j}.nin_shortcut.{p}",
        "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}",
        False,
    ),
    ("encoder.down.{i}.attn.{j}.norm.{p}", "encoder.down_blocks.{i}.attentions.{j}.group_norm.{p}", False),
    ("encoder.down.{i}.attn.{j}.{a}.{p}", "encoder.down_blocks.{i}.attentions.{j}.to_{a}.{p}", True),
    ("encoder.down.{i}.attn.{j}.proj_out.{p}", "encoder.down_blocks.{i}.attentions.{j}.to_out.0.{p}", True),
    ("encoder.down.{i}.downsample.conv.{p}", "encoder.down_blocks.{i}.downsamplers.0.conv.{p}", False),
    ("encoder.mid.block_1.{r}.{p}", "encoder.mid_block.resnets.0.{r}.{p}", False),
    ("encoder.mid.block_1.nin_shortcut.{p}", "encoder.mid_block.resnets.0.conv_shortcut.{p}", False),
    ("encoder.mid.attn_1.norm.{p}", "encoder.mid_block.attentions.0.group_norm.{p}", False),
    ("encoder.mid.attn_1.{a}.{p}", "encoder.mid_block.attentions.0.to_{a}.{p}", True),
    ("encoder.mid.attn_1.proj_out.{p}", "encoder.mid_block.attentions.0.to_out.0.{p}", True),
    ("encoder.mid.block_2.{r}.{p}", "encoder.mid_block.resnets.1.{r}.{p}", False),
    ("encoder.mid.block_2.nin_shortcut.{p}", "encoder.mid_block.resnets.1.conv_shortcut.{p}", False),
    ("encoder.norm_out.{p}", "encoder.conv_norm_out.{p}", False),
    ("encoder.conv_out.{p}", "encoder.conv_out.{p}", False),
    ("quant_conv.{p}", "quant_conv.{p}", False),
    ("quantize.embedding.weight", "quantize.embedding.weight", False),
)
_FIELDS = {"i": r"\d+", "j": r"\d+", "p": "weight|bias", "r": "norm1|conv1|norm2|conv2", "a": "q|k|v"}

# In the authors' file but not needed to compute indices: the EMA codebook statistics, and (in a
# full taming checkpoint) the decoder side and the GAN loss.
TAMING_IGNORED = re.compile(
    r"quantize\.embedding\.(cluster_size|embed_avg|initted)|quantize\.(cluster_size|embed_avg|initted)"
    r"|(decoder|post_quant_conv|loss)\..*"
)


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template)
    for name, regex in _FIELDS.items():
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(out)


_TAMING_TO_DIFFUSERS = [(_pattern(t), d, attn) for t, d, attn in _PAIRS]
_DIFFUSERS_TO_TAMING = [(_pattern(d), t, attn) for t, d, attn in _PAIRS]


def _rename(
    state: Mapping[str, torch.Tensor | None], rules: list[tuple[re.Pattern, str, bool]], to_linear: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Renamed tensors, new name -> old name, and the old names no rule matched (``None`` values:
    rename only)."""
    renamed: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        for pattern, template, attn in rules:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            if attn and match.group("p") == "weight" and value is not None:
                value = (
                    value.reshape(value.shape[0], value.shape[1]) if to_linear else value[:, :, None, None]
                )
            new_key = template.format(**match.groupdict())
            renamed[new_key], sources[new_key] = value, key
            break
        else:
            unmapped.append(key)
    return renamed, sources, unmapped


def taming_to_diffusers(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a taming VQGAN state dict (encoder side) to diffusers ``VQModel`` names.

    Returns the renamed tensors (attention q/k/v/proj_out weights reshaped from ``[C, C, 1, 1]`` to
    ``[C, C]``) and the keys no rule matched.
    """
    renamed, _, unmapped = _rename(state, _TAMING_TO_DIFFUSERS, to_linear=True)
    return renamed, unmapped


def diffusers_to_taming(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The inverse of :func:`taming_to_diffusers` (e.g. to export our encoder in the authors' format)."""
    renamed, _, unmapped = _rename(state, _DIFFUSERS_TO_TAMING, to_linear=False)
    return renamed, unmapped


@dataclass
class TamingLoadReport:
    """What :func:`load_taming_state_dict` did. Keys are the source file's (taming) names, except
    ``missing``, which are the target's (diffusers) names."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known and not needed (EMA statistics, decoder)
    unmapped: list[str] = field(default_factory=list)  # no rule, or no such tensor in this architecture
    missing: list[str] = field(default_factory=list)  # target tensors the file did not fill

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.ignored)} ignored, "
            f"{len(self.unmapped)} unmapped {self.unmapped}, {len(self.missing)} missing {self.missing}"
        )


def load_taming_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], allow_missing: bool = False
) -> TamingLoadReport:
    """Load a taming-style VQ encoder state dict into ``module`` (a ``VQModel`` or :class:`VQTokenizer`).

    The targets are ``module``'s tensors under ``encoder.``, ``quant_conv.`` and ``quantize.``. EMA
    codebook statistics (``quantize.embedding.cluster_size``, ``embed_avg``) and decoder-side keys are
    ignored. A source key that maps to nothing, or a target left unfilled, raises ``ValueError`` naming
    them, unless ``allow_missing`` (then the rest is loaded and the report lists them). A shape
    mismatch always raises (the architecture is wrong).
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    report = TamingLoadReport()
    mappable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if TAMING_IGNORED.fullmatch(key):
            report.ignored.append(key)
        else:
            mappable[key] = value
    renamed, source_of, report.unmapped = _rename(mappable, _TAMING_TO_DIFFUSERS, to_linear=True)
    targets = {k: v for k, v in module.state_dict().items() if k.startswith(TOKENIZER_PREFIXES)}
    to_load: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in renamed.items():
        if key not in targets:
            report.unmapped.append(source_of[key])
        elif tuple(value.shape) != tuple(targets[key].shape):
            mismatched.append(f"{source_of[key]} {tuple(value.shape)} -> {key} {tuple(targets[key].shape)}")
        else:
            to_load[key] = value
    if mismatched:
        raise ValueError(f"taming VQ state dict does not fit this architecture: {mismatched}")
    report.missing = sorted(set(targets) - set(to_load))
    report.loaded = sorted(source_of[k] for k in to_load)
    if (report.unmapped or report.missing) and not allow_missing:
        _, diffusers_of, _ = _rename(dict.fromkeys(report.missing), _DIFFUSERS_TO_TAMING, to_linear=False)
        taming_of = {d: t for t, d in diffusers_of.items()}
        missing = [f"{k} (taming: {taming_of.get(k, '?')})" for k in report.missing]
        raise ValueError(
            f"taming VQ state dict: {len(report.unmapped)} source keys not mapped {sorted(report.unmapped)}; "
            f"{len(report.missing)} target keys not filled {missing}. "
            "Check the architecture, or pass allow_missing=True to load the rest."
        )
    for key in report.unmapped + report.missing:
        log.warning("taming VQ state dict: %s not loaded", key)
    module.load_state_dict(to_load, strict=False)
    return report
