#!/usr/bin/env python
"""GPU smoke test: what users run first, on one GPU, in a few minutes, with one JSON report.

    python scripts/gpu_smoke.py --out gpu_smoke.json     # one CUDA GPU: about 4 minutes
    python scripts/gpu_smoke.py --cpu --out smoke.json   # the same checks, smaller, on the CPU

Each check is timed and recorded with what it found; a failing check is recorded (its error's first
line) and the others still run. The exit status is 1 if any check failed.

  environment      versions, the GPU, its bf16 support, the float32 matmul precision set-up
  train            configs/inpaint_4frame_tiny.yaml on the miniature fixture data, in bf16-mixed and
                   in fp32, with validation and image logging; the fp32 run then resumed for 2 steps
  first_stage_ddp  configs/vq_f4_small.yaml under DDP (its codebook gets no gradient at first)
  demo             demo_script.py on demo_data in fp32, bf16 and fp16 (fp32 and bf16 on the CPU),
                   each result's PSNR against fp32's
  factorize        scripts/factorize.py --devices 1 on demo_data's frames and masks (both with one
                   DDIM step on the CPU)
  unet             a UNet forward of the official config (random weights, batch 4, bf16) with
                   activations channels-last and contiguous (the tiny config, batch 1, in fp32 on
                   the CPU)
  memory           one official-config training step at batch 4 in bf16-mixed, with and without
                   use_checkpoint: peak CUDA memory allocated beside benchmarks/training_memory.py's
                   estimate (the tiny config at batch 1, estimate only, on the CPU)

To carry to a GPU machine without network that has Python 3.12 with torch 2.11+cu130,
pytorch-lightning 2.6.6, einops, h5py, imageio, OpenCV, Pillow, safetensors, scikit-image and tqdm:
the wheels of omegaconf (0.3 MB) and imageio-ffmpeg (0.6.0, the oldest the project supports, is
29 MB; later ones are over 60 MB), downloaded here with

    pip download --dest wheels --only-binary=:all: --no-deps --python-version 3.12 \
        --platform manylinux2014_x86_64 omegaconf==2.4.0 imageio-ffmpeg==0.6.0

and installed there with `pip install --no-index --find-links wheels omegaconf imageio-ffmpeg`
(tensorboard is optional: training logs to CSV without it). The project itself needs no install
(an editable one would need setuptools, which pip cannot fetch offline): run the script from a
copy of the repository, and the programs it starts find `ldm` there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import describe, timed  # noqa: E402
from benchmarks.training_memory import (  # noqa: E402
    batch_shapes,
    estimate,
    measure_steps,
    optimizer_of,
    training_batch,
    training_model,
)
from ldm.inference.device import native_bf16, resolve_device  # noqa: E402
from ldm.modules.diffusionmodules import openaimodel  # noqa: E402
from ldm.util import first_line, instantiate_from_config  # noqa: E402
from scripts.make_fixture_data import prepare_fixture_data  # noqa: E402

log = logging.getLogger("gpu_smoke")
TINY = REPO / "configs" / "inpaint_4frame_tiny.yaml"
OFFICIAL = REPO / "configs" / "inpaint_4frame.yaml"
FIRST_STAGE = REPO / "configs" / "vq_f4_small.yaml"
DEMO = REPO / "demo_data"
SHORT_RUN = (
    # 2 training batches per epoch, 1 validation batch, images every 2 steps (1 sample, 2 DDIM steps)
    "data.params.batch_size=2",
    "data.params.num_workers=0",
    "lightning.trainer.limit_train_batches=2",
    "lightning.trainer.limit_val_batches=1",
    "lightning.trainer.num_sanity_val_steps=0",
    "lightning.trainer.log_every_n_steps=1",
    "lightning.trainer.enable_progress_bar=false",
    "lightning.callbacks.image_logger.params.batch_frequency=2",
    "lightning.callbacks.image_logger.params.max_images=1",
    "model.params.log_config.params.ddim_steps=2",
)

FIRST_STAGE_SHORT_RUN = (
    # 2 steps, then 1 validation batch: the codebook starts later (quantize_from_step), so it idles
    "lightning.trainer.max_steps=2",
    "lightning.trainer.val_check_interval=2",
    "lightning.trainer.limit_val_batches=1",
    "lightning.trainer.enable_progress_bar=false",
    "data.params.batch_size=2",
    "data.params.num_workers=0",
)


@dataclass(frozen=True)
class Smoke:
    """Where and how big: `cpu` runs every check on the CPU at a smaller size."""

    cpu: bool
    work: Path
    data_env: dict[str, str]

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    @property
    def gpus(self) -> list[str]:
        """main.py's device flags."""
        return [] if self.cpu else ["--gpus", "0,"]

    @property
    def sampling(self) -> list[str]:
        """Inference flags: the device, and on the CPU a single DDIM step."""
        return ["--device", self.device, *(["--steps", "1"] if self.cpu else [])]


def run_python(*args: str | Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run a repository program with this interpreter; its stderr's tail in the error if it fails.

    The repository comes first on the program's PYTHONPATH, so that scripts/ programs import its `ldm`
    where the project is not installed."""
    environment = os.environ | (env or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(str(args[0])).name} exited with {result.returncode}: {tail}")
    return result.stdout


def saved_step(run: Path) -> int:
    return int(
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    )


def only_run(logdir: Path) -> Path:
    (run,) = logdir.iterdir()
    return run


# ------------------------------------------------------------------------------------------ checks


def check_environment(smoke: Smoke) -> dict[str, Any]:
    device = resolve_device(smoke.device)  # also sets up TF32 on CUDA, as every command does
    result = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "device": describe(device),
        "native_bf16": native_bf16(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        result["capability"] = list(torch.cuda.get_device_capability(device))
        result["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return result


def check_train(smoke: Smoke) -> dict[str, Any]:
    steps = 2 if smoke.cpu else 4
    lists = [
        f"data.params.train.params.visor_files={smoke.data_env['VISOR_TRAIN_LIST']}",
        f"data.params.validation.params.visor_files={smoke.data_env['VISOR_VAL_LIST']}",
    ]
    result: dict[str, Any] = {}
    for precision in ("bf16-mixed", "32-true"):
        logdir = smoke.work / f"train_{precision}"
        start = time.perf_counter()
        run_python(
            "main.py",
            "--base",
            TINY,
            "-t",
            "--no-test",
            "--logdir",
            logdir,
            *smoke.gpus,
            *SHORT_RUN,
            *lists,
            f"lightning.trainer.max_steps={steps}",
            f"lightning.trainer.precision={precision}",
            env=smoke.data_env,
        )
        run = only_run(logdir)
        result[precision] = {
            "seconds": round(time.perf_counter() - start, 1),
            "steps": saved_step(run),
            "images": len(list((run / "images").rglob("*.png"))),
        }
        if saved_step(run) != steps:
            raise RuntimeError(f"{precision}: saved step {saved_step(run)}, expected {steps}")
    run = only_run(smoke.work / "train_32-true")
    run_python(
        "main.py",
        "--resume",
        run,
        "-t",
        "--no-test",
        *smoke.gpus,
        f"lightning.trainer.max_steps={steps + 2}",
        env=smoke.data_env,
    )
    result["resumed_to_step"] = saved_step(run)
    if result["resumed_to_step"] != steps + 2:
        raise RuntimeError(f"resume: saved step {result['resumed_to_step']}, expected {steps + 2}")
    return result


def check_first_stage_ddp(smoke: Smoke) -> dict[str, Any]:
    logdir = smoke.work / "first_stage"
    devices = [] if smoke.cpu else ["--gpus", "0,"]
    run_python(
        "main.py",
        "--base",
        FIRST_STAGE,
        "-t",
        "--no-test",
        "--logdir",
        logdir,
        *devices,
        "lightning.trainer.strategy=ddp",
        *FIRST_STAGE_SHORT_RUN,
    )
    return {"steps": saved_step(only_run(logdir))}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def check_demo(smoke: Smoke) -> dict[str, Any]:
    dtypes = ("fp32", "bf16") if smoke.cpu else ("fp32", "bf16", "fp16")
    result: dict[str, Any] = {}
    for dtype in dtypes:
        out = smoke.work / f"demo_{dtype}.png"
        start = time.perf_counter()
        run_python("demo_script.py", DEMO, "--out", out, "--dtype", dtype, *smoke.sampling)
        result[dtype] = {"seconds": round(time.perf_counter() - start, 1)}
    reference = np.asarray(Image.open(smoke.work / "demo_fp32.png"))
    for dtype in dtypes[1:]:
        result[dtype]["psnr_vs_fp32"] = round(
            psnr(np.asarray(Image.open(smoke.work / f"demo_{dtype}.png")), reference), 2
        )
    return result


def check_factorize(smoke: Smoke) -> dict[str, Any]:
    out = smoke.work / "factorize"
    run_python(
        "scripts/factorize.py",
        "--frames",
        DEMO / "raw",
        "--masks",
        DEMO / "masks",
        "--out",
        out,
        "--frame-skip",
        "1",
        "--devices",
        "1",
        *smoke.sampling,
    )
    written = len(list((out / "environment").glob("*.png")))
    if written != len(list((DEMO / "raw").iterdir())) or not (out / "environment.mp4").is_file():
        raise RuntimeError(f"{out}: {written} environment frames, environment.mp4 missing or frames missing")
    return {"frames": written}


@contextlib.contextmanager
def activation_layout(unet: torch.nn.Module, device: str, channels_last: bool) -> Iterator[None]:
    """Run the UNet on `device` with activations and 3D conv weights channels-last or contiguous."""
    before = set(openaimodel.CHANNELS_LAST_DEVICES)
    if channels_last:
        openaimodel.CHANNELS_LAST_DEVICES.add(device)
    else:
        openaimodel.CHANNELS_LAST_DEVICES.discard(device)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    for param in unet.parameters():
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=layout)
    try:
        yield
    finally:
        openaimodel.CHANNELS_LAST_DEVICES.clear()
        openaimodel.CHANNELS_LAST_DEVICES.update(before)


def check_unet(smoke: Smoke) -> dict[str, Any]:
    config, dtype = (TINY, torch.float32) if smoke.cpu else (OFFICIAL, torch.bfloat16)
    params = OmegaConf.load(config).model.params.unet_config.params
    torch.manual_seed(0)
    unet = instantiate_from_config(OmegaConf.load(config).model.params.unet_config).eval()
    unet = unet.to(device=smoke.device, dtype=dtype).requires_grad_(False)
    size = int(params.image_size)
    batch = 1 if smoke.cpu else 4
    x = torch.randn(batch, int(params.in_channels), 4, size, size, device=smoke.device, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device=smoke.device)
    result: dict[str, Any] = {"config": config.name, "dtype": str(dtype).removeprefix("torch.")}
    for name, channels_last in (("channels_last", True), ("contiguous", False)):
        with activation_layout(unet, smoke.device, channels_last), torch.no_grad():
            seconds = timed(lambda: unet(x, t), 2 if smoke.cpu else 10, x.device)
            result[f"seconds_{name}"] = round(statistics.median(seconds), 4)
    return result


def check_memory(smoke: Smoke) -> dict[str, Any]:
    config_path, batch_size = (TINY, 1) if smoke.cpu else (OFFICIAL, 4)
    config = OmegaConf.load(config_path)
    result: dict[str, Any] = {"config": config_path.name, "batch": batch_size, "precision": "bf16-mixed"}
    for use_checkpoint in (False, True):
        row = {
            "estimate_gib": asdict(estimate(config_path, batch_size, "bf16-mixed", use_checkpoint))[
                "peak_gib"
            ]
        }
        if not smoke.cpu:
            peak = measured_step_peak(config, batch_size, use_checkpoint, torch.device(smoke.device))
            row["measured_gib"] = round(peak / 2**30, 2)
        result[f"use_checkpoint_{use_checkpoint}"] = row
    return result


def measured_step_peak(config: Any, batch_size: int, use_checkpoint: bool, device: torch.device) -> int:
    """Peak accelerator memory allocated during a training step on `device` (random weights, random
    batch)."""
    memory = torch.accelerator.memory
    memory.empty_cache()
    model = training_model(config, use_checkpoint).to(device)
    batch = training_batch(batch_size, *batch_shapes(config), device=device)
    for value in batch.values():
        if value.is_floating_point():
            value.uniform_(-1, 1)
    optimizer = optimizer_of(model)
    peak = measure_steps(
        model,
        optimizer,
        batch,
        "bf16-mixed",
        lambda: memory.reset_peak_memory_stats(device),
        lambda: memory.max_memory_allocated(device),
    )
    del model, optimizer, batch
    memory.empty_cache()
    return peak


CHECKS: dict[str, Callable[[Smoke], dict[str, Any]]] = {
    "environment": check_environment,
    "train": check_train,
    "first_stage_ddp": check_first_stage_ddp,
    "demo": check_demo,
    "factorize": check_factorize,
    "unet": check_unet,
    "memory": check_memory,
}


def run_checks(smoke: Smoke, names: list[str]) -> dict[str, dict[str, Any]]:
    report = {}
    for name in names:
        start = time.perf_counter()
        try:
            report[name] = {"ok": True, **CHECKS[name](smoke)}
        except Exception as err:  # a smoke test records every failure and goes on
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {first_line(err)}"}
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        log.info(
            "%-16s %s (%.0f s)",
            name,
            "ok" if report[name]["ok"] else report[name]["error"],
            report[name]["seconds"],
        )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke.json"), help="the JSON report")
    parser.add_argument("--cpu", action="store_true", help="run every check on the CPU, smaller (a dry run)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS), help="some checks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.cpu and not torch.cuda.is_available():
        print(
            "error: CUDA is not available on this machine (--cpu runs the checks on the CPU)", file=sys.stderr
        )
        return 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidm_smoke_") as tmp:
        work = Path(tmp)
        data_env = prepare_fixture_data(work / "data")
        checks = run_checks(Smoke(args.cpu, work, data_env), args.only)
    report = {"seconds": round(time.perf_counter() - started, 1), "cpu_dry_run": args.cpu, "checks": checks}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, check in checks.items() if not check["ok"]]
    print(
        f"{args.out}: {len(checks) - len(failed)} of {len(checks)} checks passed in {report['seconds']:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
