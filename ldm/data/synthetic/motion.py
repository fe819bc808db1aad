"""Head-mounted camera motion for the synthetic training sequences, and what their context frames reveal.

The frames of a training clip stand for egocentric video frames about 0.6 s apart (4 frames, 36
apart at 60 fps). Over such a clip a head-mounted camera drifts along a smooth, slightly curved
path, rolls a few degrees and zooms a little (leaning in or back), with a slight shake; some clips
are nearly still. A camera is a 3x3 matrix from canvas pixel coordinates to frame pixel coordinates
(pixel centres at integers, as in cv2.warpAffine).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DRIFT = 0.4
"""Largest drift of the view over a clip, in view widths."""
ROLL_STD = np.radians(3.0)
"""Spread of the roll over a clip (a fully active one)."""
ZOOM_STD = 0.06
"""Spread of the log zoom over a clip (a fully active one)."""
SHAKE = 0.01
"""Spread of the per-frame shake, in view widths (a fully active clip)."""
BEND_STD = 0.25
"""Spread of the path's sideways bulge at mid-clip, as a share of its drift."""
STILL_RATE = 0.2
"""Share of nearly still clips."""
TILT_STD = np.radians(3.0)
"""Spread of the head's tilt, constant over a clip."""
VIEW_WIDTH = (0.2, 0.75)
"""Range (log-uniform) of the view's width as a fraction of the canvas's short side."""
PRESCALE = 1.25
"""Views that shrink the canvas are warped from a copy area-downsampled to PRESCALE x their scale."""


@dataclass
class HeadMotion:
    """Each frame's view relative to the clip: centre offset (T,2) in view widths, roll (T,) in
    radians, log zoom (T,)."""

    offsets: np.ndarray
    rolls: np.ndarray
    zooms: np.ndarray


def head_motion(rng: np.random.Generator, num_frames: int, motion_scale: float = 1.0) -> HeadMotion:
    """A random head motion over `num_frames`; motion_scale (0..1) scales every movement, 0 giving
    a still camera. The draws do not depend on motion_scale: only their amplitude does."""
    still = rng.random() < STILL_RATE
    activity = (rng.uniform(0, 0.1) if still else rng.uniform(0.2, 1.0)) * motion_scale
    heading = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading), np.sin(heading)])
    normal = np.array([-direction[1], direction[0]])
    bend, roll, zoom = rng.normal(0, 1, 3)
    shake = rng.normal(0, SHAKE, (num_frames, 2))
    tilt = rng.normal(0, TILT_STD)
    u = np.linspace(0, 1, num_frames)[:, None]
    drift = DRIFT * activity * (u * direction + BEND_STD * bend * 4 * u * (1 - u) * normal)
    return HeadMotion(
        offsets=drift + activity * shake,
        rolls=tilt + activity * ROLL_STD * roll * u[:, 0],
        zooms=activity * ZOOM_STD * zoom * u[:, 0],
    )


def view_cameras(
    rng: np.random.Generator, motion: HeadMotion, canvas_shape: tuple[int, int], size: int
) -> np.ndarray:
    """(T,3,3) cameras filming a canvas of (height, width) along `motion` at size x size: a random view
    width (shrunk if the path would leave the canvas), position and left-right mirroring."""
    height, width = canvas_shape
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    view = np.exp(rng.uniform(*np.log(VIEW_WIDTH))) * min(height, width)
    half = 0.5 * np.exp(-motion.zooms) * (np.abs(np.cos(motion.rolls)) + np.abs(np.sin(motion.rolls)))
    low = (motion.offsets - half[:, None]).min(axis=0)
    high = (motion.offsets + half[:, None]).max(axis=0)
    room = np.array([width, height], np.float64) - 4
    view = min(view, *(room / (high - low)))
    first, last = 2 - view * low, room + 2 - view * high
    start = first + rng.random(2) * np.maximum(last - first, 0)
    cameras = []
    for offset, roll, zoom in zip(motion.offsets, motion.rolls, motion.zooms, strict=True):
        cos, sin = np.cos(roll), np.sin(roll)
        linear = size * np.exp(zoom) / view * np.array([[cos, -sin], [sin, cos]]) @ np.diag([mirror, 1.0])
        centre = start + view * offset
        camera = np.eye(3)
        camera[:2, :2] = linear
        camera[:2, 2] = (size - 1) / 2 - linear @ centre
        cameras.append(camera)
    return np.stack(cameras)


def render_views(canvas: np.ndarray, cameras: np.ndarray, size: int) -> np.ndarray:
    """(T,size,size,C) views of a (H,W,C) canvas through `cameras`, bilinear, without aliasing."""
    corners = np.array(
        [[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]]
    )
    seen = np.concatenate([(np.linalg.inv(c) @ corners.T)[:2].T for c in cameras])
    height, width = canvas.shape[:2]
    x0, y0 = np.maximum(np.floor(seen.min(axis=0)) - 1, 0).astype(int)
    x1, y1 = np.minimum(np.ceil(seen.max(axis=0)) + 2, [width, height]).astype(int)
    region = canvas[y0:y1, x0:x1]
    scale = max(np.sqrt(abs(np.linalg.det(c[:2, :2]))) for c in cameras)
    if PRESCALE * scale < 1:
        region = cv2.resize(
            region, None, fx=PRESCALE * scale, fy=PRESCALE * scale, interpolation=cv2.INTER_AREA
        )
    rx, ry = region.shape[1] / (x1 - x0), region.shape[0] / (y1 - y0)
    to_region = np.array([[rx, 0, (0.5 - x0) * rx - 0.5], [0, ry, (0.5 - y0) * ry - 0.5], [0, 0, 1]])
    views = [
        cv2.warpAffine(
            region,
            (camera @ np.linalg.inv(to_region))[:2],
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        for camera in cameras
    ]
    return np.stack(views).reshape(len(cameras), size, size, canvas.shape[2])


def revealed_fraction(masks: np.ndarray, cameras: np.ndarray) -> float:
    """Share of the last frame's hidden pixels (masks (T,H,W) bool) whose scene point some earlier
    frame shows: inside that frame's view and not under its mask. NaN when nothing is hidden."""
    height, width = masks.shape[1:]
    ys, xs = np.nonzero(masks[-1])
    if len(xs) == 0:
        return float("nan")
    points = np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    to_scene = np.linalg.inv(cameras[-1])
    shown = np.zeros(len(xs), bool)
    for mask, camera in zip(masks[:-1], cameras[:-1], strict=True):
        qx, qy = np.round((camera @ to_scene @ points)[:2]).astype(int)
        inside = (qx >= 0) & (qx < width) & (qy >= 0) & (qy < height)
        shown[inside] |= ~mask[qy[inside], qx[inside]]
    return float(shown.mean())
