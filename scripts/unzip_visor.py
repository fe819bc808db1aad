#!/usr/bin/env python
"""Unzip the VISOR dense annotations in place.

VISOR distributes each video's dense interpolations as DIR/**/<video>_interpolations.zip. This
extracts every zip found under DIR next to itself (keeping the paths stored inside it), skipping zips
whose contents are already there, so a rerun resumes. Each member is written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
import zlib
from functools import partial
from pathlib import Path

from ldm.preprocessing.jobs import Job, configure_logging, run_jobs
from ldm.util import InputError, atomic_output


def members(archive: Path) -> list[zipfile.ZipInfo]:
    """The archive's files, checked to stay inside its folder."""
    try:
        with zipfile.ZipFile(archive) as z:
            infos = [info for info in z.infolist() if not info.is_dir()]
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{archive}: not a readable zip file ({err})") from None
    for info in infos:
        target = (archive.parent / info.filename).resolve()
        if not target.is_relative_to(archive.parent.resolve()):
            raise InputError(f"{archive}: member {info.filename!r} would land outside {archive.parent}")
    if not infos:
        raise InputError(f"{archive}: empty zip file")
    return infos


def extract(archive: Path, infos: list[zipfile.ZipInfo], tmp: Path) -> None:
    """Extract every member atomically, the last one to `tmp` (the job renames it when complete)."""
    try:
        with zipfile.ZipFile(archive) as z:
            for info in infos[:-1]:
                target = archive.parent / info.filename
                if not target.exists():
                    with atomic_output(target) as partial_target:
                        copy_member(z, info, partial_target)
            copy_member(z, infos[-1], tmp)
    except (OSError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{archive}: corrupt zip file ({err})") from None


def copy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    with z.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", type=Path, help="folder holding the VISOR *.zip files (searched recursively)")
    args = parser.parse_args(argv)
    configure_logging()
    archives = sorted(args.dir.rglob("*.zip"))
    if not archives:
        print(f"error: {args.dir}: no .zip files", file=sys.stderr)
        return 1
    jobs, errors = [], []
    for archive in archives:
        try:
            infos = members(archive)
        except InputError as err:
            errors.append((archive.name, err))
            continue
        last = archive.parent / infos[-1].filename
        jobs.append(Job(archive.name, last, partial(extract, archive, infos)))
    return run_jobs(jobs, desc="VISOR zips", errors=errors)


if __name__ == "__main__":
    sys.exit(main())
