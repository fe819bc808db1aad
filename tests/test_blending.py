"""ldm.inference.blending: the inpainted region put back by a paste or by Poisson blending."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

import demo_script
from ldm.inference.blending import blend, harmonic_fill, paste_back, poisson_blend
from ldm.inference.images import composite, from_model_scale
from ldm.inference.model import OFFICIAL_CONFIG, SMALL_CONFIG
from ldm.inference.settings import InferenceSettings
from ldm.util import InputError
from tests.conftest import ROOT
from tests.test_evaluate import evaluate


def hand_like_hole(height: int, width: int) -> np.ndarray:
    """A forearm that enters from the lower edge (so the hole touches the frame's edge) and a disc."""
    ys, xs = np.mgrid[:height, :width]
    arm = (np.abs(xs - 0.4 * width - 0.3 * (height - ys)) < 0.12 * width) & (ys > 0.45 * height)
    disc = (ys - 0.3 * height) ** 2 + (xs - 0.75 * width) ** 2 < (0.1 * height) ** 2
    return arm | disc


def coffee(height: int = 96, width: int = 128) -> np.ndarray:
    """scikit-image's coffee photograph, its tones squeezed into 30..200 so offsets do not clip."""
    image = from_model_scale(skimage_data.coffee(), height, width).astype(np.float64)
    return np.rint(30 + image * (170 / 255)).astype(np.uint8)


def test_harmonic_fill_continues_a_plane_into_a_hole_at_the_frame_edge():
    height, width = 40, 60
    ys, xs = np.mgrid[:height, :width]
    plane = np.stack([0.7 * xs + 3.0, 120 - 0.4 * xs, np.full_like(xs, 9.0)], axis=-1).astype(np.float64)
    hole = hand_like_hole(height, width)
    scrambled = np.where(hole[..., None], -500.0, plane)
    filled = harmonic_fill(scrambled, hole)
    # A plane is harmonic, and its slope along the free lower edge is zero: the solution is the plane.
    np.testing.assert_allclose(filled, plane, atol=1e-8)


def test_poisson_blend_removes_a_fills_colour_offset_and_keeps_its_detail():
    frame = coffee()
    hole = hand_like_hole(*frame.shape[:2])
    offset = np.array([25, -18, 12])
    fill = (frame.astype(int) + offset).astype(np.uint8)
    assert np.array_equal(poisson_blend(frame, fill, hole), frame), "the true pixels, offset removed"
    pasted = composite(frame, fill, hole).astype(int)
    assert np.abs(pasted - frame)[hole].mean() > 15  # measured 18.33, the offsets' mean (nothing clips)


def test_poisson_blend_meets_the_frame_at_the_mask_edge_with_the_fills_gradients():
    frame = coffee()
    fill = np.ascontiguousarray(coffee()[::-1])  # other content: the photograph upside down
    hole = hand_like_hole(*frame.shape[:2])
    result = poisson_blend(frame, fill, hole)
    assert np.array_equal(result[~hole], frame[~hole])
    correction = result.astype(np.float64) - fill
    laplacian = 4 * correction[1:-1, 1:-1] - (
        correction[:-2, 1:-1] + correction[2:, 1:-1] + correction[1:-1, :-2] + correction[1:-1, 2:]
    )
    inside = hole & np.all((result > 0) & (result < 255), axis=-1)  # clipping aside
    interior = (
        inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    )
    # Measured 0.81 of the hole (AMD EPYC, all 3 settings).
    assert interior.sum() > 0.5 * hole.sum()
    # Measured 3; the bound is the rounding's (8 x 0.5).
    assert np.abs(laplacian[interior]).max() <= 4, "the fill's detail is kept, up to rounding"
    edge = hole & ~np.roll(hole, 1, axis=1)
    edge[:, 0] = False
    seam_blend = np.abs(result[edge].astype(int) - frame[np.roll(edge, -1, axis=1)]).mean()
    seam_paste = np.abs(fill[edge].astype(int) - frame[np.roll(edge, -1, axis=1)]).mean()
    assert seam_blend < seam_paste / 2  # measured 0.24 x (AMD EPYC, all 3 settings)


def test_blend_paste_is_a_composite_and_bad_names_are_refused():
    frames = np.stack([coffee(), coffee()[::-1]])
    fills = np.stack([coffee()[:, ::-1], coffee()[::-1, ::-1]])
    masks = np.stack([hand_like_hole(96, 128), hand_like_hole(96, 128)[:, ::-1]])
    assert np.array_equal(blend(frames, fills, masks, "paste"), composite(frames, fills, masks))
    blended = blend(frames, fills, masks, "poisson")
    assert np.array_equal(blended[1], poisson_blend(frames[1], fills[1], masks[1]))
    assert np.array_equal(blend(frames, fills, np.ones_like(masks), "poisson"), fills)
    small = np.stack([from_model_scale(f, 24, 32) for f in fills])
    resized = np.stack([from_model_scale(f, 96, 128) for f in small])
    assert np.array_equal(paste_back(frames, small, masks), composite(frames, resized, masks))
    with pytest.raises(InputError, match="blend 'feather'"):
        blend(frames, fills, masks, "feather")


def test_blend_default_comes_from_the_model_config(tmp_path):
    assert InferenceSettings.from_config(ROOT / OFFICIAL_CONFIG).blend == "paste", (
        "the published method pastes"
    )
    assert InferenceSettings.from_config(ROOT / SMALL_CONFIG).blend == "poisson"
    config = tmp_path / "small.yaml"
    config.write_text("model: {target: x}\ninference: {blend: feather}\n")
    with pytest.raises(InputError, match=r"small.yaml: inference.blend must be one of paste, poisson"):
        InferenceSettings.from_config(config)


@pytest.mark.weights
def test_embedded_model_scores_higher_blended_than_pasted(tmp_path):
    """The embedded model's fills on held-out clips: Poisson blending must raise the masked PSNR."""
    scores = {}
    for how in ("paste", "poisson"):
        out = tmp_path / how
        argv = ["--out", str(out), "--n", "8", "--steps", "1", "--eta", "1", "--methods", "vidm"]
        assert evaluate([*argv, "--blend", how]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["settings"]["blend"] == how
        scores[how] = results["methods"]["vidm"]["psnr_mask"]
    # Measured: +1.49 dB with 1 and 2 threads, +1.52 dB with the AVX2 kernels (AMD EPYC, the 3 settings).
    assert scores["poisson"] > scores["paste"] + 0.5, scores


@pytest.mark.weights
def test_demo_blends_by_the_models_default_and_pastes_on_request(tmp_path, caplog):
    """The embedded model's demo: blended (its config's default) and pasted results share the seed,
    differ only inside the masks, and the blend meets the frame more closely at the masks' edges."""
    caplog.set_level("INFO")
    grids = {}
    for how, extra in (("poisson", []), ("paste", ["--blend", "paste"])):
        out = tmp_path / f"{how}.png"
        assert demo_script.main([str(ROOT / "demo_data"), "--out", str(out), *extra]) == 0
        grids[how] = np.asarray(Image.open(out))
    assert "Poisson-blended into the masks" in caplog.text and "pasted into the masks" in caplog.text
    seams = {how: [] for how in grids}
    for row in range(4):
        cells = {how: grid[row * 256 : (row + 1) * 256] for how, grid in grids.items()}
        frame, mask = cells["paste"][:, :256].astype(int), cells["paste"][:, 256:512, 0] > 127
        assert np.array_equal(cells["poisson"][:, :512], cells["paste"][:, :512])
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
        edge = cv2.dilate(ring.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & mask
        for how, cell in cells.items():
            result = cell[:, 512:].astype(int)
            assert np.array_equal(result[~mask], frame[~mask])
            seams[how].append(np.abs(result[edge].mean(axis=0) - frame[ring].mean(axis=0)).mean())
    # Measured at the default 128 px in 64-px tiles: 2.55 against 5.92 grey levels (0.430) with 1 and 2
    # threads, 2.57 against 5.92 (0.434) with the AVX2 kernels (AMD EPYC, the 3 settings).
    assert np.mean(seams["poisson"]) < 0.6 * np.mean(seams["paste"]), seams
