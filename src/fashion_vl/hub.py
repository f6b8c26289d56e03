"""Loading pretrained weights and tokenizers by hub name without hanging offline.

Hugging Face loaders retry for about a minute before they give up when the hub is unreachable. A
training run should instead fail at once with a message that says how to point at a local copy, so
every pretrained load goes through :func:`load_pretrained`: local path first, then the local cache,
then, only if the hub answers a quick TCP probe, the network.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")

_PROBE_TIMEOUT_S = 3.0


class PretrainedUnavailableError(RuntimeError):
    """Raised when pretrained weights are neither local nor downloadable."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def hub_reachable(timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds."""
    if hub_offline():
        return False
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable_message(name: str, what: str, config_key: str) -> str:
    return (
        f"Cannot load pretrained {what} '{name}': it is not a local path, not in the Hugging Face cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}), and {hub_endpoint()} is unreachable.\n"
        f"  - point the config at a local copy: {config_key}=/path/to/{Path(name).name}\n"
        f"  - or download it on a connected machine (`hf download {name}`) and copy the cache here\n"
        f"  - or train from random init: set `pretrained: false` for this component"
    )


def looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything absolute, relative-dotted or deeper is a path."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def load_pretrained(loader: Callable[..., T], name: str, *, what: str, config_key: str, **kwargs) -> T:
    """Call a ``from_pretrained``-style ``loader`` so that an offline machine fails fast and clearly.

    Args:
        loader: e.g. ``BertModel.from_pretrained``; must accept ``local_files_only``.
        name: a hub id or a local directory.
        what: human description for the error ("text encoder", "tokenizer").
        config_key: the config key a user should set to point at a local copy.
    """
    path = Path(name).expanduser()
    if path.exists():
        return loader(str(path), **kwargs)
    if looks_like_path(name):
        raise FileNotFoundError(f"{config_key}: {what} folder {path} does not exist")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise PretrainedUnavailableError(unavailable_message(name, what, config_key))
    return loader(name, **kwargs)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer by hub name or local directory (the synthetic data ships one)."""
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer.from_pretrained, name, what="tokenizer", config_key="tokenizer")
