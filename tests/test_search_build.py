"""The resumable index build: a build killed part-way and resumed equals one uninterrupted build,
nothing is embedded twice, unreadable rows are skipped and listed, and the index folder is refused
to a different catalogue or model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.fake_embedder import FakeEmbedder, write_colour_catalogue
from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss",))

ROOT = Path(__file__).resolve().parents[1]


def _index_files(out: Path) -> dict[str, object]:
    """What an index folder holds, comparably: vectors, the FAISS file's bytes, the items, the skips."""
    from fashion_vl.search.item_table import ItemTable

    table = ItemTable(out / "items.sqlite")
    items = table.by_rows(range(len(table)))
    table.close()
    info = json.loads((out / "index.json").read_text())
    info["build"].pop("seconds"), info["build"].pop("created")
    return {
        "vectors": np.load(out / "vectors.npy"),
        "faiss": (out / "index.faiss").read_bytes(),
        "items": items,
        "skipped": (out / "skipped.jsonl").read_text(),
        "info": info,
    }


def _assert_same_index(a: Path, b: Path) -> None:
    fa, fb = _index_files(a), _index_files(b)
    np.testing.assert_array_equal(fa["vectors"], fb["vectors"])
    for key in ("faiss", "items", "skipped", "info"):
        assert fa[key] == fb[key], key


@pytest.fixture
def catalogue(tmp_path: Path):
    """18 colour items, one missing image and one undecodable image among them."""
    from fashion_vl.search.catalogue import read_catalogue

    csv = write_colour_catalogue(tmp_path / "catalogue")
    (tmp_path / "catalogue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = csv.read_text().splitlines()
    lines.insert(5, "missing-1,nowhere.png,a red item that has no image")
    lines.insert(12, "broken-1,broken.png,a blue item whose file is not an image")
    csv.write_text("\n".join(lines) + "\n")
    return read_catalogue(csv)


@pytest.mark.parametrize(("vectors_per_image", "kind"), [(1, "flat"), (3, "ivf")])
def test_build_interrupted_then_resumed_equals_one_uninterrupted_build(
    tmp_path: Path, catalogue, vectors_per_image: int, kind: str
) -> None:
    from fashion_vl.search.build import build_index
    from fashion_vl.search.vector_index import IndexSpec

    spec = IndexSpec(kind=kind, nlist=2)
    whole = FakeEmbedder(vectors_per_image=vectors_per_image)
    build_index(whole, catalogue, tmp_path / "whole", spec=spec, shard_size=4)

    # killed (an exception from the model) while embedding the third of five shards
    crashing = FakeEmbedder(vectors_per_image=vectors_per_image, crash_after_calls=2)
    with pytest.raises(RuntimeError, match="injected crash"):
        build_index(crashing, catalogue, tmp_path / "resumed", spec=spec, shard_size=4)
    assert not (tmp_path / "resumed" / "index.json").exists()
    manifest = json.loads((tmp_path / "resumed" / "build.json").read_text())
    assert sorted(manifest["shards"]) == ["0", "1"]
    first = crashing.images_embedded

    resumer = FakeEmbedder(vectors_per_image=vectors_per_image)
    report = build_index(resumer, catalogue, tmp_path / "resumed", spec=spec, shard_size=4)
    assert (report.shards_reused, report.shards_embedded) == (2, 3)
    # nothing embedded twice: the two runs together embedded each readable image once
    assert first + resumer.images_embedded == whole.images_embedded == 18
    _assert_same_index(tmp_path / "whole", tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "shards").exists()
    assert not (tmp_path / "resumed" / "build.json").exists()


@pytest.mark.slow  # a fresh interpreter importing torch; the injected-crash test above is the fast one
def test_build_killed_by_sigkill_resumes(tmp_path: Path, catalogue) -> None:
    """A real process kill (no clean-up code runs) between shards, then a resume in this process."""
    from fashion_vl.search.build import build_index

    out = tmp_path / "killed"
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.helpers.fake_embedder import FakeEmbedder
from fashion_vl.search.build import build_index
from fashion_vl.search.catalogue import read_catalogue
build_index(FakeEmbedder(delay_s=0.4), read_catalogue({catalogue.source!r}), {str(out)!r}, shard_size=2)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.DEVNULL)
    manifest = out / "build.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the build recorded no shard within 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(json.loads(manifest.read_text())["shards"])
    assert 2 <= done < 10 and not (out / "index.json").exists()

    resumer = FakeEmbedder()
    report = build_index(resumer, catalogue, out, shard_size=2)
    assert report.shards_reused == done
    build_index(FakeEmbedder(), catalogue, tmp_path / "whole", shard_size=2)
    _assert_same_index(tmp_path / "whole", out)


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path: Path, catalogue) -> None:
    from fashion_vl.search.build import build_index

    report = build_index(FakeEmbedder(), catalogue, tmp_path / "index", shard_size=5)
    assert report.items == 18
    skipped = {s.id: s for s in report.skipped}
    assert set(skipped) == {"missing-1", "broken-1"}
    assert "no such image" in skipped["missing-1"].reason
    assert "cannot decode" in skipped["broken-1"].reason
    assert skipped["missing-1"].where.endswith("catalogue.csv: line 6")
    listed = [json.loads(line) for line in (tmp_path / "index" / "skipped.jsonl").read_text().splitlines()]
    assert {r["id"] for r in listed} == {"missing-1", "broken-1"}
    info = json.loads((tmp_path / "index" / "index.json").read_text())
    assert info["catalogue"] == {"source": catalogue.source, "rows": 20, "items": 18, "skipped": 2}


def test_rebuild_is_a_no_op_and_another_catalogue_is_refused(tmp_path: Path, catalogue) -> None:
    from fashion_vl.search.build import BuildError, build_index
    from fashion_vl.search.catalogue import Catalogue

    out = tmp_path / "index"
    build_index(FakeEmbedder(), catalogue, out)
    again = FakeEmbedder()
    assert build_index(again, catalogue, out).up_to_date and again.images_embedded == 0
    # another index kind: re-indexed from the stored vectors, nothing embedded
    from fashion_vl.search.vector_index import IndexSpec

    other = FakeEmbedder()
    report = build_index(other, catalogue, out, spec=IndexSpec(kind="hnsw"))
    assert report.index["kind"] == "hnsw" and other.images_embedded == 0
    assert json.loads((out / "index.json").read_text())["index"]["kind"] == "hnsw"
    smaller = Catalogue(catalogue.source, catalogue.items[:4])
    with pytest.raises(BuildError, match="--overwrite"):
        build_index(FakeEmbedder(), smaller, out)
    with pytest.raises(BuildError, match="--overwrite"):
        build_index(FakeEmbedder(name="another-model"), catalogue, out)
    assert build_index(FakeEmbedder(), smaller, out, overwrite=True).items == 4
    # an unfinished build of another catalogue is refused too
    with pytest.raises(RuntimeError):
        build_index(FakeEmbedder(crash_after_calls=0), catalogue, tmp_path / "partial", shard_size=4)
    with pytest.raises(BuildError, match="unfinished build"):
        build_index(FakeEmbedder(), smaller, tmp_path / "partial", shard_size=4)
    # and a folder that is not an index at all
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an index folder"):
        build_index(FakeEmbedder(), catalogue, tmp_path / "other")


def test_no_readable_row_is_an_error_naming_the_catalogue(tmp_path: Path) -> None:
    from fashion_vl.search.build import BuildError, build_index
    from fashion_vl.search.catalogue import read_catalogue

    csv = tmp_path / "c.csv"
    csv.write_text("id,image,text\na,gone.png,x\n")
    with pytest.raises(BuildError, match=r"no row of .*c.csv could be indexed .*gone.png"):
        build_index(FakeEmbedder(), read_catalogue(csv), tmp_path / "index")
