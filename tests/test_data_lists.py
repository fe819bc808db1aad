"""The published id lists shipped in data/, and the scripts that make other lists leaving them alone."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.make_fixture_data import load_script
from tests.conftest import ROOT

DATA = ROOT / "data"
UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DENSE_FILE = re.compile(r"^(P\d\d_\d+)_interpolations\.hdf5$")


def entries(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text().splitlines() if line.strip()]


def documented_validation_videos() -> set[str]:
    """The video ids docs/data.md names as the validation set (its row for data/no_hands_val.txt)."""
    (row,) = [
        line
        for line in (ROOT / "docs" / "data.md").read_text().splitlines()
        if "`data/no_hands_val.txt` |" in line
    ]
    return set(re.findall(r"P\d\d_\d+", row))


def test_the_three_published_lists_are_shipped():
    kitchen, train, val = (
        entries(n) for n in ("ego4d_kitchen_ids.txt", "no_hands_train.txt", "no_hands_val.txt")
    )
    assert (len(kitchen), len(train), len(val)) == (654, 146, 12)
    assert len(set(kitchen)) == 654 and all(UID.match(uid) for uid in kitchen)
    assert all(DENSE_FILE.match(name) for name in train + val)
    assert len(set(train)) == 146 and not set(train) & set(val)
    val_videos = {DENSE_FILE.match(name)[1] for name in val}
    assert val_videos == documented_validation_videos()
    assert val_videos == set(load_script("make_splits").VALIDATION_VIDEOS)


def test_list_scripts_never_replace_a_list_silently(tmp_path: Path, capsys):
    narrations = tmp_path / "narration.json"
    narrations.write_text('{"u1": {"p": {"summaries": [{"summary_text": "in the kitchen"}]}}}')
    kitchen_ids = load_script("ego4d_kitchen_ids").main
    out = tmp_path / "ids.txt"
    out.write_text("kept\n")
    assert kitchen_ids([str(narrations), "--out", str(out)]) == 1
    assert f"{out}: exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "kept\n"
    assert kitchen_ids([str(narrations), "--out", str(out), "--force"]) == 0
    assert out.read_text() == "u1\n"

    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "P37_102_interpolations.json").write_text("{}")
    (dense / "P01_01_interpolations.json").write_text("{}")
    make_splits = load_script("make_splits").main
    (tmp_path / "no_hands_val.txt").write_text("kept\n")
    assert make_splits([str(dense), "--out-dir", str(tmp_path)]) == 1
    assert not (tmp_path / "no_hands_train.txt").exists()
    assert make_splits([str(dense), "--out-dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "no_hands_val.txt").read_text() == "P37_102_interpolations.hdf5\n"
    assert (tmp_path / "no_hands_train.txt").read_text() == "P01_01_interpolations.hdf5\n"
