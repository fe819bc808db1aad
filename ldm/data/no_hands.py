"""NoHands: VIDM's training samples, hands from one EPIC-KITCHENS clip masked over the frames of another.

Reads the VISOR HDF5 files of scripts/visor_to_hdf5.py (`visor_files`: a folder, a .txt list of
names joined to `data_root`, a list of names, or None for every file in `data_root`) and the EPIC
frame HDF5 files of scripts/epic_to_hdf5.py (`epic_hdf5_root`). A window is `num_frames` frames
`frame_skip` apart, so it spans (num_frames - 1) * frame_skip + 1 consecutive dense frames. A window
whose frames all show a hand and are all `consistent_with_gt` is a *hand* window; one whose frames
are all `gt_no_hands` and `consistent_with_gt` is a *background* window; the windows of the dataset
that `background_config` builds (EGO4D `Backgrounds`) join the backgrounds.

The items are the backgrounds (each repeated `no_hand_mult` times, followed by every hand window
used as a background too, when `with_hand_bg`). Item i takes background i and a random hand window.
With probability `hand_mask_rate` the hand window's hands (dilated by a mask_dilation square) are
masked in every frame, and the background's own (dilated) hands are blacked out in every frame,
the target included; the mask flags the hand region and, with `loss_mask_hand_bg`, the own hands of
the LAST frame in every frame, so own-hand pixels of earlier frames outside those are black but
not flagged. Otherwise the hand pixels are pasted onto the frames (`add_hands`) and the background
stays as recorded. With probability `random_mask_rate` LaMa-style random masks are added (one for
all frames with probability `same_random_mask_rate`, else one per frame), and everything is flipped
left-right with probability `flip_p`. An item is

    image        (size, size, 3) float32 in [-1, 1]: the background's last frame
    hand_images  (T, size, size, 3) float32 in [-1, 1], masked pixels -1; with `stack_frames`
                 (size, size, T * 3), the frames stacked on the channel axis
    mask         (T, size, size) float32, +1 masked, -1 kept
    loss_mask    mask_size (None: size x size) bool: False where the area-resized own hands of the
                 last frame cover a cell (with `loss_mask_hand_bg`; else True everywhere)

With `predict: true` the items are the hand windows themselves, their own hands masked with
probability hand_mask_rate, plus `video` and `frame_nums`.

Parameter names, meanings and defaults are the published dataset's. `chunk_size`, `aux_size` and
`black_hand` are accepted and, as there, have no effect; the two-frame diagnostics
(`diagnostic_mask`, `diagnostic_diff_frame`) and `frame_skip: exponential` are refused. `seed` is
this project's: a fixed seed makes item i always the same (reproducible validation and tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
from torch.utils.data import Dataset

from ldm.data.files import resolve_hdf5_files
from ldm.data.images import (
    centre_square_box,
    interpolation_flag,
    square_resize,
    square_rgb_frames,
    to_model_range,
)
from ldm.data.masks import RandomMasks
from ldm.data.visor import DENSE_SIZE, EPIC_SIZE, Raster, hand_polygons
from ldm.data.windows import frame_offsets, window_starts
from ldm.data.worker_state import WorkerState
from ldm.util import instantiate_from_config

DENSE_SUFFIX = "_interpolations"
UNSUPPORTED_DIAGNOSTICS = ("diagnostic_mask", "diagnostic_diff_frame")


@dataclass(frozen=True)
class VisorVideo:
    """One VISOR HDF5 file and the EPIC frame file its dense frames index."""

    name: str
    visor_path: Path
    epic_path: Path
    frame_nums: np.ndarray  # dense frame numbers; frame n is EPIC frame index n - 1
    hands: np.ndarray  # bool per dense frame: a hand is annotated


@dataclass(frozen=True)
class Sample:
    """A sample as pixels: uint8 images (masked context pixels 0) and bool masks, all (size, size)."""

    target: np.ndarray  # (S, S, 3): the background's last frame
    context: np.ndarray  # (T, S, S, 3)
    mask: np.ndarray  # (T, S, S): True where the model must fill in
    own_last: np.ndarray  # (S, S): the background's own (dilated) hands on its last frame

    def flipped(self) -> Sample:
        """Every array mirrored left-right."""
        return Sample(
            self.target[:, ::-1], self.context[:, :, ::-1], self.mask[:, :, ::-1], self.own_last[:, ::-1]
        )


def frame_flags(values: np.ndarray) -> np.ndarray:
    """A per-frame flag array as bool (N,); an (N, 2) per-hand array counts when both are set."""
    values = np.asarray(values)
    return (values.all(axis=1) if values.ndim == 2 else values).astype(bool)


def mask_hands(
    frames: np.ndarray, own_hands: np.ndarray, hand_region: np.ndarray, flag_own_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The background `frames` with its own hands blacked out in every frame, and the mask.

    The mask flags `hand_region` (T, S, S) and, with `flag_own_last`, the last frame's own hands in
    every frame; the own hands of other frames are black but not flagged.
    """
    blacked = np.where(own_hands[..., None], np.uint8(0), frames)
    mask = (hand_region | own_hands[-1]) if flag_own_last else hand_region.copy()
    return blacked, mask


def black_out(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`frames` (T, S, S, 3) uint8 with the masked pixels 0 (which the model range maps to -1)."""
    return np.where(mask[..., None], np.uint8(0), frames)


def load_visor_video(visor_path: Path, epic_root: Path) -> tuple[VisorVideo, np.ndarray, np.ndarray]:
    """The video and its per-frame (has consistent hands, has consistent no hands) flags."""
    name = visor_path.stem.removesuffix(DENSE_SUFFIX)
    epic_path = epic_root / f"{name}.hdf5"
    with h5py.File(visor_path, "r") as f:
        frame_nums = np.asarray(f["frame_nums"], dtype=np.int64)
        hands = np.asarray(f["hands"]).reshape(len(frame_nums), -1).any(axis=1)
        consistent = frame_flags(f["consistent_with_gt"])
        no_hands = frame_flags(f["gt_no_hands"]) & consistent
    if not epic_path.is_file():
        raise FileNotFoundError(
            f"{epic_path}: EPIC frames of {visor_path.name} not found (see epic_to_hdf5.py)"
        )
    with h5py.File(epic_path, "r") as f:
        count = len(f["frames"])
    if len(frame_nums) and (frame_nums.min() < 1 or frame_nums.max() > count):
        raise ValueError(
            f"{visor_path}: frame {frame_nums.max()} is beyond the {count} frames of {epic_path}"
        )
    return VisorVideo(name, visor_path, epic_path, frame_nums, hands), hands & consistent, no_hands


def window_table(number: int, starts: np.ndarray) -> np.ndarray:
    """(K, 2) rows of (file number, start index)."""
    return np.stack([np.full_like(starts, number), starts], axis=1)


class NoHands(Dataset):
    """Training (or, with predict, inference) samples for VIDM; see the module docstring."""

    def __init__(
        self,
        visor_files: str | Path | Sequence[str] | None,
        epic_hdf5_root: str | Path,
        data_root: str | Path | None = None,
        chunk_size: int = 0,
        size: int | None = None,
        aux_size: int | None = None,
        interpolation: str = "bicubic",
        flip_p: float = 0.5,
        frame_skip: int | str = 1,
        num_frames: int = 1,
        predict: bool = False,
        with_hand_bg: bool = False,
        loss_mask_hand_bg: bool = True,
        mask_size: Sequence[int] | None = None,
        black_hand: bool = False,
        background_config: Mapping[str, Any] | None = None,
        hand_mask_rate: float = 0.0,
        random_mask_rate: float = 0.0,
        mask_dilation: int = 7,
        same_random_mask_rate: float = 0.5,
        stack_frames: bool = True,
        no_hand_mult: int = 1,
        diagnostic_mask: bool = False,
        diagnostic_diff_frame: bool = False,
        add_hands: bool = True,
        seed: int | None = None,
    ):
        for flag, value in zip(
            UNSUPPORTED_DIAGNOSTICS, (diagnostic_mask, diagnostic_diff_frame), strict=True
        ):
            if value:
                raise ValueError(
                    f"NoHands: {flag} (a two-frame diagnostic of the published code) is not supported"
                )
        if mask_dilation % 2 == 0:
            raise ValueError(f"NoHands: mask_dilation must be odd, not {mask_dilation}")
        self.size = min(EPIC_SIZE) if size is None else int(size)
        self.mask_size = None if mask_size is None else tuple(int(s) for s in mask_size)
        self.interpolation = interpolation_flag(interpolation)
        self.flip_p = flip_p
        self.predict = predict
        self.loss_mask_hand_bg = loss_mask_hand_bg
        self.hand_mask_rate = hand_mask_rate
        self.random_mask_rate = random_mask_rate
        self.same_random_mask_rate = same_random_mask_rate
        self.stack_frames = stack_frames
        self.add_hands = add_hands
        self.offsets = frame_offsets(num_frames, frame_skip)
        self.kernel = np.ones((mask_dilation, mask_dilation), np.uint8) if mask_dilation > 1 else None
        self.raster = Raster.between(
            DENSE_SIZE, EPIC_SIZE, centre_square_box(*EPIC_SIZE), (self.size, self.size)
        )
        self.random_masks = RandomMasks()
        self.state = WorkerState(seed)
        self._index_visor(Path(epic_hdf5_root), resolve_hdf5_files(data_root, visor_files))
        self.background = None if background_config is None else instantiate_from_config(background_config)
        self._check_background()
        self.background_mult = no_hand_mult if with_hand_bg else 1
        self.hands_as_backgrounds = len(self.hand_windows) if with_hand_bg else 0
        self._check_not_empty(visor_files if visor_files is not None else data_root)

    def _index_visor(self, epic_root: Path, visor_paths: list[Path]) -> None:
        span = int(self.offsets[-1]) + 1
        self.videos: list[VisorVideo] = []
        hand_windows, backgrounds = [], []
        for number, path in enumerate(visor_paths):
            video, with_hands, no_hands = load_visor_video(path, epic_root)
            self.videos.append(video)
            hand_windows.append(window_table(number, window_starts(with_hands, span, video.frame_nums)))
            backgrounds.append(window_table(number, window_starts(no_hands, span, video.frame_nums)))
        self.hand_windows = np.concatenate(hand_windows)
        self.visor_backgrounds = np.concatenate(backgrounds)

    def _check_background(self) -> None:
        if self.background is not None and len(self.background.offsets) != len(self.offsets):
            raise ValueError(
                f"NoHands: background_config has {len(self.background.offsets)} frames a window, "
                f"NoHands {len(self.offsets)}"
            )

    def _check_not_empty(self, source: object) -> None:
        where = (
            f"{len(self.videos)} VISOR files of {source} (frame_skip x (num_frames - 1) = {self.offsets[-1]})"
        )
        if len(self.hand_windows) == 0:
            raise ValueError(f"NoHands: no hand windows in {where}")
        if not self.predict and len(self) == 0:
            raise ValueError(f"NoHands: no background windows in {where}")

    @property
    def num_backgrounds(self) -> int:
        """Distinct background windows: VISOR's plus those of `background_config`."""
        return len(self.visor_backgrounds) + (0 if self.background is None else len(self.background))

    def __len__(self) -> int:
        if self.predict:
            return len(self.hand_windows)
        return self.num_backgrounds * self.background_mult + self.hands_as_backgrounds

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"NoHands index {index} out of range ({len(self)} items)")
        if self.predict:
            return self._prediction_item(index)
        return self.to_item(self.sample(index))

    def sample(self, index: int) -> Sample:
        """Training item `index` as pixels (see the module docstring)."""
        rng = self.state.rng(index)
        frames, own_hands = self._background(index, rng)
        hand_window = self.hand_windows[rng.integers(len(self.hand_windows))]
        hands = self._hand_masks(*hand_window)
        if rng.random() < self.hand_mask_rate:
            frames, mask = mask_hands(frames, own_hands, self._dilate(hands), self.loss_mask_hand_bg)
            context = frames
        else:
            mask = np.zeros_like(hands)
            context = frames
            if self.add_hands:  # paste the hand window's hand pixels
                context = np.where(hands[..., None], self._visor_frames(*hand_window), frames)
        if rng.random() < self.random_mask_rate:
            mask = mask | self._random_masks(rng)
        sample = Sample(frames[-1], black_out(context, mask), mask, own_hands[-1])
        return sample.flipped() if rng.random() < self.flip_p else sample

    def _prediction_item(self, index: int) -> dict[str, Any]:
        number, start = self.hand_windows[index]
        frames = self._visor_frames(number, start)
        own_hands = self._dilate(self._hand_masks(number, start))
        mask = own_hands if self.state.rng(index).random() < self.hand_mask_rate else np.zeros_like(own_hands)
        video = self.videos[number]
        item = self.to_item(Sample(frames[-1], black_out(frames, mask), mask, own_hands[-1]))
        return item | {"video": video.name, "frame_nums": video.frame_nums[start + self.offsets]}

    def to_item(self, sample: Sample) -> dict[str, np.ndarray]:
        """The model's float format of a sample."""
        hand_images = to_model_range(sample.context)
        if self.stack_frames:
            hand_images = np.ascontiguousarray(hand_images.transpose(1, 2, 0, 3)).reshape(
                self.size, self.size, -1
            )
        return {
            "image": to_model_range(sample.target),
            "hand_images": hand_images,
            "mask": np.where(sample.mask, np.float32(1), np.float32(-1)),
            "loss_mask": self._loss_mask(sample.own_last),
        }

    def _loss_mask(self, own_last: np.ndarray) -> np.ndarray:
        """True on the cells (at mask_size) that no own hand of the last frame covers."""
        if not self.loss_mask_hand_bg:
            own_last = np.zeros_like(own_last)
        if self.mask_size is None:
            return ~own_last
        covered = cv2.resize(own_last.astype(np.float32), self.mask_size[::-1], interpolation=cv2.INTER_AREA)
        return ~(covered > 0)

    def _background(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Background `index`'s frames (T, S, S, 3) uint8 RGB and own-hand masks (T, S, S) bool, dilated."""
        shared = self.num_backgrounds * self.background_mult
        if index >= shared:
            return self._visor_background(*self.hand_windows[index - shared])
        index %= self.num_backgrounds
        if index < len(self.visor_backgrounds):
            return self._visor_background(*self.visor_backgrounds[index])
        frames = self.background.frames(index - len(self.visor_backgrounds), rng)
        if frames.shape[1:3] != (self.size, self.size):
            frames = np.stack([square_resize(f, self.size, self.interpolation) for f in frames])
        return frames, np.zeros(frames.shape[:3], bool)

    def _visor_background(self, number: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        return self._visor_frames(number, start), self._dilate(self._hand_masks(number, start))

    def _visor_frames(self, number: int, start: int) -> np.ndarray:
        """A window's EPIC frames, (T, S, S, 3) uint8 RGB."""
        video = self.videos[number]
        jpegs = self.state.file(video.epic_path)["frames"][video.frame_nums[start + self.offsets] - 1]
        return square_rgb_frames(jpegs, self.size, True, str(video.epic_path), self.interpolation)

    def _hand_masks(self, number: int, start: int) -> np.ndarray:
        """A window's hand polygons (both hands) rasterised at sample resolution, (T, S, S) bool.

        Frames that `hands` marks hand-free are not parsed (on ground-truth frames `hands` comes
        from the ground truth, which wins over the dense polygons).
        """
        video = self.videos[number]
        masks = np.zeros((len(self.offsets), self.size, self.size), np.uint8)
        frames = start + self.offsets
        with_hands = np.flatnonzero(video.hands[frames])
        if len(with_hands):
            entries = self.state.file(video.visor_path)["annotations"][frames[with_hands]]
            for t, entry in zip(with_hands, entries, strict=True):
                left, right = hand_polygons(json.loads(entry))
                self.raster.fill(left + right, out=masks[t])
        return masks.view(bool)

    def _dilate(self, masks: np.ndarray) -> np.ndarray:
        if self.kernel is None:
            return masks
        return np.stack([cv2.dilate(m.view(np.uint8), self.kernel) for m in masks]).astype(bool)

    def _random_masks(self, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.same_random_mask_rate:
            return np.broadcast_to(
                self.random_masks(rng, self.size), (len(self.offsets), self.size, self.size)
            )
        return np.stack([self.random_masks(rng, self.size) for _ in self.offsets])
