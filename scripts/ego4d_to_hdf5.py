#!/usr/bin/env python
"""Turn EGO4D full-scale videos into hand-labelled 256x256 frames, one HDF5 file per video.

Keeps every 10th frame of EGO4D_DIR/<video_uid>.mp4. As in the published preprocessing, the
100 Days of Hands detector sees the full-resolution frame (detectron2 applies its own test-time
resize) in batches of 20, and a frame is labelled 1 when the detector returns any instance with
score ≥ 0.7. Only what is stored is resized so its short side is 256 and centre-cropped to 256x256,
with the published resampling by default: nearest neighbour (torch's F.interpolate in its default
mode) on the whole frame, then the centre crop; --resampling area gives OpenCV's area filter on the
centre square instead (smoother, but other pixels than the published files).
Writes OUT/<video_uid>.hdf5 with:

  frames      vlen uint8  the stored 256x256 crop as JPEG bytes. Compatibility quirk kept from the
                          published files: the RGB crop was handed to OpenCV's encoder, which assumes
                          BGR, so decoding with OpenCV (cv2.imdecode) yields RGB directly (other
                          decoders yield BGR).
  labels      int64 (N,)  1 if a hand was detected anywhere in the full frame (a hand just outside
                          the crop counts too, so such frames are not used as hand-free backgrounds)
  mean_pixel  int64 (N,3) per-channel (R, G, B) mean of the stored crop before JPEG encoding (the
                          pixels training reads, not the full frame), in 0..255, truncated to an
                          integer as published (the crop's mean on the [0, 1] scale times 255, cast
                          to int); the published Backgrounds dataset treats a frame as black
                          when the mean of its mean_pixel is at most 10

By default every *.mp4 in EGO4D_DIR is converted; --ids or --ids-file (e.g. the kitchen subset
data/ego4d_kitchen_ids.txt from scripts/ego4d_kitchen_ids.py) choose videos. Finished files are
skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import h5py
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

from ldm.data.images import square_resize
from ldm.preprocessing.hand_detection import (
    DEFAULT_CONFIG,
    DEFAULT_WEIGHTS,
    SCORE_THRESHOLD,
    DetectorUnavailable,
    Detectron2HandDetector,
    HandDetector,
)
from ldm.preprocessing.jobs import Job, configure_logging, read_id_list, run_jobs
from ldm.util import InputError, first_line

FRAME_STEP = 10
FRAME_SIZE = 256
BATCH_SIZE = 20
RESAMPLING = ("nearest", "area")


def sampled_frames(video: Path, step: int = FRAME_STEP) -> Iterator[np.ndarray]:
    """Every `step`-th frame of the video (from frame 0) as RGB uint8, decoded by ffmpeg."""
    keep_every = ["-vf", f"select=not(mod(n\\,{step}))", "-fps_mode", "passthrough"]
    try:
        reader = imageio_ffmpeg.read_frames(str(video), output_params=keep_every)
        width, height = next(reader)["size"]
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except (OSError, RuntimeError, StopIteration) as err:
        raise InputError(f"{video}: unreadable video ({first_line(err)})") from None


def batches(video: Path, batch_size: int) -> Iterator[list[np.ndarray]]:
    """The kept full-resolution frames, `batch_size` at a time."""
    batch: list[np.ndarray] = []
    for frame in sampled_frames(video):
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_as_published(frame: np.ndarray) -> np.ndarray:
    """JPEG bytes of an RGB frame passed to OpenCV as is (see the module docstring)."""
    ok, data = cv2.imencode(".jpg", frame)
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame")
    return data.reshape(-1)


def nearest_short_side(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame (H,W,3) resized so its short side is `size` (the long side rounded down) by
    F.interpolate's default nearest-neighbour mode, as the published preprocessing resized."""
    height, width = frame.shape[:2]
    shape = (size, width * size // height) if height <= width else (height * size // width, size)
    pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    return F.interpolate(pixels, size=shape, mode="nearest")[0].permute(1, 2, 0).numpy()


def stored_crop(frame: np.ndarray, resampling: str = "nearest") -> np.ndarray:
    """The 256x256 centre crop that is stored (the detector sees the full frame): the published
    nearest-neighbour resize of the whole frame, or (`area`) the centre square area-resampled."""
    if resampling == "area":
        return square_resize(frame, FRAME_SIZE, interpolation=cv2.INTER_AREA)
    return square_resize(nearest_short_side(frame, FRAME_SIZE), None)


def mean_pixel(crop: np.ndarray) -> np.ndarray:
    """Per-channel mean of a uint8 (H, W, 3) image, truncated to int64 (computed exactly, in integers)."""
    return crop.reshape(-1, 3).sum(axis=0, dtype=np.int64) // (crop.shape[0] * crop.shape[1])


def write_video(video: Path, detector: HandDetector, batch_size: int, resampling: str, tmp: Path) -> None:
    jpegs: list[np.ndarray] = []
    labels: list[int] = []
    means: list[np.ndarray] = []
    for batch in batches(video, batch_size):
        labels += [int(hand) for hand in detector(batch)]
        crops = [stored_crop(frame, resampling) for frame in batch]
        jpegs += [encode_as_published(crop) for crop in crops]
        means += [mean_pixel(crop) for crop in crops]
    if not jpegs:
        raise InputError(f"{video}: no frames")
    with h5py.File(tmp, "w") as out:
        out.create_dataset("labels", data=np.asarray(labels, np.int64))
        out.create_dataset("mean_pixel", data=np.asarray(means, np.int64))
        data = out.create_dataset("frames", (len(jpegs),), dtype=h5py.vlen_dtype(np.uint8))
        for index, jpeg in enumerate(jpegs):
            data[index] = jpeg


def video_ids(args: argparse.Namespace) -> list[str]:
    if args.ids:
        return list(args.ids)
    if args.ids_file:
        return read_id_list(args.ids_file)
    return sorted(p.stem for p in args.ego4d_dir.glob("*.mp4"))


def main(argv: list[str] | None = None, detector: HandDetector | None = None) -> int:
    """Command-line entry; `detector` replaces the detectron2 one (tests plug in their own)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ego4d_dir", type=Path, help="folder of EGO4D full-scale <video_uid>.mp4 files")
    parser.add_argument("out", type=Path, help="output folder (set EGO4D_LOCATION to it for training)")
    parser.add_argument("--ids", nargs="+", help="video uids to convert")
    parser.add_argument("--ids-file", type=Path, help="text file of video uids, one a line")
    parser.add_argument("--detector-config", type=Path, default=DEFAULT_CONFIG, help="detectron2 config")
    parser.add_argument("--detector-weights", type=Path, default=DEFAULT_WEIGHTS, help="detector weights")
    parser.add_argument("--threshold", type=float, default=SCORE_THRESHOLD, help="hand score threshold")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="frames per detector call")
    parser.add_argument("--device", help="detector device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--resampling",
        choices=RESAMPLING,
        default="nearest",
        help="how the stored crop is resized: nearest (the published files' pixels, default) or area",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        ids = video_ids(args)
        if not ids:
            raise InputError(f"{args.ego4d_dir}: no .mp4 videos")
        missing = [uid for uid in ids if not (args.ego4d_dir / f"{uid}.mp4").is_file()]
        if missing:
            raise InputError(f"{args.ego4d_dir}: no {missing[0]}.mp4 ({len(missing)} of the videos missing)")
        todo = [uid for uid in ids if not (args.out / f"{uid}.hdf5").exists()]
        if todo and detector is None:
            detector = Detectron2HandDetector(
                args.detector_config, args.detector_weights, args.threshold, args.device
            )
    except (InputError, DetectorUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    jobs = []
    for uid in ids:
        write = partial(
            write_video, args.ego4d_dir / f"{uid}.mp4", detector, args.batch_size, args.resampling
        )
        jobs.append(Job(uid, args.out / f"{uid}.hdf5", write))
    return run_jobs(jobs, desc="EGO4D videos")


if __name__ == "__main__":
    sys.exit(main())
