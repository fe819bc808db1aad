"""What a factorisation run did, for a user of a cluster: frames written, skipped (already there) and
failed (with why), and each process's throughput; written as JSON beside the outputs and as one line."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ldm.util import atomic_output


@dataclass
class ProcessShare:
    """What one process did: its global rank and node, the frames it wrote, and the seconds from its
    first batch to its last write (decoding, sampling, blending and writing)."""

    rank: int
    node: int
    frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Failure:
    """A video that stopped being processed: the first error line, and how many of its frames that
    process then left unwritten."""

    video: str
    error: str
    frames_left: int


@dataclass
class RunSummary:
    frames: int
    """Frames of all the videos."""
    skipped: int
    """Frames already written when the run started."""
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    processes: list[ProcessShare] = field(default_factory=list)
    nodes: int = 1
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Frames left unwritten because of a failure."""
        return sum(failure.frames_left for failure in self.failures)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = self.failed
        for share, row in zip(self.processes, data["processes"], strict=True):
            row["frames_per_second"] = round(share.frames_per_second, 4)
        return data

    def write(self, path: Path) -> None:
        """The summary as JSON at `path`, written whole (through a temporary file) or not at all."""
        with atomic_output(path) as partial:
            partial.write_text(json.dumps(self.as_json(), indent=2) + "\n")

    def line(self) -> str:
        """The summary in one line."""
        text = f"{self.written} frames written, {self.skipped} skipped (already there), {self.failed} failed"
        text += f", in {format_seconds(self.seconds)}"
        if self.processes:
            per_process = sum(p.frames_per_second for p in self.processes) / len(self.processes)
            text += f" on {len(self.processes)} process(es), {self.nodes} node(s): {per_process:.3g} frames/s per process"
        return text


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


class Stopwatch:
    """Seconds since it was made."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
