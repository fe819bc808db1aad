"""Hand detection for labelling EGO4D frames: the labelling rule and the 100 Days of Hands backend.

The published labels come from the 100 Days of Hands Faster R-CNN (X-101 FPN) on detectron2, run on
each full-resolution frame with detectron2's own test-time resize: a frame shows a hand when the
detector returns any instance with score ≥ 0.7, whatever its class. The released weights were
trained with detectron2's default head (80 classes), and their config is used as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from traceback import walk_tb
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import PIL
import torch
import yaml  # detectron2's configs are YAML; it depends on PyYAML

from ldm.util import first_line

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("100doh/faster_rcnn_X_101_32x8d_FPN_3x_100DOH.yaml")
DEFAULT_WEIGHTS = Path("100doh/models/model_0529999.pth")
SCORE_THRESHOLD = 0.7

DETECTRON2_SOURCE = "git+https://github.com/facebookresearch/detectron2.git"
BUILD_HINT = (
    "build detectron2 from source against the installed torch: "
    f"pip install --no-build-isolation '{DETECTRON2_SOURCE}'"
)
INSTALL_HINT = (
    "the EGO4D hand detector needs detectron2 and the 100 Days of Hands model: install detectron2 "
    f"(not on PyPI; {BUILD_HINT}), then put the 100DOH detectron2 configs "
    "(faster_rcnn_X_101_32x8d_FPN_3x_100DOH.yaml and Base-RCNN-FPN.yaml) in 100doh/ and the weights in "
    "100doh/models/model_0529999.pth, or pass --detector-config/--detector-weights"
)
LISTED_PARAMETERS = 3


class DetectorUnavailable(RuntimeError):
    """The detector cannot run: its library, config or weights are missing, broken or mismatched.

    The message is one line naming the cause and the fix.
    """


class HandDetector(Protocol):
    """Labels frames by whether they show a hand."""

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:
        """For full-resolution RGB uint8 frames (H, W, 3): True where a hand is detected."""
        ...


class LoadReport(Protocol):
    """What detectron2's checkpointer reports after loading weights (fvcore's incompatible keys)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def unloaded_parameters(report: LoadReport) -> list[str]:
    """The model parameters that did not get a value from the weights file, each with the reason."""
    skipped = [
        f"{name}: {tuple(in_file)} in the file but {tuple(in_model)} in the model"
        for name, in_file, in_model in report.incorrect_shapes
    ]
    skipped_names = {name for name, _, _ in report.incorrect_shapes}
    missing = [
        f"{name}: no tensor of that name and shape in the file"
        for name in report.missing_keys
        if name not in skipped_names
    ]
    return skipped + missing


def require_complete_load(report: LoadReport | None, weights: Path, config: Path) -> None:
    """Refuse, in one line, a model that the checkpointer did not fill entirely from `weights`."""
    if report is None:
        raise DetectorUnavailable(f"{weights}: detectron2's checkpointer gave no load report; {BUILD_HINT}")
    unloaded = unloaded_parameters(report)
    if not unloaded:
        return
    listed = "; ".join(unloaded[:LISTED_PARAMETERS])
    more = f"; and {len(unloaded) - LISTED_PARAMETERS} more" if len(unloaded) > LISTED_PARAMETERS else ""
    raise DetectorUnavailable(
        f"{weights}: {len(unloaded)} model parameters were not loaded ({listed}{more}), so the detector "
        f"would label frames with random weights; use the config these weights were trained with, unchanged "
        f"and with no NUM_CLASSES override (given: {config})"
    )


def frames_with_hand(outputs: Sequence[dict[str, Any]], threshold: float = SCORE_THRESHOLD) -> list[bool]:
    """The published rule on detectron2's outputs: any instance, of any class, with score ≥ threshold."""
    return [bool((out["instances"].scores >= threshold).any()) for out in outputs]


def detector_inputs(
    frames: Sequence[np.ndarray], resize: Callable[[np.ndarray], np.ndarray], bgr: bool
) -> list[dict[str, Any]]:
    """detectron2's inputs for full RGB frames: its channel order, its test-time resize, the original size."""
    inputs = []
    for frame in frames:
        image = np.ascontiguousarray(frame[..., ::-1] if bgr else frame)
        resized = resize(image)
        tensor = torch.as_tensor(resized.astype(np.float32).transpose(2, 0, 1))
        inputs.append({"image": tensor, "height": frame.shape[0], "width": frame.shape[1]})
    return inputs


def _from_torchvision(err: BaseException) -> bool:
    """Whether an import error comes from torchvision (missing, or raised while it imported), which
    detectron2 imports for its box ops (NMS, RoIAlign)."""
    if (getattr(err, "name", None) or "").split(".")[0] == "torchvision":
        return True
    return any(
        "torchvision" in Path(frame.f_code.co_filename).parts for frame, _ in walk_tb(err.__traceback__)
    )


def _from_compiled_ops(err: BaseException) -> bool:
    """Whether an import error comes from detectron2._C, the extension compiled against torch."""
    module = getattr(err, "name", None) or ""
    library = Path(getattr(err, "path", None) or "").name
    return (
        module == "detectron2._C"
        or library.startswith("_C.")
        or "detectron2._C" in str(err)
        or "'_C'" in str(err)
    )


def _detectron2_import_error(err: BaseException) -> DetectorUnavailable:
    """One line naming why detectron2 did not import and how to fix it."""
    cause = first_line(err)
    if _from_torchvision(err):
        return DetectorUnavailable(
            f"torchvision does not load next to torch {torch.__version__} ({cause}): install the "
            f"torchvision release built for this torch (the same release pair and CPU/CUDA variant)"
        )
    if isinstance(err, ModuleNotFoundError) and not (err.name or "").startswith("detectron2"):
        return DetectorUnavailable(
            f"detectron2 needs the module {err.name}, which is not installed: install it, or reinstall "
            "detectron2 with its dependencies"
        )
    if isinstance(err, AttributeError) and "LINEAR" in cause:
        return DetectorUnavailable(
            f"this detectron2 (0.6 or older) uses PIL.Image.LINEAR, which Pillow 10 removed (installed: Pillow "
            f"{PIL.__version__}): {BUILD_HINT} (its source no longer uses it), or install 'Pillow<10'"
        )
    if _from_compiled_ops(err):
        return DetectorUnavailable(
            f"detectron2's compiled ops do not load ({cause}): they must be built against the installed "
            f"torch {torch.__version__}; {BUILD_HINT}"
        )
    return DetectorUnavailable(f"detectron2 does not import ({type(err).__name__}: {cause}); {BUILD_HINT}")


def import_detectron2() -> SimpleNamespace:
    """The detectron2 pieces the backend uses; a broken or missing install becomes one DetectorUnavailable line."""
    if importlib.util.find_spec("detectron2") is None:
        raise DetectorUnavailable(f"detectron2 is not installed; {INSTALL_HINT}")
    try:
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data.transforms import ResizeShortestEdge
        from detectron2.modeling import build_model
    except (ImportError, OSError, RuntimeError, AttributeError) as err:
        raise _detectron2_import_error(err) from None
    return SimpleNamespace(
        DetectionCheckpointer=DetectionCheckpointer,
        get_cfg=get_cfg,
        ResizeShortestEdge=ResizeShortestEdge,
        build_model=build_model,
    )


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the named loggers inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_weights(d2: SimpleNamespace, model: Any, weights: Path) -> LoadReport | None:
    """Load `weights` into `model` with detectron2's checkpointer; returns the checkpointer's own report."""

    class ReportingCheckpointer(d2.DetectionCheckpointer):
        report = None

        def _load_model(self, checkpoint: Any) -> Any:
            self.report = super()._load_model(checkpoint)
            return self.report

    checkpointer = ReportingCheckpointer(model)
    try:
        with quiet_loggers("fvcore", "detectron2"):  # their load messages; the report says what matters
            checkpointer.load(str(weights))
    except (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, pickle.UnpicklingError) as err:
        raise DetectorUnavailable(
            f"{weights}: not a readable detectron2 weights file ({first_line(err)})"
        ) from None
    return checkpointer.report


def read_config(d2: SimpleNamespace, config_file: Path) -> Any:
    """detectron2's defaults merged with `config_file` (and the files it names as _BASE_), unchanged."""

    cfg = d2.get_cfg()
    try:
        cfg.merge_from_file(str(config_file))
    except (OSError, KeyError, ValueError, TypeError, AssertionError, yaml.YAMLError) as err:
        raise DetectorUnavailable(
            f"{config_file}: not a usable detectron2 config ({first_line(err)})"
        ) from None
    return cfg


class Detectron2HandDetector:
    """The 100 Days of Hands Faster R-CNN on detectron2, built from its config exactly as given."""

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
        d2 = import_detectron2()

        cfg = read_config(d2, Path(config_file))
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
        cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = d2.build_model(cfg).eval()
        report = load_weights(d2, self.model, Path(weights))
        require_complete_load(report, Path(weights), Path(config_file))
        log.info(
            "hand detector: every parameter loaded from %s (%s, %d classes; %d unused tensors in the file)",
            weights,
            config_file,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            len(report.unexpected_keys),
        )
        size = cfg.INPUT.MIN_SIZE_TEST
        self.test_resize = d2.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self.threshold = threshold

    def resize(self, image: np.ndarray) -> np.ndarray:
        """detectron2's test-time resize (short side INPUT.MIN_SIZE_TEST, long side at most MAX_SIZE_TEST)."""
        return self.test_resize.get_transform(image).apply_image(image)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[bool]:

        with torch.inference_mode():
            outputs = self.model(detector_inputs(frames, self.resize, self.bgr))
        return frames_with_hand(outputs, self.threshold)
