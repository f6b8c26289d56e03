"""Benchmark of the data path in one process (``num_workers=0``): samples/s per DataLoader worker.

- ``mix_loader``: the pre-training mix's training DataLoader as ``fvl-train`` builds it (decoding,
  two augmented views, tokenisation, masking, collation into uint8 image batches); ``mix_loader_pillow``:
  the same with Pillow decoding the JPEGs (the read path before simplejpeg);
- ``fashiongen_files`` / ``fashiongen_array``: the same loader on FashionGen alone, images decoded from
  PNG files or served from the uint8 array store (``data.image_store``);
- ``*_floor``: what decoding alone costs, the floor a loader can reach: PIL decode, resize and crop of
  the same images, two views a product, no tensors and no collation;
- ``decoders``: images/s of each JPEG (and PNG) decoder available in this environment, at the stored
  size and with PIL's reduced-size DCT decoding (``Image.draft``) when the image is larger than needed.

Rounds are interleaved (every path once per round) so that load from other processes on a shared
machine hits all paths alike; medians over rounds are reported with every round's figure.
"""

from __future__ import annotations

import cProfile
import importlib
import itertools
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from fashion_vl.bench.training import compose_experiment
from fashion_vl.data.images import resolve_image
from fashion_vl.data.products import ProductDataModule

ONLY_FASHIONGEN = [
    "~data.train_sources.bigfacad",
    "~data.train_sources.fashion200k",
    "~data.train_sources.polyvore",
]


def loader_config_overrides(batch_size: int) -> list[str]:
    return [f"data.batch_size={batch_size}", "data.num_workers=0", "data.pin_memory=false"]


def build_datamodule(experiment: str, data_dir: Path, overrides: list[str]) -> ProductDataModule:
    cfg = compose_experiment(experiment, str(data_dir), overrides)
    datamodule = instantiate(cfg.data, _convert_="partial")
    datamodule.setup("fit")
    return datamodule


class Rate(NamedTuple):
    per_s: float  # samples per wall-clock second
    per_cpu_s: float  # samples per second of this process's CPU time


class Clock:
    """Wall-clock and process CPU time of a block. On a shared machine the CPU rate is the steadier
    figure (what a worker with a core to itself would do): time spent waiting for a core does not
    count, cache and memory-bandwidth contention still do."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.rate = Rate(float("nan"), float("nan"))

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.rate = Rate(self.samples / wall, self.samples / max(cpu, 1e-9))


class LoaderStream:
    """Endless batches of a DataModule's training loader (restarted at the end of an epoch)."""

    def __init__(self, datamodule: ProductDataModule) -> None:
        self.datamodule = datamodule
        self.batch_size = datamodule.batch_size
        self._it: Iterator[dict] = iter(())

    def next(self) -> dict:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.datamodule.train_dataloader())
            return next(self._it)

    def rate(self, batches: int) -> Rate:
        """Samples per wall second and per CPU second over ``batches`` batches."""
        with Clock(self.batch_size * batches) as clock:
            for _ in range(batches):
                self.next()
        return clock.rate


class PillowJpegStream(LoaderStream):
    """The same loader with Pillow decoding JPEGs, as the read path did before simplejpeg: the A/B
    of the decoder inside the loader, in the same process and rounds."""

    def rate(self, batches: int) -> Rate:
        from fashion_vl.data import images

        decode_jpeg = images.decode_jpeg
        images.decode_jpeg = lambda *args, **kwargs: None  # read_image falls back to Pillow
        try:
            return super().rate(batches)
        finally:
            images.decode_jpeg = decode_jpeg


class DecodeFloor:
    """PIL decode + resize + crop of the images a loader reads, two views a product, nothing else.

    Products are drawn from the loader's own sampler order and views as the dataset draws them, so
    the floor reads the same population of files (JPEG and PNG in the reference's proportions).
    The issue's floor decodes every view; ``distinct``: a file drawn for both views of a product is
    decoded once and cropped twice, as the loader does (the stricter floor).
    """

    def __init__(
        self, datamodule: ProductDataModule, resize: int, crop: int, views: int = 2, distinct: bool = False
    ) -> None:
        self.distinct = distinct
        dataset = datamodule.train_set
        sampler = datamodule.train_dataloader().sampler
        self.paths: list[list[Path]] = []
        for key in sampler:
            table, product = dataset.product(key.index)
            rng = random.Random(key.seed)
            names = [product.images[rng.randrange(len(product.images))] for _ in range(views)]
            self.paths.append([resolve_image(table.image_dir, n) for n in names])
        self.resize, self.crop = resize, crop
        self.rng = random.Random(0)
        self._cycle = itertools.cycle(self.paths)

    def shared_view_share(self) -> float:
        """The share of products whose views are all one file."""
        return sum(len(set(paths)) == 1 for paths in self.paths) / len(self.paths)

    def sample(self) -> list[Image.Image]:
        out = []
        decoded: dict[Path, Image.Image] | None = {} if self.distinct else None
        for path in next(self._cycle):
            img = decoded.get(path) if decoded is not None else None
            if img is None:
                with Image.open(path) as opened:
                    img = opened.convert("RGB").resize((self.resize, self.resize), Image.Resampling.BILINEAR)
                if decoded is not None:
                    decoded[path] = img
            x, y = (
                self.rng.randrange(self.resize - self.crop + 1),
                self.rng.randrange(self.resize - self.crop + 1),
            )
            out.append(img.crop((x, y, x + self.crop, y + self.crop)))
        return out

    def rate(self, samples: int) -> Rate:
        with Clock(samples) as clock:
            for _ in range(samples):
                self.sample()
        return clock.rate


# Run in a subprocess with another checkout's ``src`` on PYTHONPATH: only the API every version has.
# ``fashion_vl.conf`` is mapped to that checkout's ``conf/`` (the project's editable install maps it
# to this checkout's, whose configs name classes the other may not have).
CHECKOUT_LOADER_SCRIPT = """
import importlib.util, json, sys, time
experiment, data_dir, batch, batches, conf = sys.argv[1:6]
batch, batches = int(batch), int(batches)
spec = importlib.util.spec_from_file_location(
    "fashion_vl.conf", conf + "/__init__.py", submodule_search_locations=[conf]
)
sys.modules["fashion_vl.conf"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["fashion_vl.conf"])
import torch
from hydra.utils import instantiate
from fashion_vl.bench.training import compose_experiment
torch.set_num_threads(1)
overrides = [f"data.batch_size={batch}", "data.num_workers=0", "data.pin_memory=false"]
datamodule = instantiate(compose_experiment(experiment, data_dir, overrides).data, _convert_="partial")
datamodule.setup("fit")
batches_iter = iter(datamodule.train_dataloader())
next(batches_iter)
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(batches):
    next(batches_iter)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"per_s": batch * batches / wall, "per_cpu_s": batch * batches / cpu}))
"""


class CheckoutLoader:
    """The same loader from another checkout of fashion-vl (its root folder; e.g. a ``git worktree``
    of the commit before a change), one subprocess per round: after an untimed first batch it times
    ``batches`` batches in its own process, so its rounds interleave with this process's paths and
    the start-up (imports, config, dataset index) is not counted."""

    def __init__(self, checkout: Path, experiment: str, data_dir: Path, batch_size: int) -> None:
        self.checkout = Path(checkout).resolve()
        self.src, self.conf = self.checkout / "src", self.checkout / "conf"
        for need in (self.src / "fashion_vl", self.conf / "__init__.py"):
            if not need.exists():
                raise FileNotFoundError(
                    f"{self.checkout}: no {need.relative_to(self.checkout)} (--baseline-checkout takes the root "
                    "of a fashion-vl checkout: git worktree add /tmp/fvl-before <commit>)"
                )
        self.experiment, self.data_dir, self.batch_size = experiment, data_dir, batch_size

    def rate(self, batches: int) -> Rate:
        env = {**os.environ, "PYTHONPATH": str(self.src), "OMP_NUM_THREADS": "1"}
        args = [self.experiment, str(self.data_dir), str(self.batch_size), str(batches), str(self.conf)]
        done = subprocess.run(
            [sys.executable, "-c", CHECKOUT_LOADER_SCRIPT, *args], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"the loader of {self.checkout} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return Rate(figures["per_s"], figures["per_cpu_s"])


def interleaved(paths: dict[str, Callable[[], Rate | float]], rounds: int) -> dict[str, dict[str, Any]]:
    """Every path once per round, ``rounds`` times; medians and every round's figures per path."""
    figures: dict[str, list[Rate]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            rate = run()
            figures[name].append(rate if isinstance(rate, Rate) else Rate(rate, float("nan")))
    return {
        name: {
            "samples_per_s": statistics.median(r.per_s for r in rates),
            "samples_per_cpu_s": statistics.median(r.per_cpu_s for r in rates),
            "rounds": [r.per_s for r in rates],
            "rounds_cpu": [r.per_cpu_s for r in rates],
        }
        for name, rates in figures.items()
    }


def profile_loader(stream: LoaderStream, batches: int, top: int = 25) -> list[dict[str, Any]]:
    """Where a loader's time goes: cProfile's top functions by own time over ``batches`` batches."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(batches):
        stream.next()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({function})",
                "calls": calls,
                "own_s": own,
                "cumulative_s": cumulative,
                "own_share": own / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return rows[:top]


# --------------------------------------------------------------------------- decoders


def _pil(path: Path, draft: int | None = None) -> np.ndarray:
    with Image.open(path) as img:
        if draft is not None:
            img.draft("RGB", (draft, draft))
        return np.asarray(img.convert("RGB"))


def available_decoders() -> tuple[dict[str, Callable[[Path], Any]], dict[str, Callable[[Path, int], Any]]]:
    """Decoders of JPEG (and PNG) files to uint8 RGB, as importable here; and the JPEG decoders that
    decode at reduced size (DCT scaling) given the smallest side wanted."""
    import warnings

    decoders: dict[str, Callable[[Path], Any]] = {"pil": _pil}
    draft_decoders: dict[str, Callable[[Path, int], Any]] = {"pil+draft": lambda path, side: _pil(path, side)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders (torchcodec)
        try:
            import torchvision.io as tvio

            def torchvision_io(path: Path) -> torch.Tensor:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return tvio.decode_image(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB)

            decoders["torchvision.io"] = torchvision_io
        except ImportError:
            pass
    try:
        codec = importlib.import_module("torchcodec.decoders")

        def torchcodec(path: Path) -> torch.Tensor:
            return codec.decode_image(str(path))

        decoders["torchcodec"] = torchcodec
    except (ImportError, OSError, RuntimeError):
        pass
    try:
        simplejpeg = importlib.import_module("simplejpeg")

        def simple(path: Path) -> np.ndarray:
            return simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")

        decoders["simplejpeg (jpeg only)"] = simple
        draft_decoders["simplejpeg+min_size"] = lambda path, side: simplejpeg.decode_jpeg(
            path.read_bytes(), colorspace="RGB", min_height=side, min_width=side
        )
    except ImportError:
        pass
    return decoders, draft_decoders


def resized_copies(paths: list[Path], side: int, out_dir: Path, quality: int = 90) -> list[Path]:
    """JPEG copies of ``paths`` upscaled to ``side`` px: stored images larger than the transform needs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(paths):
        target = out_dir / f"{i}_{side}.jpg"
        if not target.is_file():
            with Image.open(path) as img:
                img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
                    target, quality=quality
                )
        copies.append(target)
    return copies


def decoder_rates(
    paths_by_kind: dict[str, list[Path]], rounds: int, resize: int = 256
) -> dict[str, dict[str, float]]:
    """Images/s of each decoder on each set of files, per wall and per CPU second (medians over
    interleaved rounds); the ``+draft`` and ``+min_size`` ones decode at the smallest DCT scale that
    keeps both sides >= ``resize``."""
    decoders, draft_decoders = available_decoders()
    out: dict[str, dict[str, float]] = {}
    for kind, paths in paths_by_kind.items():
        runs: dict[str, Callable[[], Rate]] = {}
        for name, decode in decoders.items():
            if "jpeg only" in name and not kind.startswith("jpeg"):
                continue

            def run(decode: Callable = decode, paths: list[Path] = paths) -> Rate:
                with Clock(len(paths)) as clock:
                    for path in paths:
                        decode(path)
                return clock.rate

            runs[name] = run
        for name, decode_at in draft_decoders.items() if kind.startswith("jpeg") else ():

            def draft(decode_at: Callable = decode_at, paths: list[Path] = paths) -> Rate:
                with Clock(len(paths)) as clock:
                    for path in paths:
                        decode_at(path, resize)
                return clock.rate

            runs[name] = draft
        figures = interleaved(runs, rounds)
        out[kind] = {name: fig["samples_per_s"] for name, fig in figures.items()}
        out[f"{kind} (per CPU-s)"] = {name: fig["samples_per_cpu_s"] for name, fig in figures.items()}
    return out


def pil_build() -> str:
    import PIL

    return f"Pillow {PIL.__version__}" + (" (Pillow-SIMD)" if ".post" in PIL.__version__ else "")
