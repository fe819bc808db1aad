"""What every benchmark shares: the configs, timing, FLOP counting, memory readings, random weights,
and running one measurement in a fresh process (so that its peak memory is its own)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = "configs/inpaint_4frame.yaml"
SMALL = "configs/vidm_small.yaml"
SMALL_WEIGHTS = "models/vidm_small/vidm_small.safetensors"
TINY = "configs/inpaint_4frame_tiny.yaml"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls (after one untimed call)."""
    fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """The two matmuls of attention, as PyTorch counts its CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """PyTorch's FLOP counter, taught the CPU flash-attention kernel, which it counts as zero."""
    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_flash: cpu_flash_attention_flops})


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def describe(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, threads and vector extension."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()})"


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else 'CPU'."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "CPU"


def random_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill the zero-initialised parameters (output convs) with small random values, so that no
    layer hides the ones before it; the default initialisation stays elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return module


def unet_inputs(config: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded noisy latent with its conditioning, (B,C,T,h,w) or (B,C,h,w), and timesteps for the
    UNet of `config`."""
    p = OmegaConf.load(ROOT / config).model.params.unet_config.params
    size, frames = int(p.image_size), int(p.get("dim_join", {}).get("num", 4))
    shape = (batch, p.in_channels, frames, size, size) if p.dims == 3 else (batch, p.in_channels, size, size)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator).to(device)
    return x, torch.randint(0, 1000, (batch,), generator=generator).to(device)


def forward_row(
    code: str, config: str, batch: int, device: str, dtype: str, seconds: list[float], flop: float
) -> dict:
    """One UNet forward measurement: which code, the case, the median seconds and the TFLOPs counted."""
    return {
        "code": code,
        "config": config,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "seconds": statistics.median(seconds),
        "tflop": flop / 1e12,
    }


def run_worker(workload: str, **kwargs: Any) -> dict:
    """benchmarks/<workload>.py's measurement with these arguments, in a fresh process; its result,
    or {'error': ...} (its last line of stderr) if it failed."""
    command = [sys.executable, str(ROOT / "benchmarks" / f"{workload}.py"), "--worker", json.dumps(kwargs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {workload} {kwargs}: failed ({tail})", file=sys.stderr)
        return {"error": tail, **kwargs}
    result = json.loads(lines[-1])
    print(f"  {workload}: {json.dumps(result)}", file=sys.stderr)
    return result


def worker_main(measure: Callable[..., dict]) -> int:
    """The entry point of a workload file: `--worker '{json kwargs}'` prints measure(**kwargs) as JSON."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        print(
            f"usage: {sys.argv[0]} --worker '{{json arguments}}' (run by benchmarks/run.py)", file=sys.stderr
        )
        return 2
    print(json.dumps(measure(**json.loads(sys.argv[2]))))
    return 0
