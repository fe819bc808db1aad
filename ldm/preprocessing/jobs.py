"""What every preprocessing script shares: atomic outputs, resumable batches, sharding, error lines."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ldm.util import InputError, atomic_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One output file and the function that writes it (given a temporary path)."""

    name: str
    output: Path
    write: Callable[[Path], None]


def run_jobs(jobs: Sequence[Job], desc: str, errors: Sequence[tuple[str, InputError]] = ()) -> int:
    """Write every job's output that does not exist yet; log one line per failure and a summary.

    `errors` are (name, error) of inputs that failed before a job could be made. Returns the exit
    code: 0 when nothing failed, 1 otherwise.
    """
    written = skipped = 0
    failed: list[str] = []
    for name, err in errors:
        log.error("error: %s", err)
        failed.append(name)
    with logging_redirect_tqdm():
        for job in tqdm(jobs, desc=desc, unit="file"):
            if job.output.exists():
                skipped += 1
                continue
            try:
                with atomic_output(job.output) as tmp:
                    job.write(tmp)
            except InputError as err:
                log.error("error: %s", err)
                failed.append(job.name)
                continue
            written += 1
    log.info("%s: %d written, %d skipped (already done), %d failed", desc, written, skipped, len(failed))
    if failed:
        log.info("failed: %s", ", ".join(failed))
    return 1 if failed else 0


def shard_of(key: str, num_shards: int, salt: str = "") -> int:
    """A stable shard number in [0, num_shards) for `key` (same on every machine and run)."""
    digest = hashlib.md5((salt + key).encode()).digest()
    return int.from_bytes(digest[:8], "little") % num_shards


def configure_logging() -> None:
    """Plain message lines on stderr, as every preprocessing command prints them."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def read_json(path: Path) -> Any:
    """A JSON file's content; unreadable or corrupt files raise InputError."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: corrupt JSON ({err.msg} at line {err.lineno})") from None


def read_id_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a text file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read list ({err.strerror})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write one entry a line, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    """Raise InputError naming the first of `paths` that exists, unless `force`."""
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: exists; pass --force to replace it")
