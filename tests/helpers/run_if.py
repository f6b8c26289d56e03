"""Skip markers for tests that need hardware or optional packages (as lightning-hydra-template's RunIf)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def run_if(*, gpu: bool = False, packages: tuple[str, ...] = ()) -> pytest.MarkDecorator:
    reasons = []
    if gpu and not torch.cuda.is_available():
        reasons.append("needs a CUDA device")
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        reasons.append(f"needs {', '.join(missing)}")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))
