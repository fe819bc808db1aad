"""The EPIC, VISOR and EGO4D preprocessing scripts on the miniature raw trees (tests/data_fixture.py)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from ldm.preprocessing.hand_detection import DetectorUnavailable, Detectron2HandDetector
from scripts import make_fixture_data as fixture_data
from scripts.make_fixture_data import RAW_DIR, SCRIPTS, load_script
from tests.data_fixture import shared_fixture_data

epic_to_hdf5 = load_script("epic_to_hdf5")
visor_to_hdf5 = load_script("visor_to_hdf5")
ego4d_to_hdf5 = load_script("ego4d_to_hdf5")
unzip_visor = load_script("unzip_visor")


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    return shared_fixture_data(tmp_path_factory)


@pytest.fixture(scope="session")
def raw(data_env) -> Path:
    return Path(data_env["DATA_LOCATION"]).parent / RAW_DIR


def frames_flagged(count: int, *spans: tuple[int, int]) -> np.ndarray:
    """(count,) flags, 1 on the 1-based inclusive frame spans."""
    flags = np.zeros(count, np.int64)
    for first, last in spans:
        flags[first - 1 : last] = 1
    return flags


# Expected VISOR arrays, derived by hand from FIXTURE_VIDEOS (ground truth every 20 frames from 1):
# P01_01: left hand on 1..200 but the dense polygons miss it on 45..50 and 81; right hand on 1..210,
#   missed on 81. Frame 81 is a ground-truth frame, so `hands` there comes from the ground truth.
#   Presence (L,R): 1..44 both, 45..50 right only, 51..200 both, 201..210 right only, then none.
#   Spans [41,61] (45..50 differ), [181,201] and [201,221] change presence; [221,241]..[381,401] are
#   hand-free at both ends.
# P01_02: right hand on 1..140: presence changes in [121,141]; [141,161] hand-free.
# P37_102: both hands on 1..140: presence changes in [121,141]; [141,161]..[241,261] hand-free.
EXPECTED_VISOR = {
    "P01_01": {
        "left": frames_flagged(401, (1, 44), (51, 200)),
        "right": frames_flagged(401, (1, 210)),
        "gt_no_hands": frames_flagged(401, (221, 401)),
        "consistent_with_gt": frames_flagged(401, (1, 41), (61, 181), (221, 401)),
    },
    "P01_02": {
        "left": frames_flagged(161),
        "right": frames_flagged(161, (1, 140)),
        "gt_no_hands": frames_flagged(161, (141, 161)),
        "consistent_with_gt": frames_flagged(161, (1, 121), (141, 161)),
    },
    "P37_102": {
        "left": frames_flagged(261, (1, 140)),
        "right": frames_flagged(261, (1, 140)),
        "gt_no_hands": frames_flagged(261, (141, 261)),
        "consistent_with_gt": frames_flagged(261, (1, 121), (141, 261)),
    },
}


def test_epic_files_hold_the_jpeg_bytes_unchanged(data_env, raw):
    for video in fixture_data.FIXTURE_VIDEOS:
        folder = raw / "epic" / video.name.split("_")[0] / "rgb_frames" / video.name
        jpegs = sorted(folder.glob("*.jpg"))
        with h5py.File(Path(data_env["EPIC_ROOT"]) / f"{video.name}.hdf5", "r") as f:
            assert set(f) == {"frame_numbers", "frames"}
            assert f["frame_numbers"].dtype == np.int64
            assert h5py.check_vlen_dtype(f["frames"].dtype) == np.uint8
            np.testing.assert_array_equal(f["frame_numbers"][:], np.arange(1, len(jpegs) + 1))
            for index in (0, 1, len(jpegs) // 2, len(jpegs) - 1):
                assert f["frames"][index].tobytes() == jpegs[index].read_bytes()


def test_visor_files_match_hand_derived_flags(data_env):
    for video in fixture_data.FIXTURE_VIDEOS:
        expected = EXPECTED_VISOR[video.name]
        with h5py.File(Path(data_env["DATA_LOCATION"]) / f"{video.name}_interpolations.hdf5", "r") as f:
            assert set(f) == {
                "annotations", "hands", "gt_no_hands", "consistent_with_gt", "frame_nums",
                "sparse_annotations", "sparse_frame_nums", "saprse_frame_nums",
            }  # fmt: skip
            assert f["hands"].dtype == bool and f["hands"].shape == (video.frames, 2)
            np.testing.assert_array_equal(f["hands"][:, 0], expected["left"])
            np.testing.assert_array_equal(f["hands"][:, 1], expected["right"])
            np.testing.assert_array_equal(f["gt_no_hands"][:], expected["gt_no_hands"])
            np.testing.assert_array_equal(f["consistent_with_gt"][:], expected["consistent_with_gt"])
            np.testing.assert_array_equal(f["frame_nums"][:], np.arange(1, video.frames + 1))
            np.testing.assert_array_equal(f["sparse_frame_nums"][:], video.ground_truth_frames)
            assert f["saprse_frame_nums"].id == f["sparse_frame_nums"].id  # the published name, linked
            assert h5py.check_string_dtype(f["annotations"].dtype) is not None
            assert json.loads(f["annotations"][80]) == fixture_data.dense_entries(video)[80]
            assert json.loads(f["sparse_annotations"][4]) == fixture_data.sparse_entries(video)[4]


def test_visor_work_is_sharded_so_each_file_is_written_exactly_once(raw, tmp_path):
    out = tmp_path / "visor"
    written = []
    for shard in range(3):
        before = set(out.glob("*.hdf5"))
        args = [
            raw / "epic",
            raw / "visor",
            out,
            "--num-threads",
            "3",
            "--thread-num",
            str(shard),
            "--salt",
            "x",
        ]
        assert visor_to_hdf5.main([str(a) for a in args]) == 0
        written += sorted(set(out.glob("*.hdf5")) - before)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{v.name}_interpolations.hdf5" for v in fixture_data.FIXTURE_VIDEOS)


def test_rerun_skips_finished_files(raw, tmp_path, caplog):
    out = tmp_path / "epic"
    assert epic_to_hdf5.main([str(raw / "epic"), str(out)]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert epic_to_hdf5.main([str(raw / "epic"), str(out)]) == 0
    assert "0 written, 3 skipped" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


KILL_AFTER_50_FRAMES = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import epic_to_hdf5
read, calls = epic_to_hdf5.read_jpeg, []
def read_then_die(path):
    calls.append(path)
    if len(calls) == 50:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(path)
epic_to_hdf5.read_jpeg = read_then_die
epic_to_hdf5.main(sys.argv[2:])
"""


def test_killed_run_leaves_no_file_that_a_rerun_would_skip(raw, tmp_path):
    out = tmp_path / "epic"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_50_FRAMES, str(SCRIPTS), str(raw / "epic"), str(out)],
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert list(out.glob("*.hdf5")) == [] and list(out.glob("*.partial")) != []
    assert epic_to_hdf5.main([str(raw / "epic"), str(out)]) == 0
    with h5py.File(out / "P01_01.hdf5", "r") as f:
        assert len(f["frames"]) == 401 + fixture_data.EXTRA_EPIC_FRAMES


def test_ego4d_labels_and_colour_convention(data_env):
    with h5py.File(Path(data_env["EGO4D_LOCATION"]) / f"{fixture_data.EGO4D_KITCHEN_UID}.hdf5", "r") as f:
        assert set(f) == {"frames", "labels", "mean_pixel"}
        # 200 frames, every 10th kept: 20; the marker is on frames 50..79, i.e. kept frames 5, 6, 7;
        # frames 160..169 are black, i.e. kept frame 16.
        np.testing.assert_array_equal(f["labels"][:], [0] * 5 + [1] * 3 + [0] * 12)
        assert f["mean_pixel"].shape == (20, 3) and f["mean_pixel"].dtype == np.int64
        dark = f["mean_pixel"][:].mean(axis=1) <= 10
        np.testing.assert_array_equal(np.flatnonzero(dark), [16])
        frame = cv2.imdecode(f["frames"][0], cv2.IMREAD_COLOR)  # the published convention: RGB out
        assert frame.shape == (256, 256, 3)
        # H.264 and JPEG move the colours by 1.7 and the mean by 0.48 (AMD EPYC, all 3 settings).
        left, right = frame[:, :100].reshape(-1, 3).mean(0), frame[:, 156:].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(left, fixture_data.EGO4D_LEFT_RGB, atol=12)
        np.testing.assert_allclose(right, fixture_data.EGO4D_RIGHT_RGB, atol=12)
        np.testing.assert_allclose(f["mean_pixel"][0], frame.reshape(-1, 3).mean(0), atol=3)


def published_crop(frame: np.ndarray, size: int = 256) -> np.ndarray:
    """The published EGO4D crop worked out by hand: nearest-neighbour resizing of n source pixels to m
    reads source pixel floor(i * n / m) for output pixel i (short side to `size`, the long side
    rounded down), then the centre square."""
    height, width = frame.shape[:2]
    rows, cols = (size, width * size // height) if height <= width else (height * size // width, size)
    top, left = (rows - size) // 2, (cols - size) // 2
    row_index = (np.arange(top, top + size) * height) // rows
    col_index = (np.arange(left, left + size) * width) // cols
    return frame[row_index][:, col_index]


def test_ego4d_crops_are_the_published_nearest_neighbour_pixels(raw, data_env):
    """The stored crops, their JPEG bytes and mean_pixel are those of the published resampling (the
    whole frame resized by nearest neighbour, then cropped), not of an area filter."""
    uid = fixture_data.EGO4D_KITCHEN_UID
    frames = list(ego4d_to_hdf5.sampled_frames(raw / "ego4d" / "v2" / "full_scale" / f"{uid}.mp4"))
    with h5py.File(Path(data_env["EGO4D_LOCATION"]) / f"{uid}.hdf5", "r") as f:
        assert len(f["frames"]) == len(frames) == 20
        for frame, jpeg, mean in zip(frames, f["frames"], f["mean_pixel"], strict=True):
            crop = published_crop(frame)
            assert np.array_equal(ego4d_to_hdf5.stored_crop(frame), crop)
            assert np.array_equal(jpeg, ego4d_to_hdf5.encode_as_published(crop))
            assert np.array_equal(mean, crop.reshape(-1, 3).sum(axis=0) // crop[..., 0].size)
    area = ego4d_to_hdf5.stored_crop(frames[0], "area")
    assert area.shape == (256, 256, 3) and not np.array_equal(area, published_crop(frames[0]))


def test_kitchen_ids_and_splits(data_env):
    root = Path(data_env["DATA_LOCATION"]).parent
    assert (root / "ego4d_kitchen_ids.txt").read_text().split() == [fixture_data.EGO4D_KITCHEN_UID]
    assert Path(data_env["VISOR_TRAIN_LIST"]).read_text().split() == [
        "P01_01_interpolations.hdf5",
        "P01_02_interpolations.hdf5",
    ]
    assert Path(data_env["VISOR_VAL_LIST"]).read_text().split() == ["P37_102_interpolations.hdf5"]


def one_video_tree(raw: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of P01_02's raw EPIC frames and VISOR files to break."""
    epic, visor = tmp_path / "epic", tmp_path / "visor"
    shutil.copytree(raw / "epic" / "P01" / "rgb_frames" / "P01_02", epic / "P01" / "rgb_frames" / "P01_02")
    for path in (raw / "visor").rglob("P01_02*.json"):
        target = visor / path.relative_to(raw / "visor")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return epic, visor


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_corrupt_json_gives_one_error_line(raw, tmp_path, caplog):
    epic, visor = one_video_tree(raw, tmp_path)
    dense = next(visor.rglob("P01_02_interpolations.json"))
    dense.write_text(dense.read_text()[:5000])
    assert visor_to_hdf5.main([str(epic), str(visor), str(tmp_path / "out")]) == 1
    (line,) = error_lines(caplog)
    assert str(dense) in line and "corrupt JSON" in line
    assert list((tmp_path / "out").glob("*")) == []


def test_missing_epic_frame_gives_one_error_line(raw, tmp_path, caplog):
    epic, visor = one_video_tree(raw, tmp_path)
    (epic / "P01" / "rgb_frames" / "P01_02" / "frame_0000000077.jpg").unlink()
    assert visor_to_hdf5.main([str(epic), str(visor), str(tmp_path / "visor_out")]) == 1
    assert epic_to_hdf5.main([str(epic), str(tmp_path / "epic_out")]) == 1
    visor_line, epic_line = error_lines(caplog)
    assert "missing frame_0000000077.jpg" in visor_line and "P01_02" in visor_line
    assert "missing frame_0000000077.jpg" in epic_line and "P01_02" in epic_line


def test_truncated_jpeg_is_refused(raw, tmp_path, caplog):
    epic, _ = one_video_tree(raw, tmp_path)
    frame = epic / "P01" / "rgb_frames" / "P01_02" / "frame_0000000003.jpg"
    frame.write_bytes(frame.read_bytes()[:2000])
    assert epic_to_hdf5.main([str(epic), str(tmp_path / "out")]) == 1
    (line,) = error_lines(caplog)
    assert str(frame) in line and "truncated" in line
    assert list((tmp_path / "out").glob("*")) == []


def test_unreadable_video_gives_one_error_line(raw, tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    code = ego4d_to_hdf5.main(
        [str(videos), str(tmp_path / "out")], detector=fixture_data.MarkerHandDetector()
    )
    assert code == 1
    (line,) = error_lines(caplog)
    assert "broken.mp4: unreadable video" in line


def test_missing_detectron2_says_how_to_install(raw, tmp_path, capsys):
    with pytest.raises(DetectorUnavailable, match="detectron2"):
        Detectron2HandDetector(tmp_path / "missing.yaml", tmp_path / "missing.pth")
    code = ego4d_to_hdf5.main(
        [
            str(raw / "ego4d" / "v2" / "full_scale"),
            str(tmp_path / "out"),
            "--detector-config",
            str(tmp_path / "x.yaml"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install detectron2" in err[0]


def test_unzip_resumes_and_reports_corrupt_zips(raw, tmp_path, caplog):
    dense = tmp_path / "dense"
    shutil.copytree(raw / "visor" / "Interpolations-DenseAnnotations", dense)
    for extracted in dense.rglob("*.json"):
        extracted.unlink()
    assert unzip_visor.main([str(dense)]) == 0
    assert sorted(p.name for p in dense.rglob("*.json")) == sorted(
        f"{v.name}_interpolations.json" for v in fixture_data.FIXTURE_VIDEOS
    )
    broken = dense / "train" / "P99_01_interpolations.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("P99_01_interpolations.json", "{}" * 1000)
    data = bytearray(broken.read_bytes())
    data[40:60] = b"\xff" * 20  # damage the stored member: its CRC no longer matches
    broken.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert unzip_visor.main([str(dense)]) == 1
    (line,) = error_lines(caplog)
    assert "P99_01_interpolations.zip" in line
    assert "0 written, 3 skipped" in caplog.text
    assert not (dense / "train" / "P99_01_interpolations.json").exists()
