"""The EGO4D hand labels: frame flow, the published labelling rule, refusal of half-loaded weights, install errors.

detectron2 is not on PyPI and cannot be installed here, so most tests use stand-ins for what it would
return (its model outputs, its checkpointer's load report) or stage a broken install in a temporary
folder. The last test runs the real backend and is skipped where detectron2 is not installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import cv2
import h5py
import imageio_ffmpeg
import numpy as np
import pytest
import torch

import scripts.make_fixture_data as fixture
from ldm.preprocessing.hand_detection import (
    DetectorUnavailable,
    Detectron2HandDetector,
    detector_inputs,
    frames_with_hand,
    require_complete_load,
)
from scripts.make_fixture_data import load_script

ego4d_to_hdf5 = load_script("ego4d_to_hdf5")

WIDTH, HEIGHT = fixture.EGO4D_SIZE  # 384x288: the stored crop is the centre square x in [48, 336)
CROP_X = (WIDTH - HEIGHT) // 2
SCENE_RGB = (200, 120, 60)


def is_magenta(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    return (r > 160) & (g < 100) & (b > 160)


def scene(marker: bool) -> np.ndarray:
    """A frame whose centre square is one colour; black outside it, with a magenta 'hand' on the left edge."""
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[:, CROP_X : CROP_X + HEIGHT] = SCENE_RGB
    if marker:
        rgb[:, :24] = (255, 0, 255)
    return rgb


def write_video(path: Path, frames: Sequence[np.ndarray]) -> None:
    writer = imageio_ffmpeg.write_frames(
        str(path), (WIDTH, HEIGHT), fps=30, codec="libx264", quality=8, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()


class RecordingDetector:
    """Stands in for the detectron2 detector: a 'hand' is magenta anywhere; keeps the frames it was given."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        self.seen += frames
        return [bool(is_magenta(frame).mean() > 0.02) for frame in frames]


def test_detector_sees_full_frames_and_only_the_crop_is_stored(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", [scene(marker=10 <= n < 20) for n in range(30)])
    detector = RecordingDetector()
    assert ego4d_to_hdf5.main([str(videos), str(tmp_path / "out")], detector=detector) == 0

    assert [frame.shape for frame in detector.seen] == [(HEIGHT, WIDTH, 3)] * 3  # frames 0, 10, 20
    with h5py.File(tmp_path / "out" / "clip.hdf5", "r") as f:
        # The hand lies outside the stored crop, yet frame 10 is labelled: detection used the full frame.
        np.testing.assert_array_equal(f["labels"][:], [0, 1, 0])
        stored = [cv2.imdecode(jpeg, cv2.IMREAD_COLOR) for jpeg in f["frames"]]
        assert {frame.shape for frame in stored} == {(256, 256, 3)}
        assert not any(is_magenta(frame).any() for frame in stored)
        # mean_pixel is the stored crop's mean (the full frame's would be a quarter darker, with black sides).
        assert f["mean_pixel"].dtype == np.int64
        np.testing.assert_allclose(f["mean_pixel"][:], np.tile(SCENE_RGB, (3, 1)), atol=6)  # measured 2 off


def test_mean_pixel_truncates_the_exact_mean():
    crop = np.zeros((2, 2, 3), np.uint8)
    crop[0, 0] = (255, 3, 1)  # means 63.75, 0.75, 0.25
    np.testing.assert_array_equal(ego4d_to_hdf5.mean_pixel(crop), [63, 0, 0])


def outputs(*scores_and_classes: tuple[list[float], list[int]]) -> list[dict]:
    """detectron2-style outputs: one {'instances'} per frame with `scores` and `pred_classes` tensors."""
    return [
        {
            "instances": SimpleNamespace(
                scores=torch.tensor(s, dtype=torch.float32), pred_classes=torch.tensor(c)
            )
        }
        for s, c in scores_and_classes
    ]


def test_a_frame_shows_a_hand_when_any_instance_of_any_class_scores_at_least_the_threshold():
    frames = outputs(
        ([0.7], [0]),  # exactly the threshold
        ([0.69, 0.5], [0, 0]),  # below it
        ([0.2, 0.93], [3, 57]),  # a class other than 0 counts
        ([], []),  # no instance
    )
    assert frames_with_hand(frames) == [True, False, True, False]
    assert frames_with_hand(frames, threshold=0.9) == [False, False, True, False]


def test_detector_inputs_keep_the_full_frame_in_the_config_channel_order():
    frame = np.zeros((30, 40, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # R, G, B
    resized: list[tuple[int, ...]] = []

    def double(image: np.ndarray) -> np.ndarray:
        resized.append(image.shape)
        return image.repeat(2, axis=0).repeat(2, axis=1)

    (bgr,) = detector_inputs([frame], double, bgr=True)
    assert resized == [(30, 40, 3)]
    assert bgr["image"].shape == (3, 60, 80) and bgr["image"].dtype == torch.float32
    assert bgr["image"][:, 0, 0].tolist() == [30, 20, 10]
    assert (bgr["height"], bgr["width"]) == (30, 40)  # detections map back to the full frame
    (rgb,) = detector_inputs([frame], double, bgr=False)
    assert rgb["image"][:, 0, 0].tolist() == [10, 20, 30]


class IncompatibleKeys(NamedTuple):
    """The shape of the report detectron2's DetectionCheckpointer (fvcore's Checkpointer) returns from loading."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


HEAD = "roi_heads.box_predictor"


def refusal(report: IncompatibleKeys | None) -> str:
    with pytest.raises(DetectorUnavailable) as err:
        require_complete_load(report, Path("w/model_0529999.pth"), Path("c/100doh.yaml"))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_head_of_another_size_is_refused_in_one_line():
    # What loading the released 81-way head into a model built with NUM_CLASSES = 1 reports.
    report = IncompatibleKeys(
        missing_keys=[],
        unexpected_keys=[],
        incorrect_shapes=[
            (f"{HEAD}.cls_score.weight", (81, 1024), (2, 1024)),
            (f"{HEAD}.cls_score.bias", (81,), (2,)),
            (f"{HEAD}.bbox_pred.weight", (320, 1024), (4, 1024)),
            (f"{HEAD}.bbox_pred.bias", (320,), (4,)),
        ],
    )
    message = refusal(report)
    assert message.startswith("w/model_0529999.pth: 4 model parameters were not loaded")
    assert f"{HEAD}.cls_score.weight: (81, 1024) in the file but (2, 1024) in the model" in message
    assert "and 1 more" in message and "c/100doh.yaml" in message and "NUM_CLASSES" in message


def test_parameters_missing_from_the_file_are_refused():
    # A file of another model: the checkpointer finds no tensor for some of ours. Names skipped for a
    # shape mismatch may also be listed as missing (newer detectron2 drops them before loading): once.
    report = IncompatibleKeys(
        missing_keys=["backbone.bottom_up.stem.conv1.weight", f"{HEAD}.cls_score.weight"],
        unexpected_keys=["head.fc.weight"],
        incorrect_shapes=[(f"{HEAD}.cls_score.weight", (81, 1024), (2, 1024))],
    )
    message = refusal(report)
    assert "2 model parameters were not loaded" in message
    assert "backbone.bottom_up.stem.conv1.weight: no tensor of that name and shape in the file" in message


def test_a_complete_load_passes_and_a_missing_report_is_refused():
    require_complete_load(
        IncompatibleKeys([], ["proposal_generator.anchor_generator.cell_anchors.0"], []), Path("w"), Path("c")
    )
    assert "no load report" in refusal(None)


@pytest.fixture
def staged_install(tmp_path, monkeypatch) -> Iterator[Callable[[dict[str, str | bytes]], None]]:
    """Write stand-in torchvision/detectron2 packages first on sys.path, and forget them afterwards."""

    def imported() -> list[str]:
        return [name for name in sys.modules if name.split(".")[0] in ("torchvision", "detectron2")]

    for name in imported():
        monkeypatch.delitem(sys.modules, name)
    packages = tmp_path / "site"
    packages.mkdir()
    monkeypatch.syspath_prepend(str(packages))

    def stage(files: dict[str, str | bytes]) -> None:
        for relative, content in files.items():
            path = packages / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        importlib.invalidate_caches()

    yield stage
    for name in imported():
        del sys.modules[name]


def script_error_line(tmp_path: Path, capsys) -> str:
    """Run the EGO4D script with detector files in place; return its only stderr line."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(b"")
    config, weights = tmp_path / "config.yaml", tmp_path / "model.pth"
    config.write_text("MODEL: {}\n")
    weights.write_bytes(b"")
    args = ["--detector-config", str(config), "--detector-weights", str(weights)]
    assert ego4d_to_hdf5.main([str(tmp_path / "videos"), str(tmp_path / "out"), *args]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


D2_PACKAGE = {"torchvision/__init__.py": "", "detectron2/__init__.py": ""}


def test_torchvision_built_for_another_torch_gives_one_line(staged_install, tmp_path, capsys):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("a real torchvision is installed; this test stages a broken one where there is none")
    # torchvision registers its ops at import; when its compiled library did not load, torch says:
    torchvision_init = 'import torch\ntorch.library.register_fake("torchvision::nms")(lambda *args: None)\n'
    staged_install(
        {
            **D2_PACKAGE,
            "torchvision/__init__.py": torchvision_init,
            "detectron2/checkpoint.py": "import torchvision\n",  # detectron2 imports it for its box ops
        }
    )
    line = script_error_line(tmp_path, capsys)
    assert "torchvision does not load next to torch" in line
    assert "operator torchvision::nms does not exist" in line and "release built for this torch" in line


def test_compiled_ops_that_do_not_load_give_one_line(staged_install, tmp_path, capsys):
    extension = "detectron2/_C" + importlib.machinery.EXTENSION_SUFFIXES[0]
    staged_install(
        {
            **D2_PACKAGE,
            extension: b"not a shared library",
            "detectron2/checkpoint.py": "from detectron2 import _C\n",
        }
    )
    line = script_error_line(tmp_path, capsys)
    assert "detectron2's compiled ops do not load" in line and "--no-build-isolation" in line


def test_detectron2_using_pillow_linear_gives_one_line(staged_install, tmp_path, capsys):
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        pytest.skip("Pillow < 10 still has Image.LINEAR")
    # detectron2 0.6's transforms use Image.LINEAR as a default argument, evaluated at import.
    transforms = "from PIL import Image\n\ndef extent(interp=Image.LINEAR):\n    return interp\n"
    staged_install({**D2_PACKAGE, "detectron2/checkpoint.py": transforms})
    line = script_error_line(tmp_path, capsys)
    assert "PIL.Image.LINEAR" in line and "Pillow<10" in line and "from source" in line


def test_missing_detectron2_is_named(tmp_path, capsys):
    if importlib.util.find_spec("detectron2") is not None:
        pytest.skip("detectron2 is installed here")
    assert "detectron2 is not installed" in script_error_line(tmp_path, capsys)


# The released 100DOH detector's architecture, from its two config files (only facts, written anew):
# Faster R-CNN, ResNeXt-101 32x8d FPN, detectron2's default ROI head of 80 classes (NUM_CLASSES unset).
BASE_CONFIG = """\
VERSION: 2
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE: {NAME: build_resnet_fpn_backbone}
  RESNETS: {OUT_FEATURES: [res2, res3, res4, res5]}
  FPN: {IN_FEATURES: [res2, res3, res4, res5]}
  ANCHOR_GENERATOR: {SIZES: [[32], [64], [128], [256], [512]], ASPECT_RATIOS: [[0.5, 1.0, 2.0]]}
  RPN: {IN_FEATURES: [p2, p3, p4, p5, p6], POST_NMS_TOPK_TEST: 1000}
  ROI_HEADS: {NAME: StandardROIHeads, IN_FEATURES: [p2, p3, p4, p5]}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 2, POOLER_RESOLUTION: 7}
"""
RELEASED_CONFIG = """\
_BASE_: base.yaml
MODEL:
  MASK_ON: false
  PIXEL_STD: [57.375, 57.120, 58.395]
  RESNETS: {STRIDE_IN_1X1: false, NUM_GROUPS: 32, WIDTH_PER_GROUP: 8, DEPTH: 101}
INPUT: {MIN_SIZE_TEST: 320, MAX_SIZE_TEST: 533}  # smaller than the released 800 only to keep the test fast
"""
ONE_CLASS_CONFIG = "_BASE_: released.yaml\nMODEL: {ROI_HEADS: {NUM_CLASSES: 1}}\n"


def test_released_architecture_loads_completely_and_labels_frames(tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI; see docs/data.md)")
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    for name, text in {
        "base.yaml": BASE_CONFIG,
        "released.yaml": RELEASED_CONFIG,
        "one.yaml": ONE_CLASS_CONFIG,
    }.items():
        (tmp_path / name).write_text(text)
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "released.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    state = build_model(cfg).state_dict()  # randomly initialised
    assert state[f"{HEAD}.cls_score.weight"].shape == (81, 1024)
    # Scores and boxes that do not depend on the random features: every anchor is a proposal and a box,
    # and every box is class 57 (not class 0) with score e^10 / (e^10 + 80) > 0.99.
    for name in ("proposal_generator.rpn_head.anchor_deltas", f"{HEAD}.bbox_pred", f"{HEAD}.cls_score"):
        state[f"{name}.weight"].zero_()
        state[f"{name}.bias"].zero_()
    state[f"{HEAD}.cls_score.bias"][57] = 10.0
    weights = tmp_path / "model_random.pth"
    torch.save({"model": state}, weights)

    detector = Detectron2HandDetector(tmp_path / "released.yaml", weights, device="cpu")
    loaded = detector.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key].cpu(), value) for key, value in state.items())
    frames = [
        np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8) for seed in range(2)
    ]
    assert detector(frames) == [True, True]
    with torch.no_grad():
        detector.model.roi_heads.box_predictor.cls_score.bias[80] = 20.0  # now every box is background
    assert detector(frames) == [False, False]

    with pytest.raises(
        DetectorUnavailable, match=r"4 model parameters were not loaded \(roi_heads\.box_predictor\."
    ):
        Detectron2HandDetector(tmp_path / "one.yaml", weights, device="cpu")
    truncated = tmp_path / "truncated.pth"
    with weights.open("rb") as full:
        truncated.write_bytes(full.read(4096))
    with pytest.raises(DetectorUnavailable, match="truncated.pth: not a readable detectron2 weights file"):
        Detectron2HandDetector(tmp_path / "released.yaml", truncated, device="cpu")
    (tmp_path / "unknown.yaml").write_text("MODEL: {NO_SUCH_KEY: 1}\n")
    with pytest.raises(DetectorUnavailable, match="unknown.yaml: not a usable detectron2 config"):
        Detectron2HandDetector(tmp_path / "unknown.yaml", weights, device="cpu")
