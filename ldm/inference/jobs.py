"""A factorisation job (frames or video, masks, output folder): checks, context frames, what is left
to do, and its output folder.

OUT/masks/%05d.png        dilated hand mask at the input size (0/255)
OUT/agent/%05d.png        RGBA: the hand pixels, with the mask as alpha
OUT/environment/%05d.png  hands inpainted; outside the mask exactly the input
OUT/environment.mp4       the environment frames as a video
OUT/preview.mp4           input | environment, side by side

Each image is written atomically and `environment` last, so a frame whose three images exist is finished.
Every frame's noise is seeded from (seed, the video's key, its number): the key comes from the video's
files (`video_key`), so a video gives the same pixels alone, in any line of a list, or moved.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ldm.inference.images import IMAGE_SUFFIXES, check_mask_header, list_images, write_image_atomic
from ldm.inference.video import FrameFolder, VideoFile, open_frames, write_mp4
from ldm.util import InputError

log = logging.getLogger(__name__)

CONTEXT_FRAMES = 3
DEFAULT_FPS = 30.0
KEY_BYTES = 1 << 20
"""How much of a video's first file its key reads."""

Plan = tuple[int, list[int]]
"""(job number, ascending frame indices of one batch)."""


def context_indices(index: int, frame_skip: int) -> list[int]:
    """Frames t-3k, t-2k, t-k for target t (clamped at the first frame), oldest first."""
    return [max(index - j * frame_skip, 0) for j in range(CONTEXT_FRAMES, 0, -1)]


def needed_frames(targets: list[int], frame_skip: int) -> set[int]:
    """The targets and all their context frames."""
    return set(targets).union(*(context_indices(t, frame_skip) for t in targets))


def plan_batches(todo: Sequence[list[int]], batch_size: int) -> list[Plan]:
    """Split each job's frames to do into consecutive batches."""
    return [
        (job_number, list(indices[start : start + batch_size]))
        for job_number, indices in enumerate(todo)
        for start in range(0, len(indices), batch_size)
    ]


def process_share(plan: Sequence[Plan], rank: int, processes: int) -> list[Plan]:
    """The rank-th of `processes` consecutive, nearly equal parts of the plan. Consecutive, so that a
    process decodes a video only up to the end of its own part of it (a video is read from its start),
    and a list of videos is mostly shared out whole."""
    return list(plan[rank * len(plan) // processes : (rank + 1) * len(plan) // processes])


def video_key(frames: FrameFolder | VideoFile) -> int:
    """A number that belongs to the video, whatever its path or its place in a list: a digest of the
    first MiB of its first frame's file and the name and size of every frame file (a frames folder),
    or of the first MiB and the size of the video file."""
    if isinstance(frames, FrameFolder):
        first, listing = frames.files[0], [f"{p.name}:{p.stat().st_size}" for p in frames.files]
    else:
        first, listing = frames.path, [str(frames.path.stat().st_size)]
    digest = hashlib.sha256()
    with open(first, "rb") as file:
        digest.update(file.read(KEY_BYTES))
    digest.update("\n".join(listing).encode())
    return int.from_bytes(digest.digest()[:8], "little")


@dataclass
class FactorizeJob:
    frames: FrameFolder | VideoFile
    masks: list[Path]
    out: Path
    fps: float
    key: int
    """`video_key`: seeds the noise of the video's frames."""

    @classmethod
    def open(cls, source: Path, masks: Path, out: Path, fps: float | None = None) -> FactorizeJob:
        """Open a frames folder or video and its masks folder; their counts must agree."""
        frames = open_frames(source)
        mask_files = list_images(masks, IMAGE_SUFFIXES, "masks")
        if len(mask_files) != len(frames):
            raise InputError(f"{masks}: {len(mask_files)} masks, but {source} has {len(frames)} frames")
        return cls(frames, mask_files, out, fps or frames.fps or DEFAULT_FPS, video_key(frames))

    def __len__(self) -> int:
        return len(self.frames)

    def todo(self) -> list[int]:
        """Frames whose outputs are not all written yet."""
        done = finished_frames(self.out)
        return [index for index in range(len(self)) if index not in done]

    def check_headers(self, indices: set[int]) -> None:
        """Fail on a frame or mask of `indices` whose header is wrong (not an image, wrong channels or
        size) before anything is written, without decoding pixels: the one decode pass, which checks
        the pixels, is the streaming pass that uses them."""
        for index in tqdm(
            sorted(indices), desc=f"checking {self.frames.path.name}", leave=False, disable=None
        ):
            if isinstance(self.frames, FrameFolder):
                self.frames.check_header(index)
            check_mask_header(self.masks[index])


def read_job_list(path: Path) -> list[tuple[Path, Path, Path]]:
    """(source, masks, out) per line of a list file: 'SOURCE MASKS OUT', shell quoting, '#' comments.

    Relative paths are relative to the list file's folder.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such list file")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as err:
            raise InputError(f"{path}:{number}: {err}") from None
        if not fields:
            continue
        if len(fields) != 3:
            raise InputError(f"{path}:{number}: expected 'SOURCE MASKS OUT', got {len(fields)} fields")
        source, masks, out = (path.parent / field for field in fields)
        jobs.append((source, masks, out))
    if not jobs:
        raise InputError(f"{path}: the list names no videos")
    return jobs


# --------------------------------------------------------------------------------- output folder

LAYERS = ("masks", "agent", "environment")
VIDEOS = ("environment.mp4", "preview.mp4")


def layer_path(out: Path, layer: str, index: int) -> Path:
    return out / layer / f"{index:05d}.png"


def finished_frames(out: Path) -> set[int]:
    """Indices of the frames whose three layers are all written."""
    per_layer = []
    for layer in LAYERS:
        folder = out / layer
        names = (p.stem for p in folder.glob("*.png")) if folder.is_dir() else ()
        per_layer.append({int(name) for name in names if name.isdigit()})
    return set.intersection(*per_layer)


def agent_layer(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA (H,W,4): the frame's pixels under the bool mask, the mask as alpha, transparent black elsewhere."""
    alpha = mask.astype(np.uint8) * np.uint8(255)
    return np.dstack([frame * mask[..., None], alpha])


def write_frame_layers(
    out: Path, index: int, frame: np.ndarray, mask: np.ndarray, environment: np.ndarray
) -> None:
    """Write the mask, agent and environment images of one frame (environment last)."""
    for layer in LAYERS:
        (out / layer).mkdir(parents=True, exist_ok=True)
    write_image_atomic(layer_path(out, "masks", index), mask.astype(np.uint8) * np.uint8(255))
    write_image_atomic(layer_path(out, "agent", index), agent_layer(frame, mask))
    write_image_atomic(layer_path(out, "environment", index), environment)


def _read_rgb(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise OSError(f"{path}: cannot read an output frame")
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _environment_frames(out: Path, count: int) -> Iterator[np.ndarray]:
    for index in range(count):
        yield _read_rgb(layer_path(out, "environment", index))


def _preview_frames(out: Path, count: int) -> Iterator[np.ndarray]:
    """input | environment; the input is rebuilt from the agent layer over the environment."""
    for index in range(count):
        environment = _read_rgb(layer_path(out, "environment", index))
        agent = _read_rgb(layer_path(out, "agent", index), cv2.IMREAD_UNCHANGED)
        frame = np.where(agent[..., 3:] > 0, agent[..., :3], environment)
        yield np.hstack([frame, environment])


def _newest_layer_time(out: Path, count: int) -> int:
    return max(layer_path(out, layer, index).stat().st_mtime_ns for layer in LAYERS for index in range(count))


def assemble_videos(out: Path, count: int, fps: float) -> list[Path]:
    """(Re)write environment.mp4 and preview.mp4 when frames 0..count-1 are all finished and a video is
    missing or older than a frame; returns the videos written."""
    missing = set(range(count)) - finished_frames(out)
    if missing:
        log.warning("%s: %d of %d frames are not finished; videos not assembled", out, len(missing), count)
        return []
    newest = _newest_layer_time(out, count)
    makers = {"environment.mp4": _environment_frames, "preview.mp4": _preview_frames}
    written = []
    for name in VIDEOS:
        path = out / name
        if path.is_file() and path.stat().st_mtime_ns >= newest:
            continue
        write_mp4(makers[name](out, count), path, fps)
        written.append(path)
        log.info("wrote %s (%d frames)", path, count)
    return written
