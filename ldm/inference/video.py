"""Frame sources streamed one frame at a time (a folder of images or a video file) and mp4 writing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from ldm.inference.images import IMAGE_SUFFIXES, frame_header, list_images, read_frame
from ldm.util import InputError, first_line

_VIDEO_ERRORS = (OSError, RuntimeError, ValueError, IndexError)


class FrameFolder:
    """The images of a folder in natural order, all of one size."""

    fps: float | None = None

    def __init__(self, folder: Path):
        self.path = folder
        self.files = list_images(folder, IMAGE_SUFFIXES, "frames")
        self.size = frame_header(self.files[0])

    def __len__(self) -> int:
        return len(self.files)

    def check_header(self, index: int) -> None:
        """Fail on frame `index` if its header says it is not an RGB image of the first frame's size."""
        self._check_size(frame_header(self.files[index]), self.files[index])

    def frames(self, wanted: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, RGB frame) for the wanted indices, in order; each image is checked as it is read."""
        for index in sorted(set(wanted)):
            path = self.files[index]
            frame = read_frame(path)
            self._check_size(frame.shape[:2], path)
            yield index, frame

    def _check_size(self, size: tuple[int, ...], path: Path) -> None:
        if size != self.size:
            raise InputError(
                f"{path}: frame is {size[1]}x{size[0]}, but {self.files[0].name} "
                f"is {self.size[1]}x{self.size[0]}"
            )


class VideoFile:
    """A video read through imageio-ffmpeg, decoded as it streams."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise InputError(f"{path}: no such video file")
        self.path = path
        try:
            reader = imageio.get_reader(path, format="FFMPEG")
            try:
                meta = reader.get_meta_data()
                count = reader.count_frames()
            finally:
                reader.close()
        except _VIDEO_ERRORS as err:
            raise InputError(f"{path}: not a readable video ({first_line(err)})") from None
        if count == 0:
            raise InputError(f"{path}: the video has no frames")
        self.count = count
        self.fps = float(meta["fps"]) if meta.get("fps") else None
        self.size = tuple(meta["size"][::-1])

    def __len__(self) -> int:
        return self.count

    def frames(self, wanted: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, RGB frame) for the wanted indices, in order (every frame up to the last is decoded)."""
        wanted = set(wanted)
        last = max(wanted, default=-1)
        reader = imageio.get_reader(self.path, format="FFMPEG")
        index = -1
        try:
            for index, frame in enumerate(reader):
                if index in wanted:
                    yield index, np.asarray(frame)
                if index >= last:
                    return
        except _VIDEO_ERRORS as err:
            raise InputError(
                f"{self.path}: decoding failed after frame {index} ({first_line(err)})"
            ) from None
        finally:
            reader.close()
        raise InputError(f"{self.path}: the video ended after {index + 1} frames, expected {self.count}")


def open_frames(source: Path) -> FrameFolder | VideoFile:
    """A folder of frames or a video file."""
    if source.is_dir():
        return FrameFolder(source)
    if source.is_file():
        return VideoFile(source)
    raise InputError(f"{source}: no such folder or video file")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one edge pixel (H.264 in yuv420p needs even sizes)."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float) -> None:
    """Encode RGB frames as H.264 into `path`, through a temporary file so `path` is complete or absent."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = imageio.get_writer(
        tmp,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        quality=8,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(_even(frame))
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
