"""The factorisation's output folder: per-frame layers, what is already done, and the assembled videos.

OUT/masks/%05d.png        dilated hand mask at the input size (0/255)
OUT/agent/%05d.png        RGBA: the hand pixels, with the mask as alpha
OUT/environment/%05d.png  hands inpainted; outside the mask exactly the input
OUT/environment.mp4       the environment frames as a video
OUT/preview.mp4           input | environment, side by side

Each image is written atomically and `environment` last, so a frame whose three images exist is finished.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ldm.inference.images import write_image_atomic
from ldm.inference.video import write_mp4

log = logging.getLogger(__name__)

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
