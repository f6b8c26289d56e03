import os

import pytest

from fashion_vl.data.prepare.staging import OutputExistsError, staged_output


def test_staged_output_moves_in_only_on_success(tmp_path):
    with pytest.raises(RuntimeError), staged_output(tmp_path, "FashionGen") as tmp:
        (tmp / "train_info.json").write_text("[]")
        raise RuntimeError("converter failed half way")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor the staging folder

    with staged_output(tmp_path, "FashionGen") as tmp:
        (tmp / "train_info.json").write_text("[]")
    assert [p.name for p in tmp_path.iterdir()] == ["FashionGen"]


def test_staged_output_refuses_then_replaces(tmp_path):
    (tmp_path / "FashionGen").mkdir()
    (tmp_path / "FashionGen" / "old.json").write_text("[]")
    with pytest.raises(OutputExistsError, match="--overwrite"), staged_output(tmp_path, "FashionGen"):
        pass
    with staged_output(tmp_path, "FashionGen", overwrite=True) as tmp:
        (tmp / "new.json").write_text("[]")
    assert sorted(p.name for p in (tmp_path / "FashionGen").iterdir()) == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FashionGen"]


def test_staged_output_has_the_permissions_of_a_plain_mkdir(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path, "FashionIQ"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "FashionIQ").stat().st_mode & 0o777 == 0o755
