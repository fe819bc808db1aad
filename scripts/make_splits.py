#!/usr/bin/env python
"""Split the VISOR videos into VIDM's training and validation lists.

Lists every dense annotation file (<video>_interpolations.json or .zip) under DENSE_DIR (VISOR's
Interpolations-DenseAnnotations, train/ and val/ alike) and writes the matching HDF5 names that
scripts/visor_to_hdf5.py produces (<video>_interpolations.hdf5) to OUT_DIR/no_hands_val.txt when the
video is one of the published validation videos, else to OUT_DIR/no_hands_train.txt.

The repository ships the published lists (data/no_hands_train.txt and data/no_hands_val.txt, 146 and
12 files): you need this script only for another VISOR release. It never replaces existing lists
unless --force.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ldm.preprocessing.jobs import configure_logging, refuse_overwrite, write_lines
from ldm.util import InputError

log = logging.getLogger("make_splits")

VALIDATION_VIDEOS = (
    "P37_102", "P35_105", "P07_103", "P05_08", "P37_101", "P37_103",
    "P07_101", "P07_08", "P05_01", "P35_109", "P07_110", "P29_04",
)  # fmt: skip
DENSE_SUFFIX = "_interpolations"


def dense_videos(dense_dir: Path) -> list[str]:
    """Sorted video ids that have a dense annotation file (JSON or still zipped)."""
    files = [*dense_dir.rglob(f"*{DENSE_SUFFIX}.json"), *dense_dir.rglob(f"*{DENSE_SUFFIX}.zip")]
    return sorted({p.stem.removesuffix(DENSE_SUFFIX) for p in files})


def split(videos: list[str], validation: tuple[str, ...] = VALIDATION_VIDEOS) -> tuple[list[str], list[str]]:
    """(training, validation) HDF5 file names."""
    names = {video: f"{video}{DENSE_SUFFIX}.hdf5" for video in videos}
    return (
        [names[v] for v in videos if v not in validation],
        [names[v] for v in videos if v in validation],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dense_dir", type=Path, help="VISOR Interpolations-DenseAnnotations folder")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the two lists go")
    parser.add_argument("--force", action="store_true", help="replace the lists if they exist")
    args = parser.parse_args(argv)
    configure_logging()
    train_list, val_list = args.out_dir / "no_hands_train.txt", args.out_dir / "no_hands_val.txt"
    try:
        refuse_overwrite([train_list, val_list], args.force)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    videos = dense_videos(args.dense_dir)
    if not videos:
        print(f"error: {args.dense_dir}: no *{DENSE_SUFFIX}.json or .zip files", file=sys.stderr)
        return 1
    train, val = split(videos)
    missing = sorted(set(VALIDATION_VIDEOS) - set(videos))
    if missing:
        log.warning("validation videos without dense annotations: %s", ", ".join(missing))
    write_lines(train_list, train)
    write_lines(val_list, val)
    log.info("%s: %d training and %d validation videos", args.out_dir, len(train), len(val))
    return 0


if __name__ == "__main__":
    sys.exit(main())
