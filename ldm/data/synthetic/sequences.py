"""Synthetic egocentric sequences: a camera filming a scene, and hands that move across it.

Held-out sequences (the evaluation benchmark, demo_data/) pan and zoom straight across a held-out
scikit-image photograph, with hands that move fast; they are frozen: the same seed gives the same
frames and masks. Training sequences film many more scenes (ldm.data.synthetic.scenes) with a
head-mounted-like camera (ldm.data.synthetic.motion) and hands on smooth paths, so earlier frames
show most of what a hand covers in the last one. Everything is drawn from a seed, so a sequence is
reproducible from (split, index, wallpapers): Debian's wallpapers are among the training scenes only
where a caller asks for them (`wallpapers`), and asking where none are installed is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

from ldm.data.synthetic.hands import hand_alphas, hand_tracks, moving_hand_tracks, paint_hands
from ldm.data.synthetic.motion import head_motion, render_views, view_cameras
from ldm.data.synthetic.scenes import (
    HELDOUT_PHOTOS,
    HELDOUT_TEXTURES,
    installed_wallpapers,
    load_grey,
    load_source,
    pick_training_scene,
    recoloured,
    tinted,
    to_uint8_canvas,
)
from ldm.inference.alignment import align_to_last

SPLITS = ("train", "heldout")


def check_options(split: str, motion_scale: float = 1.0) -> None:
    """Refuse an unknown split, or a motion_scale outside [0, 1] (held-out clips: only 1)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not 0 <= motion_scale <= 1 or (split == "heldout" and motion_scale != 1):
        raise ValueError(f"motion_scale must be in [0, 1] (1 for held-out clips), got {motion_scale}")


def heldout_views(rng: np.random.Generator, size: int, num_frames: int) -> np.ndarray:
    """(T,size,size,3) float32 views of a held-out photograph (75%) or tinted texture along a pan."""
    if rng.choice(["photo", "texture"], p=[0.75, 0.25]) == "photo":
        return camera_views(rng, load_source(str(rng.choice(HELDOUT_PHOTOS))), size, num_frames)
    views = camera_views(rng, load_grey(str(rng.choice(HELDOUT_TEXTURES))), size, num_frames)
    return tinted(views[..., None], rng)


def camera_views(
    rng: np.random.Generator, canvas: np.ndarray, size: int, num_frames: int, max_pan: float = 0.3
) -> np.ndarray:
    """(T,size,size,3) crops of the canvas along a straight pan with a small zoom (held-out clips)."""
    height, width = canvas.shape[:2]
    crop = rng.uniform(0.45, 0.8) * min(height, width)
    zoom = rng.uniform(-0.1, 0.1)
    pan = rng.normal(0, 1, 2)
    pan = pan / (np.linalg.norm(pan) + 1e-8) * rng.uniform(0.05, max_pan) * crop
    half = crop * (1 + max(zoom, 0.0)) / 2 + np.abs(pan) / 2
    limits = np.array([width, height])
    centre = rng.uniform(np.minimum(half, limits / 2), np.maximum(limits - half, limits / 2))
    # Cut out what the views see, then area-downsample it so the warp does not alias.
    x0, y0 = np.floor(np.maximum(centre - half - 2, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(centre + half + 2, limits)).astype(int)
    prescale = min(1.0, 1.25 * size / crop)
    region = cv2.resize(canvas[y0:y1, x0:x1], None, fx=prescale, fy=prescale, interpolation=cv2.INTER_AREA)
    ratio = np.array([region.shape[1] / (x1 - x0), region.shape[0] / (y1 - y0)])
    frames = []
    for f in np.linspace(0.0, 1.0, num_frames):
        scale = size / (crop * (1 + zoom * f))
        c = centre + pan * (f - 0.5) - (x0, y0)
        sx, sy = scale / ratio
        cx, cy = c * ratio
        matrix = np.array([[sx, 0, size / 2 - sx * cx], [0, sy, size / 2 - sy * cy]], np.float32)
        frames.append(
            cv2.warpAffine(
                region, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
        )
    return np.stack(frames)


def training_views(
    rng: np.random.Generator, size: int, num_frames: int, motion_scale: float = 1.0, wallpapers: bool = False
) -> tuple[np.ndarray, np.ndarray, str]:
    """(T,size,size,3) float32 views of a random training scene filmed by a head-mounted camera,
    the (T,3,3) cameras, and the scene's name (wallpapers among the scenes only if `wallpapers`)."""
    scene = pick_training_scene(rng, wallpapers)
    cameras = view_cameras(rng, head_motion(rng, num_frames, motion_scale), scene.canvas.shape[:2], size)
    views = render_views(scene.canvas, cameras, size).astype(np.float32) / 255
    return (tinted(views, rng) if scene.grey else recoloured(views, rng)), cameras, scene.name


@dataclass
class Sequence:
    """One synthetic clip: clean frames, frames with hands (if drawn), masks of every pixel a hand
    touches and, for training clips, the cameras (T,3,3: canvas to frame pixels) and the scene's name."""

    clean: np.ndarray
    with_hands: np.ndarray | None
    masks: np.ndarray
    cameras: np.ndarray | None = None
    scene: str | None = None


def make_sequence(
    seed: int,
    size: int,
    num_frames: int = 4,
    split: str = "train",
    draw_hands: bool = True,
    motion_scale: float = 1.0,
    wallpapers: bool = False,
) -> Sequence:
    """The clip drawn from `seed` (float32 images in [0,1], bool masks). motion_scale (0..1, training
    only) scales the camera's motion: 0 films the whole clip from one viewpoint; `wallpapers` (training
    only) puts the installed wallpapers among the scenes."""
    check_options(split, motion_scale)
    rng = np.random.default_rng(seed)
    if split == "heldout":
        clean, cameras, scene = heldout_views(rng, size, num_frames), None, None
        alpha = hand_alphas(hand_tracks(rng, num_frames), size)
    else:
        clean, cameras, scene = training_views(rng, size, num_frames, motion_scale, wallpapers)
        alpha = hand_alphas(moving_hand_tracks(rng, num_frames), size)
    with_hands = paint_hands(clean, alpha, rng) if draw_hands else None
    return Sequence(clean, with_hands, alpha > 0, cameras, scene)


def dilate(masks: np.ndarray, dilation: int) -> np.ndarray:
    """Dilate boolean masks (...,H,W) with a dilation x dilation square."""
    if dilation <= 1:
        return masks
    kernel = np.ones((dilation, dilation), np.uint8)
    flat = masks.reshape(-1, *masks.shape[-2:]).astype(np.uint8)
    return np.stack([cv2.dilate(m, kernel) for m in flat]).reshape(masks.shape) > 0


def inpainting_sample(
    seq: Sequence, mask_dilation: int, latent_size: int, align_context: bool = False
) -> dict[str, np.ndarray]:
    """The NoHands sample format: target, masked frames, ±1 masks and the latent loss mask.

    align_context warps the context frames onto the target's view (ldm.inference.alignment).
    """
    masks = dilate(seq.masks, mask_dilation)
    to_pm1 = seq.clean * 2 - 1
    target = to_pm1[-1].astype(np.float32)
    if align_context:
        frames, masks = align_to_last(to_uint8_canvas(seq.clean), masks)
        to_pm1 = frames / 127.5 - 1
    hand_images = np.where(masks[..., None], -1.0, to_pm1).astype(np.float32)
    return {
        "image": target,
        "hand_images": hand_images,
        "mask": np.where(masks, 1.0, -1.0).astype(np.float32),
        "loss_mask": np.ones((latent_size, latent_size), dtype=bool),
    }


class SyntheticHands(Dataset):
    """NoHands-style samples from synthetic sequences; item i is always the same clip.

    motion_scale (0..1, training only) scales the camera's motion: 0 gives a still camera, where a
    hidden pixel is copied from the same place in a context frame, 1 the full head-mounted motion.
    align_context warps each context frame onto the target's view first, as inference does for a
    model whose config sets `inference.align_context`. wallpapers puts the installed wallpapers among
    the training scenes (an error where none are installed).
    """

    def __init__(
        self,
        size: int = 64,
        num_frames: int = 4,
        length: int = 10000,
        split: str = "train",
        seed: int = 0,
        mask_dilation: int = 3,
        downsample: int = 4,
        motion_scale: float = 1.0,
        align_context: bool = False,
        wallpapers: bool = False,
    ):
        check_options(split, motion_scale)
        if wallpapers:
            installed_wallpapers()
        self.wallpapers = wallpapers
        self.align_context = align_context
        self.size, self.num_frames, self.length = size, num_frames, length
        self.split, self.seed = split, seed
        self.mask_dilation = mask_dilation
        self.latent_size = size // downsample
        self.motion_scale = motion_scale

    def __len__(self) -> int:
        return self.length

    def sequence(self, index: int, draw_hands: bool = False) -> Sequence:
        return make_sequence(
            self.seed * 1_000_003 + index,
            self.size,
            self.num_frames,
            self.split,
            draw_hands,
            self.motion_scale,
            self.wallpapers,
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return inpainting_sample(
            self.sequence(index), self.mask_dilation, self.latent_size, self.align_context
        )


class SyntheticFrames(Dataset):
    """Single clean frames {"image": (crop,crop,3) in [-1,1]} of the synthetic scenes, for training
    the first stage: views rendered at `size` (training views of the training scenes; the installed
    wallpapers among them only with `wallpapers`, an error where none are), of which a random `crop`
    window is kept (default: the whole frame)."""

    def __init__(
        self,
        size: int = 64,
        length: int = 10000,
        split: str = "train",
        seed: int = 0,
        crop: int | None = None,
        wallpapers: bool = False,
    ):
        check_options(split)
        if crop is not None and not 0 < crop <= size:
            raise ValueError(f"crop must be in 1..{size}, got {crop}")
        if wallpapers:
            installed_wallpapers()
        self.size, self.length, self.split, self.seed = size, length, split, seed
        self.crop = crop or size
        self.wallpapers = wallpapers

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        if self.split == "heldout":
            frame = heldout_views(rng, self.size, num_frames=1)[0]
        else:
            frame = training_views(rng, self.size, num_frames=1, wallpapers=self.wallpapers)[0][0]
        top, left = rng.integers(0, self.size - self.crop + 1, 2)
        frame = frame[top : top + self.crop, left : left + self.crop]
        return {"image": (frame * 2 - 1).astype(np.float32)}
