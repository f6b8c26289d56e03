"""Switches of the fast training path that are plain torch: compiling a model's units in place,
the optimizer's multi-tensor implementation, and the float32 matmul precision.

Lightning's callbacks and LightningModules call these; so does the benchmark (``fashion_vl.bench``),
so the path it times is the one training takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def compile_units(
    net: nn.Module,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    backend: str = "inductor",
) -> list[str]:
    """``torch.compile`` in place every module of ``net.compile_units()`` (name -> module).

    ``nn.Module.compile`` keeps the module object and its state-dict keys (no ``_orig_mod.`` prefix),
    so checkpoints stay interchangeable between compiled and eager runs. Returns the names compiled;
    a network without ``compile_units`` compiles nothing.
    """
    units = getattr(net, "compile_units", None)
    if units is None:
        return []
    names = []
    for name, module in units().items():
        if getattr(module, "_compiled_call_impl", None) is not None:
            continue
        module.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
        names.append(name)
    return names


def multi_tensor_kwargs(
    factory: Callable[..., torch.optim.Optimizer], device: torch.device
) -> dict[str, Any]:
    """``fused=True`` on CUDA, else ``foreach=True``, for an optimizer partial that sets neither.

    PyTorch picks the multi-tensor (``foreach``) update by default only on CUDA and never the fused
    kernel, which updates every parameter in a handful of launches; a config that names either keeps
    its choice.
    """
    keywords = getattr(factory, "keywords", {}) or {}
    if "fused" in keywords or "foreach" in keywords:
        return {}
    func = getattr(factory, "func", factory)
    try:
        accepted = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    if device.type == "cuda" and "fused" in accepted:
        return {"fused": True}
    if "foreach" in accepted:
        return {"foreach": True}
    return {}
