"""NoHands: VIDM's training samples, hands from one EPIC-KITCHENS clip masked over the frames of another.

Reads the VISOR HDF5 files of scripts/visor_to_hdf5.py (visor_root) and the EPIC frame HDF5 files of
scripts/epic_to_hdf5.py (epic_root). A window is `num_frames` frames `frame_skip` apart, so it spans
(num_frames - 1) * frame_skip + 1 consecutive dense frames. A window whose frames all show a hand
and are all `consistent_with_gt` is a *hand* window; one whose frames are all `gt_no_hands` is a
*background* window; EGO4D windows from `backgrounds` join the backgrounds.

The dataset's items are the backgrounds (each repeated `no_hand_mult` times, followed by every
hand window used as a background too, when `with_hand_bg`). Item i takes background i and the hand
masks of a random hand window (dilated by a mask_dilation x mask_dilation square) and yields

    image        (size, size, 3) float32 in [-1, 1]: the background's last frame
    hand_images  (T, size, size, 3) float32 in [-1, 1]: every background frame, masked pixels -1
    mask         (T, size, size) float32, +1 masked, -1 kept
    loss_mask    mask_size bool: False where the background's own hands cover the last frame

The mask of frame t is the hand window's frame-t hands (with probability hand_mask_rate; otherwise
those hand pixels are pasted onto the frame instead) plus the background's own (dilated) hands on
frame t, plus, with probability random_mask_rate, LaMa-style random masks (one for all frames with
probability same_random_mask_rate, else one per frame). All outputs are flipped left-right
together with probability flip_rate. With `predict: true` the items are the hand windows
themselves, their own hands masked, plus `video` and `frame_nums`.
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
from ldm.data.images import centre_square, square_rgb_frames, to_model_range
from ldm.data.masks import RandomMasks
from ldm.data.windows import frame_offsets, window_starts
from ldm.data.worker_state import WorkerState
from ldm.util import instantiate_from_config
from ldm.utils.visor_utils import DENSE_SIZE, EPIC_SIZE, Raster, hand_polygons

DENSE_SUFFIX = "_interpolations"


@dataclass(frozen=True)
class VisorVideo:
    """One VISOR HDF5 file and the EPIC frame file its dense frames index."""

    name: str
    visor_path: Path
    epic_path: Path
    frame_nums: np.ndarray  # dense frame numbers; frame n is EPIC frame index n - 1
    hands: np.ndarray  # bool per dense frame: a hand is annotated


def frame_flags(values: np.ndarray) -> np.ndarray:
    """A per-frame flag array as bool (N,); an (N, 2) per-hand array counts when both are set."""
    values = np.asarray(values)
    return (values.all(axis=1) if values.ndim == 2 else values).astype(bool)


def load_visor_video(visor_path: Path, epic_root: Path) -> tuple[VisorVideo, np.ndarray, np.ndarray]:
    """The video and its per-frame (has consistent hands, has no hands) flags."""
    name = visor_path.stem.removesuffix(DENSE_SUFFIX)
    epic_path = epic_root / f"{name}.hdf5"
    with h5py.File(visor_path, "r") as f:
        frame_nums = np.asarray(f["frame_nums"], dtype=np.int64)
        hands = np.asarray(f["hands"]).reshape(len(frame_nums), -1).any(axis=1)
        with_hands = hands & frame_flags(f["consistent_with_gt"])
        no_hands = frame_flags(f["gt_no_hands"])
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
    return VisorVideo(name, visor_path, epic_path, frame_nums, hands), with_hands, no_hands


def window_table(number: int, starts: np.ndarray) -> np.ndarray:
    """(K, 2) rows of (file number, start index)."""
    return np.stack([np.full_like(starts, number), starts], axis=1)


class NoHands(Dataset):
    """Training (or, with predict, inference) samples for VIDM; see the module docstring."""

    def __init__(
        self,
        epic_root: str | Path,
        visor_root: str | Path,
        visor_files: str | Path | Sequence[str] | None = None,
        frame_skip: int = 36,
        num_frames: int = 4,
        size: int = 256,
        mask_size: Sequence[int] = (64, 64),
        hand_mask_rate: float = 1.0,
        random_mask_rate: float = 0.5,
        same_random_mask_rate: float = 0.25,
        with_hand_bg: bool = True,
        no_hand_mult: int = 8,
        stack_frames: bool = False,
        backgrounds: Sequence[Mapping[str, Any]] = (),
        predict: bool = False,
        mask_dilation: int = 7,
        flip_rate: float = 0.5,
        seed: int | None = None,
    ):
        if stack_frames:
            raise ValueError("NoHands: stack_frames: true is not supported (the official config uses false)")
        self.size = size
        self.mask_size = tuple(int(s) for s in mask_size)
        self.hand_mask_rate = hand_mask_rate
        self.random_mask_rate = random_mask_rate
        self.same_random_mask_rate = same_random_mask_rate
        self.predict = predict
        self.flip_rate = flip_rate
        self.offsets = frame_offsets(num_frames, frame_skip)
        self.kernel = np.ones((mask_dilation, mask_dilation), np.uint8) if mask_dilation > 1 else None
        self.raster = Raster.between(DENSE_SIZE, EPIC_SIZE, centre_square(*EPIC_SIZE), (size, size))
        self.random_masks = RandomMasks()
        self.state = WorkerState(seed)
        self._index_visor(Path(epic_root), resolve_hdf5_files(visor_root, visor_files))
        self.sources = [instantiate_from_config(node) for node in backgrounds or ()]
        for source in self.sources:
            if source.size != size:
                raise ValueError(f"NoHands: a background source has size {source.size}, the dataset {size}")
        self.source_ends = np.cumsum([len(self.visor_backgrounds)] + [len(s) for s in self.sources])
        self.background_mult = no_hand_mult if with_hand_bg else 1
        self.hands_as_backgrounds = len(self.hand_windows) if with_hand_bg else 0
        self._check_not_empty(visor_root)

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

    def _check_not_empty(self, visor_root: str | Path) -> None:
        where = f"{len(self.videos)} VISOR files in {visor_root} (frame_skip x (num_frames - 1) = {self.offsets[-1]})"
        if len(self.hand_windows) == 0:
            raise ValueError(f"NoHands: no hand windows in {where}")
        if not self.predict and len(self) == 0:
            raise ValueError(f"NoHands: no background windows in {where}")

    @property
    def num_backgrounds(self) -> int:
        """Distinct background windows: VISOR's plus every source's."""
        return int(self.source_ends[-1])

    def __len__(self) -> int:
        if self.predict:
            return len(self.hand_windows)
        return self.num_backgrounds * self.background_mult + self.hands_as_backgrounds

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"NoHands index {index} out of range ({len(self)} items)")
        if self.predict:
            return self._prediction_item(index)
        rng = self.state.rng(index)
        frames, own_hands = self._background(index)
        hand_number = rng.integers(len(self.hand_windows))
        hands = self._hand_masks(*self.hand_windows[hand_number])
        context = frames
        if rng.random() < self.hand_mask_rate:
            masked = self._dilate(hands) | own_hands
        else:
            hand_frames = self._visor_frames(*self.hand_windows[hand_number])
            context = np.where(hands[..., None], hand_frames, frames)
            masked = own_hands.copy()
        if rng.random() < self.random_mask_rate:
            masked |= self._random_masks(rng)
        flip = rng.random() < self.flip_rate
        return self._item(frames[-1], context, masked, own_hands[-1], flip)

    def _prediction_item(self, index: int) -> dict[str, Any]:
        number, start = self.hand_windows[index]
        frames = self._visor_frames(number, start)
        own_hands = self._dilate(self._hand_masks(number, start))
        video = self.videos[number]
        item = self._item(frames[-1], frames, own_hands, own_hands[-1], flip=False)
        return item | {"video": video.name, "frame_nums": video.frame_nums[start + self.offsets]}

    def _item(
        self, image: np.ndarray, context: np.ndarray, masked: np.ndarray, own_last: np.ndarray, flip: bool
    ) -> dict[str, np.ndarray]:
        """The float sample from uint8 frames and bool masks (flipped left-right if asked)."""
        if flip:
            image, context, masked, own_last = (
                image[:, ::-1],
                context[:, :, ::-1],
                masked[:, :, ::-1],
                own_last[:, ::-1],
            )
        context = np.where(masked[..., None], np.uint8(0), context)  # 0 becomes exactly -1
        covered = cv2.resize(own_last.astype(np.float32), self.mask_size[::-1], interpolation=cv2.INTER_AREA)
        return {
            "image": to_model_range(image),
            "hand_images": to_model_range(context),
            "mask": np.where(masked, np.float32(1), np.float32(-1)),
            "loss_mask": ~(covered > 0),
        }

    def _background(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Background `index`'s frames (T, S, S, 3) uint8 RGB and own-hand masks (T, S, S) bool, dilated."""
        shared = self.num_backgrounds * self.background_mult
        if index >= shared:
            return self._visor_background(*self.hand_windows[index - shared])
        index %= self.num_backgrounds
        if index < len(self.visor_backgrounds):
            return self._visor_background(*self.visor_backgrounds[index])
        source = int(np.searchsorted(self.source_ends, index, side="right")) - 1
        frames = self.sources[source].frames(index - int(self.source_ends[source]))
        return frames, np.zeros(frames.shape[:3], bool)

    def _visor_background(self, number: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        return self._visor_frames(number, start), self._dilate(self._hand_masks(number, start))

    def _visor_frames(self, number: int, start: int) -> np.ndarray:
        """A window's EPIC frames, (T, S, S, 3) uint8 RGB."""
        video = self.videos[number]
        jpegs = self.state.file(video.epic_path)["frames"][video.frame_nums[start + self.offsets] - 1]
        return square_rgb_frames(jpegs, self.size, True, str(video.epic_path))

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
