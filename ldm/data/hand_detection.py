"""Hand detection for labelling EGO4D frames: a small interface and the published detectron2 backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_CONFIG = Path("100doh/faster_rcnn_X_101_32x8d_FPN_3x_100DOH.yaml")
DEFAULT_WEIGHTS = Path("100doh/models/model_0529999.pth")
SCORE_THRESHOLD = 0.7

INSTALL_HINT = (
    "the EGO4D hand detector needs detectron2 and the 100 Days of Hands model: install detectron2 "
    "(pip install 'git+https://github.com/facebookresearch/detectron2.git'), then put the 100DOH "
    "detectron2 configs (faster_rcnn_X_101_32x8d_FPN_3x_100DOH.yaml and Base-RCNN-FPN.yaml) in 100doh/ "
    "and the weights in 100doh/models/model_0529999.pth, or pass --detector-config/--detector-weights"
)


class DetectorUnavailable(RuntimeError):
    """The detector's library or weights are missing; the message says how to install them."""


class HandDetector(Protocol):
    """Labels frames by whether they show a hand."""

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        """For RGB uint8 frames (H, W, 3): True where a hand is detected with score ≥ the threshold."""
        ...


class Detectron2HandDetector:
    """The 100 Days of Hands Faster R-CNN (X-101 FPN) on detectron2: one class, "hand"."""

    def __init__(
        self,
        config_file: Path = DEFAULT_CONFIG,
        weights: Path = DEFAULT_WEIGHTS,
        threshold: float = SCORE_THRESHOLD,
        device: str | None = None,
    ):
        for path in (config_file, weights):
            if not Path(path).is_file():
                raise DetectorUnavailable(f"{path}: not found; {INSTALL_HINT}")
        try:
            import detectron2.data.transforms as transforms
            from detectron2.checkpoint import DetectionCheckpointer
            from detectron2.config import get_cfg
            from detectron2.modeling import build_model
        except ImportError:
            raise DetectorUnavailable(f"detectron2 is not installed; {INSTALL_HINT}") from None
        import torch

        cfg = get_cfg()
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
        cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_model(cfg).eval()
        DetectionCheckpointer(self.model).load(str(weights))
        self.resize = transforms.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self.threshold = threshold

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        import torch

        inputs = []
        for frame in frames:
            image = frame[..., ::-1] if self.bgr else frame
            resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
            tensor = torch.as_tensor(resized.astype(np.float32).transpose(2, 0, 1))
            inputs.append({"image": tensor, "height": frame.shape[0], "width": frame.shape[1]})
        with torch.inference_mode():
            outputs = self.model(inputs)
        return [bool((out["instances"].scores >= self.threshold).any()) for out in outputs]
