"""Starting a module from (part of) a checkpoint, strictly: a partial load is always an error; and the
key migration that lets checkpoints written before the networks owned every weight load today."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not hold exactly the weights the module needs."""


def _listing(keys: Sequence[str], limit: int = 15) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}"


# Where checkpoints written before issue #24 kept the weights that objectives and LightningModules owned
# then, and where the network holds them now (full-match patterns, first match wins):
# - FashionViL's pre-training heads ``objectives.<task>.head.*`` and MPFC's VQ tokenizer
#   ``objectives.mpfc.tokenizer.*`` (also in ``fvl-convert mmf`` outputs of that time);
# - the classification head of ``ClassificationModule`` (``head.*``);
# - UniFashion's diffusion branch, then inside the diffusion objective (``objectives.diffusion.branch.*``).
LEGACY_KEYS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"objectives\.mpfc\.tokenizer\.(.+)"), r"net.image_tokenizer.\1"),
    (re.compile(r"objectives\.diffusion\.branch\.(.+)"), r"net.diffusion.\1"),
    (re.compile(r"objectives\.(\w+)\.head\.(.+)"), r"net.heads.\1.\2"),
    (re.compile(r"head\.(.+)"), r"net.heads.classification.\1"),
)


def migrate_key(key: str) -> str:
    """Today's name of a LightningModule state-dict key (unchanged when it is not a legacy one)."""
    for pattern, replacement in LEGACY_KEYS:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return key


def migrate_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with legacy keys renamed (:data:`LEGACY_KEYS`); a no-op on today's checkpoints and on
    plain state dicts of a module (the legacy names are those of a LightningModule, next to ``net.*``)."""
    if not any(k.startswith("net.") for k in state):
        return dict(state)
    migrated = {migrate_key(k): v for k, v in state.items()}
    if len(migrated) != len(state):
        raise CheckpointMismatchError("the checkpoint holds a legacy key and its new name both")
    return migrated


def migrate_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A Lightning checkpoint dict migrated in place: its ``state_dict`` and, from the EMA callback, the
    raw weights (``current_model_state``). Optimizer states are by position, and the parameters keep
    their order, so they need nothing."""
    for key in ("state_dict", "current_model_state"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint[key] = migrate_state_dict(checkpoint[key])
    return checkpoint


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (``state_dict``) or of a plain state-dict file, legacy keys
    migrated (:func:`migrate_state_dict`).

    Memory-mapped where the file allows it (torch's zip format, every ``torch.save`` since 1.6): the
    parts of a model built from one run (the UniFashion Q-Former and its frozen ViT) each read their own
    keys from the same multi-GB checkpoint, and only the bytes of those keys are paged in."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (pre-zip) file cannot be mapped
        payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatchError(f"{path}: neither a Lightning checkpoint nor a state dict of tensors")
    return migrate_state_dict(state)


def load_from_checkpoint(
    module: nn.Module,
    path: str | Path,
    prefix: str | Sequence[str] = "",
    exclude: Sequence[str] = (),
    what: str = "model",
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load ``module`` from the keys of ``path`` that start with ``prefix`` (stripped).

    ``state``: the checkpoint's tensors when the caller has read them already (:func:`read_state_dict`);
    ``path`` then only names them in errors.

    ``prefix`` may be a list of candidates: the first one some key starts with is used (e.g.
    ``["net.", ""]`` reads a Lightning checkpoint of a task or a plain state dict of the module).

    Parameters and buffers whose names start with an entry of ``exclude`` are neither required nor
    loaded: they keep their fresh initialisation (what fine-tuning re-initialises). Anything else missing
    from the checkpoint, or left over under ``prefix``, raises :class:`CheckpointMismatchError` naming
    the keys, and nothing is loaded.
    """
    if state is None:
        state = read_state_dict(path)
    if not isinstance(prefix, str):
        prefix = next((p for p in prefix if any(k.startswith(p) for k in state)), prefix[0])
    selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        prefixes = sorted({k.split(".")[0] + "." for k in state})
        raise CheckpointMismatchError(
            f"{path}: no weights under '{prefix}' for the {what} (the checkpoint has: {', '.join(prefixes)})"
        )

    def excluded(key: str) -> bool:
        return any(key == e or key.startswith(e + ".") for e in exclude)

    expected = {k for k in module.state_dict() if not excluded(k)}
    provided = {k for k in selected if not excluded(k)}
    missing, unexpected = sorted(expected - provided), sorted(provided - expected)
    shapes = [
        f"{k}: checkpoint {tuple(selected[k].shape)} vs model {tuple(v.shape)}"
        for k, v in module.state_dict().items()
        if k in provided and selected[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            problems.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
        raise CheckpointMismatchError(
            f"{path} does not fit the {what} (prefix '{prefix}'):\n  "
            + "\n  ".join(problems)
            + "\nIs it a checkpoint of the same model config (model=...)?"
        )
    module.load_state_dict({k: selected[k] for k in provided}, strict=False)
