"""Context frames warped onto the target's view, so that what they reveal sits where the target hides it.

A head-mounted camera moves between frames; a context pixel that shows the scene behind the
target's hand is then somewhere else in the context frame. Each context frame is registered to the
last (target) frame with ECC fits (Evangelidis & Psarakis, PAMI 2008) over the pixels both frames
show, started from no motion and from the shift phase correlation finds, and warped; pixels the warp
brings in from outside the context frame count as hidden. Besides the affine fit, a rigid fit and
the affine fit's nearest rotation-and-zoom compete: a head-mounted camera rolls, pans and leans, but
does not shear, and with a hand hiding a fifth of the frame the six affine parameters are loosely
held. Whichever warp matches the target best wins, no warp included.
"""

from __future__ import annotations

import cv2
import numpy as np

ECC_ITERATIONS = 50
ECC_EPSILON = 1e-4
ECC_GAUSS_SIZE = 3
MIN_OVERLAP = 0.5
"""A warp must keep this share of the target's visible pixels in view."""


def _grey(frame: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """A float32 grey image in [0,1] with the hidden pixels filled (Telea), so edges of holes do not pull the fit."""
    if hidden.any():
        frame = cv2.inpaint(np.ascontiguousarray(frame), hidden.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def _warp_image(image: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """`image` seen from the target: pixel x of the result is image(warp · x), edges replicated."""
    height, width = image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, warp, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _warp_hidden(hidden: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """A bool mask seen from the target; pixels from outside the frame are hidden."""
    height, width = hidden.shape
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(
        hidden.astype(np.uint8),
        warp,
        (width, height),
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=1,
    )
    return warped.astype(bool)


def _mismatch(
    template: np.ndarray, target_hidden: np.ndarray, image: np.ndarray, hidden: np.ndarray, warp: np.ndarray
) -> float:
    """Mean absolute grey difference over the pixels both frames show after the warp; inf when they
    share less than MIN_OVERLAP of the target's visible pixels."""
    both = ~target_hidden & ~_warp_hidden(hidden, warp)
    if both.sum() < MIN_OVERLAP * (~target_hidden).sum():
        return float("inf")
    return float(np.abs(_warp_image(image, warp) - template)[both].mean())


def _ecc(
    template: np.ndarray, image: np.ndarray, visible: np.ndarray, start: np.ndarray, motion: int
) -> np.ndarray | None:
    """ECC's warp of kind `motion` (cv2.MOTION_*) refined from `start`, or None where it does not converge."""
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
    try:
        _, warp = cv2.findTransformECC(
            template, image, start.copy(), motion, criteria, visible, ECC_GAUSS_SIZE
        )
    except cv2.error:
        return None
    return warp


def _rotation_and_zoom(warp: np.ndarray | None) -> np.ndarray | None:
    """The nearest warp without shear or stretch (least squares on the 2x2 part), same shift."""
    if warp is None:
        return None
    cos, sin = (warp[0, 0] + warp[1, 1]) / 2, (warp[1, 0] - warp[0, 1]) / 2
    return np.array([[cos, -sin, warp[0, 2]], [sin, cos, warp[1, 2]]], np.float32)


def _fit_warp(
    template: np.ndarray, target_hidden: np.ndarray, image: np.ndarray, hidden: np.ndarray
) -> np.ndarray:
    """The 2x3 float32 map from target pixels to context pixels, from their grey images (`_grey`).

    ECC is refined from no motion and from the translation phase correlation finds (it converges only
    near the answer), as an affine and as a rigid warp; the candidate whose warped frame matches the
    target best wins, no warp and the affine fits' rotation-and-zoom parts included.
    """
    identity = np.eye(2, 3, dtype=np.float32)
    window = cv2.createHanningWindow(template.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(template.copy(), image.copy(), window)  # it windows its inputs in place
    shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    visible = (~(hidden | target_hidden)).astype(np.uint8)  # OpenCV warps this mask with `image`
    candidates = [identity, shift]
    for start in (identity, shift):
        affine = _ecc(template, image, visible, start, cv2.MOTION_AFFINE)
        rigid = _ecc(template, image, visible, start, cv2.MOTION_EUCLIDEAN)
        candidates += [affine, _rotation_and_zoom(affine), rigid]
    scores = [
        float("inf") if w is None else _mismatch(template, target_hidden, image, hidden, w)
        for w in candidates
    ]
    return candidates[int(np.argmin(scores))]


def align_to_last(frames: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T,H,W,3) uint8 and bool masks (T,H,W) → the same with frames 0..T-2 warped onto frame T-1."""
    template = _grey(frames[-1], hidden[-1])
    aligned, aligned_hidden = frames.copy(), hidden.copy()
    for t in range(len(frames) - 1):
        warp = _fit_warp(template, hidden[-1], _grey(frames[t], hidden[t]), hidden[t])
        aligned[t] = _warp_image(frames[t], warp)
        aligned_hidden[t] = _warp_hidden(hidden[t], warp)
    return aligned, aligned_hidden
