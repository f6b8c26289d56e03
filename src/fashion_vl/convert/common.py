"""What every checkpoint importer shares: renaming rules, the conversion report, safe reading and
atomic writing of checkpoint files.

An importer is a list of :class:`Rule` (source-name pattern -> our name, with an optional value
conversion), a list of :class:`Drop` (source keys that carry nothing our model needs, each with the
reason) and the *expected* target: the names and shapes of the state dict our module has for that
source, built from our own module classes on the meta device. :func:`rename` applies the rules and
:func:`check_against` compares the result with the expected target; together they fill a
:class:`ConversionReport` that says, key by key, what happened. A conversion is *lossless* when no
source key is left unmapped, no target key is left missing, no tied tensors disagree and no shape
differs; the CLI writes nothing otherwise unless told ``--allow-missing``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Tensor = torch.Tensor

# Top-level keys under which training frameworks keep the weights: Lightning ("state_dict"),
# MMF and LAVIS ("model"), some hand-made files ("module").
_WRAPPER_KEYS = ("state_dict", "model", "module")


class CheckpointLoadError(RuntimeError):
    """A source file that cannot be read as a state dict (or only unsafely)."""


@dataclass(frozen=True)
class Rule:
    """Source keys matching ``pattern`` (a full-match regex) become ``target`` (``str.format`` with the
    pattern's named groups). ``convert`` changes the value (a reshape, a row slice); ``note`` says how,
    for the report."""

    pattern: str
    target: str
    convert: Callable[[Tensor], Tensor] | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, key: str) -> str | None:
        m = self._regex.fullmatch(key)  # type: ignore[attr-defined]
        return self.target.format(**m.groupdict()) if m else None


@dataclass(frozen=True)
class Drop:
    """Source keys matching ``pattern`` that are known and carry nothing the target needs."""

    pattern: str
    reason: str

    def matches(self, key: str) -> bool:
        return re.fullmatch(self.pattern, key) is not None


@dataclass
class ConversionReport:
    """Key-by-key account of a conversion.

    Attributes:
        mapped: target key -> the source key it came from.
        converted: target key -> how its value was changed (reshape, rows kept).
        dropped: source key -> why it is not needed (buffers rebuilt at init, EMA statistics...).
        defaulted: target key -> why it was filled with our initial value (not in this kind of source).
        unmapped: source keys with no place in the target (their weights would be lost), with a hint.
        missing: target keys no source key fills.
        mismatched: target keys whose converted tensor has another shape than ours.
        conflicts: tied tensors (one parameter in our model) whose source copies differ.
    """

    kind: str
    mapped: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    defaulted: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        """Every source tensor is used or known redundant, and every target tensor is filled."""
        return not (self.unmapped or self.missing or self.mismatched or self.conflicts)

    @property
    def loadable(self) -> bool:
        """The output fits the target's shapes (what ``--allow-missing`` cannot waive)."""
        return not self.mismatched

    def counts(self) -> list[tuple[str, int]]:
        return [
            ("mapped (target keys filled)", len(self.mapped)),
            ("  of which value-converted", len(self.converted)),
            ("dropped (known, not needed)", len(self.dropped)),
            ("defaulted (our initial value)", len(self.defaulted)),
            ("unmapped source keys", len(self.unmapped)),
            ("missing target keys", len(self.missing)),
            ("tied-tensor conflicts", len(self.conflicts)),
            ("shape mismatches", len(self.mismatched)),
        ]

    def problems(self) -> list[str]:
        """One line per unmapped / missing / conflicting / mismatched key."""
        lines = [f"unmapped: {k}" + (f"  ({hint})" if hint else "") for k, hint in self.unmapped.items()]
        lines += [f"missing:  {k}" for k in self.missing]
        lines += [f"conflict: {c}" for c in self.conflicts]
        lines += [f"shape:    {m}" for m in self.mismatched]
        return lines

    def summary(self) -> str:
        return ", ".join(f"{n} {label.strip()}" for label, n in self.counts() if n)

    def as_dict(self) -> dict[str, Any]:
        """A plain record (strings, lists, dicts) to store next to the converted weights."""
        return {
            "kind": self.kind,
            "mapped": len(self.mapped),
            "converted": dict(self.converted),
            "dropped": dict(self.dropped),
            "defaulted": dict(self.defaulted),
            "unmapped": dict(self.unmapped),
            "missing": list(self.missing),
            "conflicts": list(self.conflicts),
        }


def rename(
    state: Mapping[str, Tensor],
    rules: Sequence[Rule],
    drops: Sequence[Drop] = (),
    hints: Sequence[Drop] = (),
    report: ConversionReport | None = None,
    kind: str = "",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Apply ``rules`` to every key of ``state`` (the first rule that matches wins).

    Keys matching a ``drops`` entry are recorded as dropped; keys no rule matches are unmapped, with
    the reason of the first matching ``hints`` entry (known weights our target has no place for).
    Two source keys landing on one target key must hold equal tensors (a tied weight saved twice);
    otherwise that is a conflict.
    """
    report = report or ConversionReport(kind)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        drop = next((d for d in drops if d.matches(key)), None)
        if drop is not None:
            report.dropped[key] = drop.reason
            continue
        for rule in rules:
            target = rule.match(key)
            if target is None:
                continue
            if rule.convert is not None:
                value = rule.convert(value)
                report.converted[target] = rule.note or "value converted"
            if target in out:
                if out[target].shape != value.shape or not torch.equal(out[target], value):
                    report.conflicts.append(
                        f"{report.mapped[target]} and {key} both give {target} but differ "
                        "(tied in our model: one of them would be lost)"
                    )
                else:
                    report.dropped[key] = f"the same tensor as {report.mapped[target]} (tied)"
                break
            out[target] = value
            report.mapped[target] = key
            break
        else:
            hint = next((h.reason for h in hints if h.matches(key)), "no rule for this key")
            report.unmapped[key] = hint
    return out, report


def check_against(
    out: dict[str, Tensor],
    expected: Mapping[str, torch.Size | Sequence[int]],
    report: ConversionReport,
    defaults: Mapping[str, tuple[Tensor, str]] | None = None,
) -> dict[str, Tensor]:
    """Compare the renamed tensors with the target's names and shapes.

    Renamed keys the target does not have become unmapped (under their source name); target keys not
    filled are taken from ``defaults`` (``key -> (value, reason)``) when there, missing otherwise.
    Returns the tensors that fit, in the target's key order.
    """
    defaults = defaults or {}
    fitted: dict[str, Tensor] = {}
    for key, value in out.items():
        if key not in expected:
            source = report.mapped.pop(key)
            report.converted.pop(key, None)
            report.unmapped[source] = f"would be {key}, which our model does not have"
        elif tuple(value.shape) != tuple(expected[key]):
            report.mismatched.append(
                f"{report.mapped[key]} {tuple(value.shape)} -> {key}: ours is {tuple(expected[key])}"
            )
    for key, shape in expected.items():
        if key in out and tuple(out[key].shape) == tuple(shape):
            fitted[key] = out[key]
        elif key in out:
            continue  # a shape mismatch, reported above
        elif key in defaults:
            value, reason = defaults[key]
            fitted[key] = value.reshape(tuple(shape)).clone()
            report.defaulted[key] = reason
        else:
            report.missing.append(key)
    return fitted


def shapes_of(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Size]:
    """``{prefix + name: shape}`` of a module's state dict (works on the meta device)."""
    return {prefix + k: v.shape for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# Files


def load_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` a checkpoint on the CPU, with ``weights_only=True`` unless ``trust_pickle``.

    ``weights_only`` refuses files that pickle arbitrary Python objects (a training config object, an
    optimizer scheduler's closures): loading those runs code from the file. The error says so and how
    to go on if the file's origin is trusted.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise CheckpointLoadError(
                f"{path} holds Python objects besides tensors, which torch.load(weights_only=True) "
                f"refuses because unpickling them can run code from the file ({_first_line(err)}). "
                "If you trust where the file comes from (e.g. the authors' release), rerun with "
                "--trust-pickle; the converted output is tensors only and loads safely."
            ) from err
    return torch.load(path, map_location="cpu", weights_only=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def extract_state_dict(payload: Any, what: str = "checkpoint") -> dict[str, Tensor]:
    """The flat ``name -> tensor`` dict of a loaded file: the file itself, what it keeps under
    ``state_dict`` / ``model`` / ``module`` (Lightning, MMF and LAVIS checkpoints), or its only entry
    that is a state dict (UniFashion saves ``{"epoch": n, "<model class name>": state_dict}``)."""
    if _is_state_dict(payload):
        return dict(payload)
    if isinstance(payload, Mapping):
        for key in _WRAPPER_KEYS:
            inner = payload.get(key)
            if _is_state_dict(inner):
                return dict(inner)
        inner = [v for v in payload.values() if _is_state_dict(v)]
        if len(inner) == 1:
            return dict(inner[0])
        tensors = sorted(k for k, v in payload.items() if torch.is_tensor(v))
        others = sorted(str(k) for k, v in payload.items() if not torch.is_tensor(v))
        raise CheckpointLoadError(
            f"{what}: found no single state dict (a mapping of names to tensors), neither at the top level "
            f"nor under {'/'.join(_WRAPPER_KEYS)} nor as the only one among the top-level values; "
            f"top-level keys: {others[:10]} (+{len(tensors)} tensors)"
        )
    raise CheckpointLoadError(f"{what}: expected a dict of tensors, got {type(payload).__name__}")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from every key when *all* keys have it (DDP's ``module.``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def lightning_checkpoint(
    state_dict: Mapping[str, Tensor], source: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """A checkpoint dict Lightning can restore weights from (``trainer.test(ckpt_path=...)``) and that
    ``init_from`` reads: ``state_dict`` plus the Lightning version, and ``fvl_source`` saying where the
    weights came from. Tensors, strings and numbers only: it loads with ``weights_only=True``."""
    try:
        from lightning import __version__ as lightning_version
    except ImportError:  # pragma: no cover - lightning is a dependency
        lightning_version = "2.0.0"
    payload: dict[str, Any] = {
        "state_dict": {k: v.detach().contiguous() for k, v in state_dict.items()},
        "pytorch-lightning_version": lightning_version,
        "epoch": 0,
        "global_step": 0,
        "fvl_source": dict(source),
    }
    payload.update(extra)
    return payload


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern``'s first group over ``keys``."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.fullmatch(k))})
