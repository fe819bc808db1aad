#!/usr/bin/env python
"""Miniature EPIC-KITCHENS, VISOR and EGO4D data in the public formats, for tests, benchmarks and trials.

    python scripts/make_fixture_data.py OUT               # the raw trees
    python scripts/make_fixture_data.py OUT --processed   # and the HDF5 files the training reads

`write_fixture_raw(root)` writes the raw trees; `prepare_fixture_data(root)` also runs the
repository's preprocessing scripts on them and returns the environment variables that
configs/inpaint_4frame.yaml reads (--processed prints them).

The pictures are synthetic (a panning texture with skin-coloured hands; EGO4D clips with a magenta
marker standing in for a hand, and a few black frames), but folder layout, file names, JSON
structure, polygon resolutions and video containers are those of the real datasets, so the
preprocessing scripts run on them unchanged:

  OUT/epic/<participant>/rgb_frames/<video>/frame_0000000001.jpg           456x256 JPEG
  OUT/visor/GroundTruth-SparseAnnotations/annotations/{train,val}/<video>.json   1920x1080 polygons
  OUT/visor/Interpolations-DenseAnnotations/{train,val}/<video>_interpolations.zip  854x480 polygons
  OUT/ego4d/v2/full_scale/<video_uid>.mp4, OUT/ego4d/v2/annotations/narration.json

FIXTURE_VIDEOS says which frames show which hand and where the dense polygons miss them, so tests
can derive the expected `hands`, `gt_no_hands` and `consistent_with_gt` by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cv2
import imageio_ffmpeg
import numpy as np

EPIC_W, EPIC_H = 456, 256
DENSE_W, DENSE_H = 854, 480
SPARSE_W, SPARSE_H = 1920, 1080
GT_STEP = 20
EXTRA_EPIC_FRAMES = 9
RAW_DIR = "raw"
SCRIPTS = Path(__file__).resolve().parent
PAN_PER_FRAME = 0.25
SKIN_RGB = (225, 172, 140)
HANDS = (("left hand", 300), ("right hand", 301))  # VISOR name and class id per side


@dataclass(frozen=True)
class FixtureVideo:
    """One EPIC/VISOR video: dense frames 1..frames, ground truth every GT_STEP frames from 1."""

    name: str
    split: str
    frames: int
    left: range = range(0)
    right: range = range(0)
    dense_missing_left: tuple[int, ...] = ()
    dense_missing_right: tuple[int, ...] = ()

    @property
    def ground_truth_frames(self) -> list[int]:
        return list(range(1, self.frames + 1, GT_STEP))


FIXTURE_VIDEOS = (
    # Both hands until 200, the right one until 210; the dense interpolation loses the left hand on
    # 45..50 and both hands on 81 (a ground-truth frame, which shows them).
    FixtureVideo(
        "P01_01", "train", 401, left=range(1, 201), right=range(1, 211),
        dense_missing_left=(45, 46, 47, 48, 49, 50, 81), dense_missing_right=(81,),
    ),
    FixtureVideo("P01_02", "train", 161, right=range(1, 141)),
    FixtureVideo("P37_102", "val", 261, left=range(1, 141), right=range(1, 141)),
)  # fmt: skip

EGO4D_KITCHEN_UID = "3c0dffd0-e38e-4643-bc48-d513943dc20b"
EGO4D_OTHER_UID = "9a41c2f0-0b8e-4c11-a7d5-6b1c2f0f0b8e"
EGO4D_SIZE = (384, 288)
EGO4D_FRAMES = {EGO4D_KITCHEN_UID: 200, EGO4D_OTHER_UID: 40}
EGO4D_MARKER_FRAMES = range(50, 80)  # kept frames 5, 6, 7 (every 10th) show the marker
EGO4D_BLACK_FRAMES = range(160, 170)  # kept frame 16 is black
EGO4D_LEFT_RGB, EGO4D_RIGHT_RGB = (190, 50, 40), (40, 60, 190)


def hand_outline(side: int, frame: int) -> list[np.ndarray]:
    """A hand's polygons (palm and thumb) at a frame, in [0, 1] frame coordinates."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    cx = (0.4 if side == 0 else 0.6) + 0.05 * np.sin(frame / 17 + side)
    cy = 0.62 + 0.08 * np.cos(frame / 23 + side)
    palm = np.stack([cx + 0.06 * np.cos(angles), cy + 0.13 * np.sin(angles)], axis=1)
    thumb_x = cx + (0.07 if side == 0 else -0.07)
    thumb = np.stack([thumb_x + 0.02 * np.cos(angles), cy - 0.05 + 0.05 * np.sin(angles)], axis=1)
    return [palm, thumb]


def scaled(polygons: Sequence[np.ndarray], width: int, height: int) -> list[list[list[float]]]:
    return [np.round(p * (width, height), 2).tolist() for p in polygons]


def visible_sides(video: FixtureVideo, frame: int) -> list[int]:
    return [side for side, frames in enumerate((video.left, video.right)) if frame in frames]


def entry(
    video: FixtureVideo, frame: int, sides: Sequence[int], width: int, height: int, dense: bool
) -> dict:
    """One `video_annotations` item with the given hands and two other objects."""
    stem = f"{video.name}_frame_{frame:010d}"
    name = f"{stem}.png" if dense else f"{stem}.jpg"
    image = {
        "name": name,
        "video": video.name,
        "image_path": f"{video.name}/{video.name}_Part_001/{name}",
        "subsequence": f"{video.name}_Part_001",
    }
    objects = [
        ("cupboard", 12, [np.array([[0.05, 0.05], [0.3, 0.05], [0.3, 0.4], [0.05, 0.4]])]),
        ("knife", 7, [np.array([[0.7, 0.8], [0.9, 0.78], [0.9, 0.82]])]),
    ]
    objects += [(*HANDS[side], hand_outline(side, frame)) for side in sides]
    annotations = [
        {"id": f"{video.name}-{frame}-{i}", "name": n, "class_id": c, "segments": scaled(p, width, height)}
        for i, (n, c, p) in enumerate(objects)
    ]
    return {"image": image, "annotations": annotations}


def dense_entries(video: FixtureVideo) -> list[dict]:
    missing = (video.dense_missing_left, video.dense_missing_right)
    return [
        entry(
            video,
            f,
            [s for s in visible_sides(video, f) if f not in missing[s]],
            DENSE_W,
            DENSE_H,
            dense=True,
        )
        for f in range(1, video.frames + 1)
    ]


def sparse_entries(video: FixtureVideo) -> list[dict]:
    return [
        entry(video, f, visible_sides(video, f), SPARSE_W, SPARSE_H, dense=False)
        for f in video.ground_truth_frames
    ]


def background(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth random RGB texture, red kept low so that no pixel looks like a hand."""
    coarse = np.random.default_rng(seed).integers(40, 215, (height // 32 + 2, width // 32 + 2, 3), np.uint8)
    coarse[..., 0] //= 2
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def write_epic_frames(video: FixtureVideo, root: Path, seed: int) -> None:
    folder = root / video.name.split("_")[0] / "rgb_frames" / video.name
    folder.mkdir(parents=True, exist_ok=True)
    count = video.frames + EXTRA_EPIC_FRAMES
    canvas = background(seed, EPIC_W + int(count * PAN_PER_FRAME) + 1, EPIC_H)
    for frame in range(1, count + 1):
        x = int(frame * PAN_PER_FRAME)
        rgb = np.ascontiguousarray(canvas[:, x : x + EPIC_W])
        for side in visible_sides(video, frame):
            for polygon in hand_outline(side, frame):
                cv2.fillPoly(rgb, [np.round(polygon * (EPIC_W, EPIC_H)).astype(np.int32)], SKIN_RGB)
        cv2.imwrite(str(folder / f"frame_{frame:010d}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_visor(video: FixtureVideo, root: Path) -> None:
    sparse = root / "GroundTruth-SparseAnnotations" / "annotations" / video.split / f"{video.name}.json"
    sparse.parent.mkdir(parents=True, exist_ok=True)
    sparse.write_text(json.dumps({"video_annotations": sparse_entries(video)}))
    dense = root / "Interpolations-DenseAnnotations" / video.split / f"{video.name}_interpolations.zip"
    dense.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dense, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            f"{video.name}_interpolations.json", json.dumps({"video_annotations": dense_entries(video)})
        )


def ego4d_frame(frame: int, marker: bool, black: bool) -> np.ndarray:
    width, height = EGO4D_SIZE
    if black:
        return np.zeros((height, width, 3), np.uint8)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:, : width // 2] = EGO4D_LEFT_RGB
    rgb[:, width // 2 :] = EGO4D_RIGHT_RGB
    rgb[(frame * 3) % height, :] = 128
    if marker:
        rgb[height // 2 - 48 : height // 2 + 48, width // 2 - 48 : width // 2 + 48] = (255, 0, 255)
    return rgb


def write_ego4d(root: Path) -> None:
    videos = root / "v2" / "full_scale"
    videos.mkdir(parents=True, exist_ok=True)
    for uid, count in EGO4D_FRAMES.items():
        writer = imageio_ffmpeg.write_frames(
            str(videos / f"{uid}.mp4"),
            EGO4D_SIZE,
            fps=30,
            codec="libx264",
            quality=8,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        kitchen = uid == EGO4D_KITCHEN_UID
        for frame in range(count):
            marker, black = kitchen and frame in EGO4D_MARKER_FRAMES, kitchen and frame in EGO4D_BLACK_FRAMES
            writer.send(ego4d_frame(frame, marker, black).tobytes())
        writer.close()
    narrations = {
        EGO4D_KITCHEN_UID: {
            "status": "complete",
            "narration_pass_1": {
                "narrations": [{"timestamp_sec": 1.0, "narration_text": "#C C opens the fridge"}],
                "summaries": [{"summary_text": "#summary C cooked pasta in the kitchen", "start_sec": 0.0}],
            },
        },
        EGO4D_OTHER_UID: {
            "status": "complete",
            "narration_pass_1": {"summaries": [{"summary_text": "#summary C repaired a bicycle"}]},
            "narration_pass_2": {"summaries": [{"summary_text": "#summary C fixed a bike in a garage"}]},
        },
        "5e0a2c5b-redacted": {"status": "redacted"},
    }
    annotations = root / "v2" / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "narration.json").write_text(json.dumps(narrations))


class MarkerHandDetector:
    """Stands in for the detectron2 hand detector on fixture clips: a 'hand' is the magenta marker."""

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        hits = []
        for rgb in frames:
            r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
            hits.append(bool(((r > 160) & (g < 100) & (b > 160)).mean() > 0.02))
        return hits


def write_fixture_raw(root: Path) -> dict[str, Path]:
    """Write the raw trees under `root`; returns where each dataset's input lies."""
    for seed, video in enumerate(FIXTURE_VIDEOS):
        write_epic_frames(video, root / "epic", seed)
        write_visor(video, root / "visor")
    write_ego4d(root / "ego4d")
    return {
        "epic": root / "epic",
        "visor": root / "visor",
        "visor_dense": root / "visor" / "Interpolations-DenseAnnotations",
        "ego4d_videos": root / "ego4d" / "v2" / "full_scale",
        "ego4d_narrations": root / "ego4d" / "v2" / "annotations" / "narration.json",
    }


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py of this checkout as a module (scripts/ is not a package)."""
    module_name = f"vidm_scripts.{name}"
    if module_name not in sys.modules:
        path = SCRIPTS / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found (the fixture data needs a checkout of the repository)"
            )
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _run(script: str, *args: object, **kwargs: object) -> None:
    code = load_script(script).main([str(a) for a in args], **kwargs)
    if code != 0:
        raise RuntimeError(f"scripts/{script}.py {' '.join(map(str, args))} exited with {code}")


def prepare_fixture_data(root: Path) -> dict[str, str]:
    """Write the raw trees under root/raw, preprocess them into root; returns the environment
    variables the official config reads, plus VISOR_TRAIN_LIST and VISOR_VAL_LIST (the splits)."""
    raw = write_fixture_raw(root / RAW_DIR)
    _run("unzip_visor", raw["visor_dense"])
    _run("epic_to_hdf5", raw["epic"], root / "epic")
    _run("visor_to_hdf5", raw["epic"], raw["visor"], root / "visor")
    _run("ego4d_kitchen_ids", raw["ego4d_narrations"], "--out", root / "ego4d_kitchen_ids.txt", "--force")
    ids = ("--ids-file", root / "ego4d_kitchen_ids.txt")
    _run("ego4d_to_hdf5", raw["ego4d_videos"], root / "ego4d", *ids, detector=MarkerHandDetector())
    _run("make_splits", raw["visor_dense"], "--out-dir", root, "--force")
    return {
        "EPIC_ROOT": str(root / "epic"),
        "DATA_LOCATION": str(root / "visor"),
        "EGO4D_LOCATION": str(root / "ego4d"),
        "VISOR_TRAIN_LIST": str(root / "no_hands_train.txt"),
        "VISOR_VAL_LIST": str(root / "no_hands_val.txt"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder to write into")
    parser.add_argument("--processed", action="store_true", help="also run the preprocessing scripts")
    args = parser.parse_args(argv)
    if args.processed:
        for name, value in prepare_fixture_data(args.out.resolve()).items():
            print(f"export {name}={value}")
    else:
        for name, path in write_fixture_raw(args.out).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
