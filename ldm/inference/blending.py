"""Putting an inpainted image back into its frame: a plain paste inside the mask, or Poisson blending.

`poisson` keeps the fill's gradients inside the mask and the frame's pixels on its border (Pérez,
Gangnet & Blake, Poisson Image Editing, SIGGRAPH 2003): the fill plus the smoothest (harmonic)
correction that meets the frame where the mask ends. It removes the seam and the colour offset that
the first stage's round trip and the upscaling leave at the mask's edge.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from ldm.inference.images import composite, from_model_scale
from ldm.util import InputError

BLENDS = ("paste", "poisson")
NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def harmonic_fill(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Values (H,W,C) float replaced inside the bool `hole` by the solution of Laplace's equation
    that equals them on the hole's 4-neighbours outside it; the frame's edge is a free (Neumann) border.

    Every part of the hole must touch a pixel outside it.
    """
    height, width = hole.shape
    ys, xs = np.nonzero(hole)
    index = np.full(hole.shape, -1, np.int64)
    index[ys, xs] = np.arange(len(ys))
    rows, cols, degree = [], [], np.zeros(len(ys))
    rhs = np.zeros((len(ys), values.shape[2]))
    for dy, dx in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        degree += inside
        me, ny, nx = np.flatnonzero(inside), ny[inside], nx[inside]
        other = index[ny, nx]
        hidden = other >= 0
        rows.append(me[hidden])
        cols.append(other[hidden])
        np.add.at(rhs, me[~hidden], values[ny[~hidden], nx[~hidden]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    laplacian = sparse.diags(degree) - sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(ys), len(ys))
    )
    solution = sparse_linalg.spsolve(laplacian.tocsc(), rhs, permc_spec="MMD_AT_PLUS_A")
    result = values.copy()
    result[ys, xs] = solution.reshape(len(ys), -1)
    return result


def poisson_blend(frame: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Frame and fill (H,W,3) uint8, bool mask (H,W) → the fill blended into the mask (uint8)."""
    if mask.all() or not mask.any():
        return composite(frame, fill, mask)
    offset = frame.astype(np.float64) - fill.astype(np.float64)
    blended = fill + harmonic_fill(offset, mask)
    return composite(frame, np.clip(np.rint(blended), 0, 255).astype(np.uint8), mask)


def blend(frames: np.ndarray, fills: np.ndarray, masks: np.ndarray, how: str = "paste") -> np.ndarray:
    """Frames and fills (...,H,W,3) uint8, bool masks (...,H,W) → each fill put into its frame's mask."""
    if how == "paste":
        return composite(frames, fills, masks)
    if how != "poisson":
        raise InputError(f"blend {how!r}: use one of {', '.join(BLENDS)}")
    image_shape = frames.shape[-3:]
    pairs = zip(frames.reshape(-1, *image_shape), fills.reshape(-1, *image_shape), strict=True)
    blended = [
        poisson_blend(f, p, m) for (f, p), m in zip(pairs, masks.reshape(-1, *image_shape[:2]), strict=True)
    ]
    return np.stack(blended).reshape(frames.shape)


def paste_back(frames: np.ndarray, outputs: np.ndarray, masks: np.ndarray, how: str = "paste") -> np.ndarray:
    """Frames (B,H,W,3) uint8, model outputs (B,h,w,3) at the model's scale, bool masks (B,H,W) →
    the outputs resized to the frames and put into their masks."""
    height, width = frames.shape[1:3]
    return blend(frames, np.stack([from_model_scale(o, height, width) for o in outputs]), masks, how)
