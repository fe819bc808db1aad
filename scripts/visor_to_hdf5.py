#!/usr/bin/env python
"""Convert VISOR dense hand annotations into one HDF5 file per video, for training VIDM.

For every VISOR_ROOT/**/<video>_interpolations.json (dense, unzipped by scripts/unzip_visor.py) and
its sparse ground truth VISOR_ROOT/GroundTruth-SparseAnnotations/annotations/*/<video>.json, writes
OUT/<video>_interpolations.hdf5 with:

  annotations         vlen str    one JSON entry per dense frame, in frame order
  frame_nums          int64 (N,)  the dense frame numbers (n indexes EPIC frame n - 1)
  hands               bool (N,2)  left / right hand present, rasterised at 456x256, from the sparse
                                  ground truth on frames that have one, else from the dense polygons
  gt_no_hands         int64 (N,)  1 on every frame between two consecutive ground-truth frames that
                                  both have no hands (ends included)
  consistent_with_gt  int64 (N,)  1 on every frame between two consecutive ground-truth frames when
                                  the (left, right) presence is the same on every frame of the span
  sparse_annotations  vlen str    one JSON entry per ground-truth frame
  sparse_frame_nums   int64       their frame numbers (`saprse_frame_nums`, the published spelling,
                                  is a hard link to the same data)

EPIC_ROOT is the raw EPIC-KITCHENS tree: every dense frame must exist as
<participant>/rgb_frames/<video>/frame_<n>.jpg. Work is split between processes by a stable hash of
each file's path relative to VISOR_ROOT (plus --salt) modulo --num-threads; run one process per
--thread-num. Finished files are skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ldm.data.visor import (
    DENSE_SIZE,
    EPIC_SIZE,
    SPARSE_SIZE,
    Raster,
    dense_frame_number,
    hands_present,
    sparse_frame_number,
)
from ldm.preprocessing.jobs import Job, configure_logging, read_json, run_jobs, shard_of
from ldm.util import InputError

DENSE_SUFFIX = "_interpolations"
SPARSE_DIR = "GroundTruth-SparseAnnotations"
MISSPELT_SPARSE_FRAME_NUMS = "saprse_frame_nums"

Entries = dict[int, dict[str, Any]]


def load_entries(path: Path, frame_number: Callable[[dict[str, Any]], int]) -> Entries:
    """A VISOR JSON file's `video_annotations`, keyed by frame number, in frame order."""
    content = read_json(path)
    try:
        entries = content["video_annotations"]
        keyed = {frame_number(entry): entry for entry in entries}
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a VISOR annotation file ({err})") from None
    if len(keyed) != len(entries):
        raise InputError(f"{path}: the same frame is annotated twice")
    return dict(sorted(keyed.items()))


def check_epic_frames(epic_root: Path, video: str, frame_nums: np.ndarray, source: Path) -> None:
    folder = epic_root / video.split("_")[0] / "rgb_frames" / video
    try:
        names = set(os.listdir(folder))
    except OSError:
        raise InputError(f"{folder}: EPIC frames folder missing (needed by {source.name})") from None
    for number in frame_nums:
        if f"frame_{number:010d}.jpg" not in names:
            raise InputError(f"{folder}: missing frame_{number:010d}.jpg (needed by {source.name})")


def presence(entries: Iterable[dict[str, Any]], src_size: tuple[int, int]) -> np.ndarray:
    """(N, 2) left/right hand presence of each entry, rasterised at EPIC resolution."""
    raster = Raster.between(src_size, EPIC_SIZE)
    return np.array([hands_present(entry, raster) for entry in entries], dtype=bool).reshape(-1, 2)


def ground_truth_flags(
    frame_nums: np.ndarray, hands: np.ndarray, gt_nums: np.ndarray, gt_hands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`gt_no_hands` and `consistent_with_gt` over the dense frames (see the module docstring)."""
    gt_no_hands = np.zeros(len(frame_nums), np.int64)
    consistent = np.zeros(len(frame_nums), np.int64)
    for a in range(len(gt_nums) - 1):
        span = (frame_nums >= gt_nums[a]) & (frame_nums <= gt_nums[a + 1])
        rows = np.concatenate([gt_hands[a : a + 2], hands[span]])
        if not gt_hands[a : a + 2].any():
            gt_no_hands[span] = 1
        if (rows == rows[0]).all():
            consistent[span] = 1
    return gt_no_hands, consistent


def write_visor(dense_path: Path, sparse_path: Path | None, epic_root: Path, tmp: Path) -> None:
    video = dense_path.stem.removesuffix(DENSE_SUFFIX)
    if sparse_path is None:
        raise InputError(f"{dense_path}: no ground truth {SPARSE_DIR}/annotations/*/{video}.json")
    dense = load_entries(dense_path, dense_frame_number)
    sparse = load_entries(sparse_path, sparse_frame_number)
    if not dense:
        raise InputError(f"{dense_path}: no annotated frames")
    frame_nums = np.fromiter(dense, np.int64, len(dense))
    check_epic_frames(epic_root, video, frame_nums, dense_path)
    gt_nums = np.fromiter(sparse, np.int64, len(sparse))
    gt_hands = presence(sparse.values(), SPARSE_SIZE)
    hands = presence(dense.values(), DENSE_SIZE)
    in_dense, at = np.isin(gt_nums, frame_nums), np.searchsorted(frame_nums, gt_nums)
    hands[at[in_dense]] = gt_hands[in_dense]
    gt_no_hands, consistent = ground_truth_flags(frame_nums, hands, gt_nums, gt_hands)
    text = h5py.string_dtype()
    with h5py.File(tmp, "w") as out:
        out.create_dataset("annotations", data=[json.dumps(e) for e in dense.values()], dtype=text)
        out.create_dataset("hands", data=hands)
        out.create_dataset("gt_no_hands", data=gt_no_hands)
        out.create_dataset("consistent_with_gt", data=consistent)
        out.create_dataset("frame_nums", data=frame_nums)
        out.create_dataset("sparse_annotations", data=[json.dumps(e) for e in sparse.values()], dtype=text)
        out.create_dataset("sparse_frame_nums", data=gt_nums)
        out[MISSPELT_SPARSE_FRAME_NUMS] = out["sparse_frame_nums"]


def dense_files(visor_root: Path) -> list[Path]:
    return sorted(visor_root.rglob(f"*{DENSE_SUFFIX}.json"))


def sparse_files(visor_root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((visor_root / SPARSE_DIR).rglob("*.json"))}


def make_job(dense_path: Path, sparse: dict[str, Path], epic_root: Path, out: Path) -> Job:
    video = dense_path.stem.removesuffix(DENSE_SUFFIX)
    write = partial(write_visor, dense_path, sparse.get(video), epic_root)
    return Job(video, out / f"{dense_path.stem}.hdf5", write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("epic_root", type=Path, help="raw EPIC-KITCHENS root (<participant>/rgb_frames/)")
    parser.add_argument("visor_root", type=Path, help=f"VISOR root holding {SPARSE_DIR}/ and the dense JSON")
    parser.add_argument("out", type=Path, help="output folder (set DATA_LOCATION to it for training)")
    parser.add_argument("--num-threads", type=int, default=1, help="number of processes sharing the work")
    parser.add_argument("--thread-num", type=int, default=0, help="this process's share, 0..num-threads-1")
    parser.add_argument("--salt", default="", help="changes which process gets which file")
    args = parser.parse_args(argv)
    if not 0 <= args.thread_num < args.num_threads:
        parser.error(f"--thread-num {args.thread_num} must be in 0..{args.num_threads - 1}")
    configure_logging()
    dense = dense_files(args.visor_root)
    if not dense:
        print(
            f"error: {args.visor_root}: no *{DENSE_SUFFIX}.json (unzip them with scripts/unzip_visor.py)",
            file=sys.stderr,
        )
        return 1
    sparse = sparse_files(args.visor_root)
    mine = [
        p
        for p in dense
        if shard_of(p.relative_to(args.visor_root).as_posix(), args.num_threads, args.salt) == args.thread_num
    ]
    jobs = [make_job(p, sparse, args.epic_root, args.out) for p in mine]
    return run_jobs(jobs, desc=f"VISOR {args.thread_num + 1}/{args.num_threads}")


if __name__ == "__main__":
    sys.exit(main())
