"""The EGO4D hand labels: which pixels the detector sees and which are stored (stand-in detector)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import imageio_ffmpeg
import numpy as np

from tests.data_fixture import fixture, load_script

ego4d_to_hdf5 = load_script("ego4d_to_hdf5")

WIDTH, HEIGHT = fixture.EGO4D_SIZE  # 384x288: the stored crop is the centre square x in [48, 336)
CROP_X = (WIDTH - HEIGHT) // 2
SCENE_RGB = (200, 120, 60)


def is_magenta(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    return (r > 160) & (g < 100) & (b > 160)


def scene(marker: bool) -> np.ndarray:
    """A frame whose centre square is one colour; black outside it, with a magenta 'hand' on the left edge."""
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[:, CROP_X : CROP_X + HEIGHT] = SCENE_RGB
    if marker:
        rgb[:, :24] = (255, 0, 255)
    return rgb


def write_video(path: Path, frames: Sequence[np.ndarray]) -> None:
    writer = imageio_ffmpeg.write_frames(
        str(path), (WIDTH, HEIGHT), fps=30, codec="libx264", quality=8, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()


class RecordingDetector:
    """Stands in for the detectron2 detector: a 'hand' is magenta anywhere; keeps the frames it was given."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        self.seen += frames
        return [bool(is_magenta(frame).mean() > 0.02) for frame in frames]


def test_detector_sees_full_frames_and_only_the_crop_is_stored(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", [scene(marker=10 <= n < 20) for n in range(30)])
    detector = RecordingDetector()
    assert ego4d_to_hdf5.main([str(videos), str(tmp_path / "out")], detector=detector) == 0

    assert [frame.shape for frame in detector.seen] == [(HEIGHT, WIDTH, 3)] * 3  # frames 0, 10, 20
    with h5py.File(tmp_path / "out" / "clip.hdf5", "r") as f:
        # The hand lies outside the stored crop, yet frame 10 is labelled: detection used the full frame.
        np.testing.assert_array_equal(f["labels"][:], [0, 1, 0])
        stored = [cv2.imdecode(jpeg, cv2.IMREAD_COLOR) for jpeg in f["frames"]]
        assert {frame.shape for frame in stored} == {(256, 256, 3)}
        assert not any(is_magenta(frame).any() for frame in stored)
        # mean_pixel is the stored crop's mean (the full frame's would be a quarter darker, with black sides).
        assert f["mean_pixel"].dtype == np.int64
        np.testing.assert_allclose(f["mean_pixel"][:], np.tile(SCENE_RGB, (3, 1)), atol=6)


def test_mean_pixel_truncates_the_exact_mean():
    crop = np.zeros((2, 2, 3), np.uint8)
    crop[0, 0] = (255, 3, 1)  # means 63.75, 0.75, 0.25
    np.testing.assert_array_equal(ego4d_to_hdf5.mean_pixel(crop), [63, 0, 0])
