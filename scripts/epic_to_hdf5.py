#!/usr/bin/env python
"""Pack EPIC-KITCHENS frame folders into one HDF5 file per video.

Reads EPIC_ROOT/<participant>/rgb_frames/<video>/frame_0000000001.jpg ... and writes OUT/<video>.hdf5
with `frame_numbers` (int64) and `frames` (variable-length uint8: each JPEG file's bytes, unchanged).
Frames must be numbered 1, 2, 3, ... without gaps: frame number n is stored at index n - 1, which is
how the VISOR dense annotations index them. Finished files are skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import h5py
import numpy as np

from ldm.preprocessing.jobs import Job, configure_logging, run_jobs
from ldm.util import InputError

FRAME_PREFIX = "frame_"
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def find_videos(epic_root: Path) -> list[Path]:
    """Every `<participant>/rgb_frames/<video>` folder, sorted by video name."""
    return sorted((p for p in epic_root.glob("*/rgb_frames/*") if p.is_dir()), key=lambda p: p.name)


def numbered_frames(folder: Path) -> list[Path]:
    """The folder's frame_<n>.jpg files in frame order, checked to be numbered 1..N without gaps."""
    frames = sorted(folder.glob(f"{FRAME_PREFIX}*.jpg"))
    if not frames:
        raise InputError(f"{folder}: no {FRAME_PREFIX}*.jpg frames")
    for expected, frame in enumerate(frames, start=1):
        number = frame.stem[len(FRAME_PREFIX) :]
        if not number.isdigit():
            raise InputError(f"{frame}: frame name is not {FRAME_PREFIX}<digits>.jpg")
        if int(number) != expected:
            raise InputError(f"{folder}: missing {FRAME_PREFIX}{expected:010d}.jpg (frames must be 1..N)")
    return frames


def read_jpeg(path: Path) -> np.ndarray:
    """The file's bytes, checked to look like a complete JPEG."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if not data.startswith(JPEG_START) or JPEG_END not in data[-16:]:
        raise InputError(f"{path}: not a complete JPEG file (truncated or another format)")
    return np.frombuffer(data, np.uint8)


def write_video(folder: Path, tmp: Path) -> None:
    frames = numbered_frames(folder)
    with h5py.File(tmp, "w") as out:
        out.create_dataset("frame_numbers", data=np.arange(1, len(frames) + 1, dtype=np.int64))
        data = out.create_dataset("frames", (len(frames),), dtype=h5py.vlen_dtype(np.uint8))
        for index, frame in enumerate(frames):
            data[index] = read_jpeg(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("epic_root", type=Path, help="EPIC-KITCHENS root holding <participant>/rgb_frames/")
    parser.add_argument("out", type=Path, help="output folder (set EPIC_ROOT to it for training)")
    args = parser.parse_args(argv)
    configure_logging()
    videos = find_videos(args.epic_root)
    if not videos:
        print(f"error: {args.epic_root}: no <participant>/rgb_frames/<video>/ folders", file=sys.stderr)
        return 1
    jobs = [Job(v.name, args.out / f"{v.name}.hdf5", partial(write_video, v)) for v in videos]
    return run_jobs(jobs, desc="EPIC frames")


if __name__ == "__main__":
    sys.exit(main())
