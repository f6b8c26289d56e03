"""The decode-free FashionGen array store: same pixels as the PNGs, same batches, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_vl.cli.data import main
from fashion_vl.data.array_store import ArrayImageStore, ArrayStoreError, ArrayStoreWriter
from fashion_vl.data.formats import FashionGenSource, MissingDataFileError
from fashion_vl.data.images import ImageLoadError, read_image
from fashion_vl.data.products import ProductDataModule
from fashion_vl.data.synth import generate
from fashion_vl.data.transforms import resize_crop


@pytest.fixture(scope="module")
def both_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic FashionGen with its images written twice: PNG files and the array store."""
    out = tmp_path_factory.mktemp("synth_both") / "datasets"
    generate(out, size="tiny", image_size=64, workers=2, only=["fashiongen"], image_store="both")
    return out


def datamodule(data_dir: Path, image_store: str) -> ProductDataModule:
    return ProductDataModule(
        train_sources={"fashiongen": FashionGenSource(data_dir, "train")},
        val_source=FashionGenSource(data_dir, "val"),
        tokenizer=str(data_dir / "tokenizer"),
        train_transform=resize_crop(True, size=48, resize=56),
        eval_transform=resize_crop(False, size=48, resize=56),
        batch_size=4,
        num_workers=0,
        num_views=2,
        image_store=image_store,
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_store_returns_the_png_pixels_of_every_image(both_dir: Path, split: str) -> None:
    table = FashionGenSource(both_dir, split).read(image_store="array")
    assert table.store is not None
    names = [name for p in table.products for name in p.images]
    assert len(table.store) == len(names) == len(set(names))
    for name in names:
        from_png = read_image(table.image_dir / name)
        from_store = table.store.load(name)
        assert from_store.dtype == torch.uint8 and torch.equal(from_store, from_png), name


def test_array_and_files_give_the_same_batches(both_dir: Path) -> None:
    batches = {}
    for store in ("files", "array"):
        dm = datamodule(both_dir, store)
        dm.setup("fit")
        batches[store] = (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader())))
    (train_f, val_f), (train_a, val_a) = batches["files"], batches["array"]
    for key in ("image", "image_view1", "input_ids"):
        assert torch.equal(train_f[key], train_a[key]), key
    assert torch.equal(val_f["image"], val_a["image"])


def test_array_only_data_trains_and_passes_the_check(tmp_path: Path) -> None:
    out = tmp_path / "datasets"
    generate(out, size="tiny", image_size=32, workers=1, only=["fashiongen"], image_store="array")
    assert not (out / "FashionGen" / "train").exists()  # no PNGs at all
    assert (out / "FashionGen" / "train_images.npy").is_file()
    dm = datamodule(out, "array")
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 3, 48, 48)
    assert main(["check", str(out), "--workers", "2"]) == 0


def test_missing_store_names_the_file_and_the_command(tmp_path: Path, synth_dir: Path) -> None:
    with pytest.raises(MissingDataFileError, match=r"train_images\.json.*--image-store"):
        FashionGenSource(synth_dir, "train").read(image_store="array")
    with pytest.raises(ValueError, match=r"data\.image_store"):
        datamodule(synth_dir, "hdf5")


def test_store_pickles_without_its_memory_map(both_dir: Path) -> None:
    store = ArrayImageStore(both_dir / "FashionGen" / "train_images.json")
    name = next(iter(store.rows))
    before = store.load(name)  # maps the array in this process
    copy = pickle.loads(pickle.dumps(store))  # what a spawned DataLoader worker receives
    assert copy._array is None and torch.equal(copy.load(name), before)
    with pytest.raises(ImageLoadError, match="not in the array store"):
        store.load("no_such_image.png")


def test_store_refuses_a_malformed_index_or_array(tmp_path: Path) -> None:
    writer = ArrayStoreWriter(tmp_path / "x_images.json", 2, 4, 4)
    with pytest.raises(ArrayStoreError, match="uint8"):
        writer.write(0, np.zeros((1, 4, 5, 3), np.uint8))
    writer.write(0, np.full((2, 4, 4, 3), 7, np.uint8))
    with pytest.raises(ArrayStoreError, match="1 names for 2 rows"):
        writer.finish(["a.png"])
    writer.finish(["a.png", "b.png"])
    store = ArrayImageStore(tmp_path / "x_images.json")
    assert store.load("b.jpg").eq(7).all()  # matched without the extension, as files are
    np.save(tmp_path / "x_images.npy", np.zeros((3, 4, 4, 3), np.uint8))  # array and index disagree
    with pytest.raises(ArrayStoreError, match="the index says"):
        ArrayImageStore(tmp_path / "x_images.json").load("a.png")
    (tmp_path / "y_images.json").write_text('{"format": "something else"}')
    with pytest.raises(ArrayStoreError, match="format"):
        ArrayImageStore(tmp_path / "y_images.json")
