"""Synthetic egocentric sequences: a moving camera over a scene, and hands that move across it.

Scenes are photographs shipped with scikit-image (no download) or procedural tabletop scenes;
camera motion pans and zooms across the frames; hand-and-forearm occluders enter from the lower
edge and move, so earlier frames show what a hand covers in the last one. Everything is drawn
from a seed, so a sequence is reproducible from (split, index).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

# Colour photographs and grey textures of skimage.data. The held-out ones never appear in
# training: the evaluation benchmark and demo_data/ are made from them.
TRAIN_PHOTOS = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo")
TRAIN_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "page", "text", "clock", "cell")
HELDOUT_PHOTOS = ("coffee", "chelsea", "rocket")
HELDOUT_TEXTURES = ("coins",)

SKIN_TONES = (
    np.array(
        [[236, 188, 160], [224, 172, 138], [198, 134, 99], [161, 102, 73], [120, 75, 52], [90, 56, 40]],
        np.float32,
    )
    / 255.0
)

CANVAS = 512


@functools.cache
def load_source(name: str) -> np.ndarray:
    """An skimage.data image as float32 RGB in [0,1], resized so its short side is CANVAS."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.float32) / 255.0
    scale = CANVAS / min(image.shape[:2])
    return cv2.resize(
        image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    )


@functools.cache
def load_grey(name: str) -> np.ndarray:
    """An skimage.data image as a (H,W,1) float32 grey level in [0,1]."""
    return load_source(name).mean(axis=2, keepdims=True)


def tinted(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour grey images (...,1) with two random tints (dark → light)."""
    dark, light = rng.uniform(0.0, 0.5, 3).astype(np.float32), rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return dark + grey * (light - dark)


def procedural_scene(rng: np.random.Generator, size: int = 192) -> np.ndarray:
    """A tabletop-like scene: a shaded surface with boxes, plates, bottles and stripes."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base, tilt = rng.uniform(0.2, 0.9, 3), rng.uniform(-0.3, 0.3, (2, 3))
    scene = np.clip(base + x[..., None] * tilt[0] + y[..., None] * tilt[1], 0, 1).astype(np.float32)
    for _ in range(rng.integers(8, 20)):
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        kind = rng.integers(4)
        if kind == 0:
            w, h = (int(v) for v in rng.integers(size // 16, size // 4, 2))
            cv2.rectangle(scene, (cx - w, cy - h), (cx + w, cy + h), colour, -1)
        elif kind == 1:
            axes = tuple(int(v) for v in rng.integers(size // 20, size // 6, 2))
            cv2.ellipse(scene, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
            cv2.ellipse(
                scene, (cx, cy), (axes[0] // 2, axes[1] // 2), 0, 0, 360, tuple(c * 0.7 for c in colour), -1
            )
        elif kind == 2:
            end = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(scene, (cx, cy), end, colour, int(rng.integers(2, size // 24)))
        else:
            pts = rng.integers(-size // 6, size // 6, (int(rng.integers(3, 7)), 2)) + [cx, cy]
            cv2.fillPoly(scene, [pts.astype(np.int32)], colour)
    noise = rng.normal(0, 0.02, scene.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(scene, (3, 3), 0) + noise, 0, 1)


def pick_scene(rng: np.random.Generator, split: str) -> tuple[np.ndarray, bool]:
    """A canvas for one sequence (a photograph, a grey texture or a procedural scene) and whether
    it is a grey texture to be tinted."""
    photos, textures = (
        (TRAIN_PHOTOS, TRAIN_TEXTURES) if split == "train" else (HELDOUT_PHOTOS, HELDOUT_TEXTURES)
    )
    kind = rng.choice(
        ["photo", "texture", "procedural"], p=[0.5, 0.2, 0.3] if split == "train" else [0.75, 0.25, 0.0]
    )
    if kind == "photo":
        return load_source(str(rng.choice(photos))), False
    if kind == "texture":
        return load_grey(str(rng.choice(textures))), True
    return procedural_scene(rng), False


def scene_views(rng: np.random.Generator, split: str, size: int, num_frames: int) -> np.ndarray:
    """(T,size,size,3) float32 views of a random scene of `split` along a camera path."""
    canvas, grey = pick_scene(rng, split)
    views = camera_views(rng, canvas, size, num_frames)
    return tinted(views[..., None], rng) if grey else views


def camera_views(
    rng: np.random.Generator, canvas: np.ndarray, size: int, num_frames: int, max_pan: float = 0.3
) -> np.ndarray:
    """(T,size,size,3) crops of the canvas along a straight pan with a small zoom."""
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


@dataclass
class HandPose:
    """A hand entering from the lower edge: where the arm starts, where the wrist is, finger spread."""

    entry: np.ndarray
    wrist: np.ndarray
    width: float
    spread: float
    curl: float


def random_hand_track(rng: np.random.Generator, num_frames: int, side: float | None = None) -> list[HandPose]:
    """Poses of one hand over T frames, moving a sizeable fraction of the frame."""
    side = rng.uniform(0.25, 0.75) if side is None else side
    entry = np.array([side + rng.uniform(-0.15, 0.15), 1.15])
    wrist0 = np.array([side + rng.uniform(-0.2, 0.2), rng.uniform(0.45, 0.8)])
    velocity = rng.normal(0, 1, 2)
    velocity = velocity / (np.linalg.norm(velocity) + 1e-8) * rng.uniform(0.08, 0.2)
    width = rng.uniform(0.13, 0.2)
    poses = []
    for t in range(num_frames):
        wrist = wrist0 + velocity * (t - (num_frames - 1))
        wrist = np.clip(wrist, [0.05, 0.3], [0.95, 0.95])
        poses.append(
            HandPose(
                entry + rng.normal(0, 0.02, 2), wrist, width, rng.uniform(0.25, 0.45), rng.uniform(0.6, 1.0)
            )
        )
    return poses


def _capsule(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, value: float) -> None:
    cv2.line(
        canvas,
        tuple(int(v) for v in a),
        tuple(int(v) for v in b),
        value,
        max(1, int(2 * radius)),
        cv2.LINE_AA,
    )


def hand_silhouette(pose: HandPose, size: int, supersample: int = 4) -> np.ndarray:
    """Soft (size,size) alpha of forearm, palm, four fingers and a thumb."""
    s = size * supersample
    alpha = np.zeros((s, s), np.float32)
    entry, wrist = pose.entry * s, pose.wrist * s
    direction = wrist - entry
    direction = direction / (np.linalg.norm(direction) + 1e-8)
    normal = np.array([-direction[1], direction[0]])
    width = pose.width * s
    _capsule(alpha, entry, wrist, width / 2, 1.0)
    palm = wrist + direction * width * 0.6
    angle = float(np.degrees(np.arctan2(direction[1], direction[0])))
    cv2.ellipse(
        alpha,
        tuple(int(v) for v in palm),
        (int(width * 0.7), int(width * 0.6)),
        angle,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    for offset in np.linspace(-0.45, 0.45, 4):
        theta = offset * pose.spread * 2
        d = direction * np.cos(theta) + normal * np.sin(theta)
        base = palm + direction * width * 0.45 + normal * offset * width
        length = width * (0.75 + 0.15 * (1 - abs(offset))) * pose.curl
        _capsule(alpha, base, base + d * length, width * 0.11, 1.0)
    thumb_dir = direction * np.cos(1.1) + normal * np.sin(1.1)
    thumb_base = palm + normal * width * 0.5
    _capsule(alpha, thumb_base, thumb_base + thumb_dir * width * 0.6, width * 0.13, 1.0)
    return cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)


def shade_hand(alpha: np.ndarray, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skin colour with rounded shading (brighter away from the outline) and slight texture."""
    inside = (alpha > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = depth / (depth.max() + 1e-6)
    shading = 0.6 + 0.4 * np.sqrt(depth)
    texture = 1 + rng.normal(0, 0.03, alpha.shape).astype(np.float32)
    return np.clip(skin[None, None] * (shading * texture)[..., None], 0, 1).astype(np.float32)


def hand_tracks(rng: np.random.Generator, num_frames: int) -> list[list[HandPose]]:
    """One hand (70%) or a left and a right hand, each moving over the T frames."""
    sides = [None] if rng.random() < 0.7 else [rng.uniform(0.15, 0.35), rng.uniform(0.65, 0.85)]
    return [random_hand_track(rng, num_frames, side) for side in sides]


def hand_alphas(tracks: list[list[HandPose]], size: int) -> np.ndarray:
    """Soft alpha (T,size,size) of all hands."""
    frames = range(len(tracks[0]))
    return np.stack([np.clip(sum(hand_silhouette(track[t], size) for track in tracks), 0, 1) for t in frames])


@dataclass
class Sequence:
    """One synthetic clip: clean frames, frames with hands (if drawn), and masks of every pixel a hand touches."""

    clean: np.ndarray
    with_hands: np.ndarray | None
    masks: np.ndarray


def make_sequence(
    seed: int, size: int, num_frames: int = 4, split: str = "train", draw_hands: bool = True
) -> Sequence:
    """The clip drawn from `seed` (float32 images in [0,1], bool masks)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(seed)
    clean = scene_views(rng, split, size, num_frames)
    alpha = hand_alphas(hand_tracks(rng, num_frames), size)
    with_hands = None
    if draw_hands:
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1)
        colour = np.stack([shade_hand(a, skin, rng) for a in alpha])
        with_hands = (clean * (1 - alpha[..., None]) + colour * alpha[..., None]).astype(np.float32)
    return Sequence(clean, with_hands, alpha > 0)


def dilate(masks: np.ndarray, dilation: int) -> np.ndarray:
    """Dilate boolean masks (...,H,W) with a dilation x dilation square."""
    if dilation <= 1:
        return masks
    kernel = np.ones((dilation, dilation), np.uint8)
    flat = masks.reshape(-1, *masks.shape[-2:]).astype(np.uint8)
    return np.stack([cv2.dilate(m, kernel) for m in flat]).reshape(masks.shape) > 0


def inpainting_sample(seq: Sequence, mask_dilation: int, latent_size: int) -> dict[str, np.ndarray]:
    """The NoHands sample format: target, masked frames, ±1 masks and the latent loss mask."""
    masks = dilate(seq.masks, mask_dilation)
    to_pm1 = seq.clean * 2 - 1
    hand_images = np.where(masks[..., None], -1.0, to_pm1).astype(np.float32)
    return {
        "image": to_pm1[-1].astype(np.float32),
        "hand_images": hand_images,
        "mask": np.where(masks, 1.0, -1.0).astype(np.float32),
        "loss_mask": np.ones((latent_size, latent_size), dtype=bool),
    }


class SyntheticHands(Dataset):
    """NoHands-style samples from synthetic sequences; item i is always the same clip."""

    def __init__(
        self,
        size: int = 64,
        num_frames: int = 4,
        length: int = 10000,
        split: str = "train",
        seed: int = 0,
        mask_dilation: int = 3,
        downsample: int = 4,
    ):
        self.size, self.num_frames, self.length = size, num_frames, length
        self.split, self.seed = split, seed
        self.mask_dilation = mask_dilation
        self.latent_size = size // downsample

    def __len__(self) -> int:
        return self.length

    def sequence(self, index: int, draw_hands: bool = False) -> Sequence:
        return make_sequence(
            self.seed * 1_000_003 + index, self.size, self.num_frames, self.split, draw_hands
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return inpainting_sample(self.sequence(index), self.mask_dilation, self.latent_size)


class SyntheticFrames(Dataset):
    """Single clean frames {"image": (crop,crop,3) in [-1,1]} of the synthetic scenes, for training
    the first stage: views rendered at `size`, of which a random `crop` window is kept (default all)."""

    def __init__(
        self,
        size: int = 64,
        length: int = 10000,
        split: str = "train",
        seed: int = 0,
        crop: int | None = None,
    ):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if crop is not None and not 0 < crop <= size:
            raise ValueError(f"crop must be in 1..{size}, got {crop}")
        self.size, self.length, self.split, self.seed = size, length, split, seed
        self.crop = crop or size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        frame = scene_views(rng, self.split, self.size, num_frames=1)[0]
        top, left = rng.integers(0, self.size - self.crop + 1, 2)
        frame = frame[top : top + self.crop, left : left + self.crop]
        return {"image": (frame * 2 - 1).astype(np.float32)}
