"""Image-quality metrics over the whole frame and over the inpainted (masked) region."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ldm.util import first_line

UNAVAILABLE = "unavailable"


def psnr(prediction: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8 images (H,W,3), over `region` (H,W bool) when given."""
    error = (prediction.astype(np.float64) - target.astype(np.float64)) ** 2
    mse = error[region].mean() if region is not None else error.mean()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(prediction: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean SSIM (7x7 Gaussian-free windows, per channel) of uint8 images, over `region` when given."""
    _, ssim_map = structural_similarity(prediction, target, channel_axis=2, data_range=255, full=True)
    ssim_map = ssim_map.mean(axis=2)
    return float(ssim_map[region].mean() if region is not None else ssim_map.mean())


def frame_metrics(
    prediction: np.ndarray, target: np.ndarray, mask: np.ndarray, known: np.ndarray | None = None
) -> dict[str, float]:
    """psnr_mask, ssim_mask (over the mask) and psnr, ssim (whole frame), only where `known` (if given).

    Pixels whose truth is unknown are left out of the averages and, so that SSIM windows reaching
    them neither gain nor lose, take the target's values first.
    """
    scored = mask
    if known is not None:
        prediction = np.where(known[..., None], prediction, target)
        scored = mask & known
    return {
        "psnr_mask": psnr(prediction, target, scored),
        "ssim_mask": ssim(prediction, target, scored),
        "psnr": psnr(prediction, target, known),
        "ssim": ssim(prediction, target, known),
    }


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)[:120]}"


@functools.cache
def _lpips_network() -> tuple[Any, str]:
    try:
        import lpips  # its AlexNet weights come from torchvision's download cache

        return lpips.LPIPS(net="alex", verbose=False).eval(), "available"
    except Exception as err:  # missing package, missing weights, no network: all mean "not here"
        return None, f"{UNAVAILABLE} ({_reason(err)})"


def _fid_metric() -> tuple[Any, str]:
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=2048), "available"
    except Exception as err:  # torch-fidelity's Inception weights are a download
        return None, f"{UNAVAILABLE} ({_reason(err)})"


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


class PerceptualMetrics:
    """LPIPS (mean over frames) and FID (over the set) when their networks are on this machine.

    Neither network can be downloaded here; `compute` then reports why it is unavailable.
    """

    def __init__(self) -> None:
        self.lpips, self.lpips_status = _lpips_network()
        self.fid, self.fid_status = _fid_metric()
        self.lpips_values: list[float] = []

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        pred, real = _to_tensor(prediction), _to_tensor(target)
        if self.lpips is not None:
            with torch.no_grad():
                value = self.lpips(pred.float() / 127.5 - 1, real.float() / 127.5 - 1)
            self.lpips_values.append(float(value))
        if self.fid is not None:
            self.fid.update(real, real=True)
            self.fid.update(pred, real=False)

    def compute(self) -> dict[str, float | str]:
        lpips_value = (
            float(np.mean(self.lpips_values))
            if self.lpips is not None and self.lpips_values
            else self.lpips_status
        )
        fid_value = float(self.fid.compute()) if self.fid is not None else self.fid_status
        return {"lpips": lpips_value, "fid": fid_value}
