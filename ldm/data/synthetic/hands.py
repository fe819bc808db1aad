"""Hand-and-forearm occluders for the synthetic sequences: their poses over the frames and their drawing.

A hand enters from the lower edge of the frame: a forearm from the entry point to the wrist, a palm,
four fingers and a thumb. Positions are in frame units (0..1 across, 0..1 down).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SKIN_TONES = (
    np.array(
        [[236, 188, 160], [224, 172, 138], [198, 134, 99], [161, 102, 73], [120, 75, 52], [90, 56, 40]],
        np.float32,
    )
    / 255.0
)

HAND_STEP = (0.05, 0.2)
"""Range of the distance a training hand's wrist moves between frames, in frame widths."""
SWING = (0.6, 1.0)
"""Range of how far the forearm's entry point follows the wrist sideways (1: as far)."""


@dataclass
class HandPose:
    """A hand entering from the lower edge: where the arm starts, where the wrist is, finger spread."""

    entry: np.ndarray
    wrist: np.ndarray
    width: float
    spread: float
    curl: float


def random_hand_track(rng: np.random.Generator, num_frames: int, side: float | None = None) -> list[HandPose]:
    """Poses of one held-out hand over T frames, moving a sizeable fraction of the frame."""
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


def hand_sides(rng: np.random.Generator) -> list[float | None]:
    """One hand anywhere (70%), or a left and a right hand: where each enters, across the frame."""
    return [None] if rng.random() < 0.7 else [rng.uniform(0.15, 0.35), rng.uniform(0.65, 0.85)]


def hand_tracks(rng: np.random.Generator, num_frames: int) -> list[list[HandPose]]:
    """Held-out hands, each moving over the T frames."""
    return [random_hand_track(rng, num_frames, side) for side in hand_sides(rng)]


def moving_hand_track(rng: np.random.Generator, num_frames: int, side: float | None = None) -> list[HandPose]:
    """Poses of one training hand over T frames: the wrist follows a smooth, slightly curved path, the
    forearm swings with it, and the fingers open or close gradually."""
    side = rng.uniform(0.25, 0.75) if side is None else side
    entry = np.array([side + rng.uniform(-0.15, 0.15), 1.15])
    wrist = np.array([side + rng.uniform(-0.2, 0.2), rng.uniform(0.45, 0.8)])
    heading, turn = rng.uniform(0, 2 * np.pi), rng.normal(0, 0.3)
    step, swing = rng.uniform(*HAND_STEP), rng.uniform(*SWING)
    width = rng.uniform(0.13, 0.2)
    spread, curl = rng.uniform(0.25, 0.45, 2), rng.uniform(0.6, 1.0, 2)
    poses = []
    for t in range(num_frames - 1, -1, -1):
        k = t / max(num_frames - 1, 1)
        at = np.clip(wrist, [0.05, 0.3], [0.95, 0.95])
        poses.append(
            HandPose(entry.copy(), at, width, np.interp(k, (0, 1), spread), np.interp(k, (0, 1), curl))
        )
        move = step * np.array([np.cos(heading), np.sin(heading)])
        wrist = wrist - move
        entry[0] -= swing * move[0]
        heading -= turn
    return poses[::-1]


def moving_hand_tracks(rng: np.random.Generator, num_frames: int) -> list[list[HandPose]]:
    """Training hands, each on a smooth path."""
    return [moving_hand_track(rng, num_frames, side) for side in hand_sides(rng)]


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


def hand_alphas(tracks: list[list[HandPose]], size: int) -> np.ndarray:
    """Soft alpha (T,size,size) of all hands."""
    frames = range(len(tracks[0]))
    return np.stack([np.clip(sum(hand_silhouette(track[t], size) for track in tracks), 0, 1) for t in frames])


def shade_hand(alpha: np.ndarray, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skin colour with rounded shading (brighter away from the outline) and slight texture."""
    inside = (alpha > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = depth / (depth.max() + 1e-6)
    shading = 0.6 + 0.4 * np.sqrt(depth)
    texture = 1 + rng.normal(0, 0.03, alpha.shape).astype(np.float32)
    return np.clip(skin[None, None] * (shading * texture)[..., None], 0, 1).astype(np.float32)


def paint_hands(clean: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frames (T,H,W,3) with shaded skin-coloured hands of soft alpha (T,H,W) over them."""
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1)
    colour = np.stack([shade_hand(a, skin, rng) for a in alpha])
    return (clean * (1 - alpha[..., None]) + colour * alpha[..., None]).astype(np.float32)
