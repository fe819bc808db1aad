#!/usr/bin/env python
"""Speed and memory of the model and the pipeline around it: one table, one JSON file.

Every measurement runs in a fresh process (so peak memory is its own) and prints its result:

  peak   the machine's 4096x4096 matmul rate in fp32 and bf16 (fp16 on CUDA): the ceiling that the
         UNet figures are a fraction of; on the CPU also the yardstick of ../shared/tools/calib.py
         (when present), which normalises a forward to the published implementation's speed
  unet   UNet forward per config, batch and dtype: seconds, achieved TFLOP/s and fraction of the
         matmul peak, peak memory (RSS on the CPU, allocated on CUDA), and for bf16/fp16 the relative
         L2 error against fp32 on the same random weights (every parameter random, none zero)
  ddim   the demo workload: 4 targets, each with 3 context frames, sampled with DDIM and decoded;
         seconds per frame (with the embedded small model, or random weights of a config)
  load   loading a checkpoint in the released layout (training weights, EMA, optimizer state) that
         this script writes into --workdir and deletes afterwards: seconds, and peak RSS over the
         bytes of the weights kept (after touching every kept weight)
  train  training steps/s in Lightning's loop on one in-memory batch, fp32 against bf16-mixed
  data   NoHands samples/s in one process (the miniature fixture unless EPIC_ROOT, DATA_LOCATION and
         EGO4D_LOCATION are set)

    python scripts/benchmark.py                      # everything that fits a CPU, about 15 minutes
    python scripts/benchmark.py --only unet ddim     # some sections
    python scripts/benchmark.py --gpu-check          # the official 4-frame demo in bf16 on CUDA

Run it on a quiet machine: other work on the same cores changes every figure. On a CPU without AMX
or AVX512-BF16, bf16 is emulated (about 80x slower than fp32 on AVX2): its bf16 cases are skipped
and the table says so, unless --emulated-bf16 is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ldm.data.fixture_data import prepare_fixture_data
from ldm.inference.inpainter import Inpainter, seeded_generator
from ldm.inference.model import (
    ModelChoice,
    emulates_bf16,
    inference_config,
    load_model,
    model_resolution,
    precision,
    prepare_for_inference,
    read_model_config,
)
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT.parent / "shared" / "tools" / "calib.py"
PUBLISHED_UNITS = 5.8
"""The published implementation's full-config UNet forward in yardstick units (calib.py's docstring)."""

OFFICIAL = "configs/inpaint_4frame.yaml"
SMALL = "configs/vidm_small.yaml"
TINY = "configs/inpaint_4frame_tiny.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EMULATED = "bf16 is emulated on this CPU (no AMX or AVX512-BF16); --emulated-bf16 times it anyway"
"""Why the bf16 cases are skipped on such a CPU: they would take hours and show nothing."""


# ------------------------------------------------------------------------------------ measuring


def cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """The two matmuls of attention, as PyTorch counts its CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """PyTorch's FLOP counter, taught the CPU flash-attention kernel it leaves out (PyTorch 2.13
    counts that op as zero, which hid 190 of the full config's 1347 GFLOP per UNet step)."""
    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_flash: cpu_flash_attention_flops})


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def yardstick() -> float | None:
    """calib.py's seconds for its fixed workload, or None where the file is not there."""
    if not CALIB.is_file():
        return None
    spec = importlib.util.spec_from_file_location("calib", CALIB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.calib_seconds()


def unet_config(config: str):
    return OmegaConf.load(ROOT / config).model.params.unet_config


def random_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill the zero-initialised parameters (output convs) with small random values, so that no
    layer hides the ones before it; the default initialisation stays elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return module


def unet_inputs(cfg, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    p = cfg.params
    size, frames = int(p.image_size), int(p.get("dim_join", {}).get("num", 4))
    shape = (batch, p.in_channels, frames, size, size) if p.dims == 3 else (batch, p.in_channels, size, size)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator).to(device)
    return x, torch.randint(0, 1000, (batch,), generator=generator).to(device)


# ---------------------------------------------------------------------------------------- workers


def work_peak(device: str, bf16: bool = True) -> dict:
    dev = torch.device(device)
    result: dict[str, Any] = {"device": describe(dev)}
    dtypes = ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("fp32", "bf16")
    for name in dtypes if bf16 else ("fp32",):
        a = torch.randn(4096, 4096, device=dev, dtype=DTYPES[name])
        seconds = min(timed(lambda a=a: a @ a, 5, dev))
        result[f"matmul_tflops_{name}"] = 2 * 4096**3 / seconds / 1e12
    if dev.type == "cpu":
        result["yardstick_s"] = yardstick()
    return result


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()})"


def work_unet(config: str, batch: int, device: str, dtype: str, repeats: int) -> dict:
    """Forward time and memory of one UNet; the yardstick is read before the model exists."""
    dev = torch.device(device)
    stick = yardstick() if dev.type == "cpu" else None
    cfg = unet_config(config)
    torch.manual_seed(0)
    unet = random_weights(instantiate_from_config(cfg)).eval()
    x, t = unet_inputs(cfg, batch, dev)
    reference = None
    with torch.no_grad():
        if dtype != "fp32":
            reference = prepare_for_inference(unet, dev, torch.float32)(x, t).float()
        unet = prepare_for_inference(unet, dev, DTYPES[dtype])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with precision(dev, DTYPES[dtype]):
            with flop_counter() as counter:
                out = unet(x, t)
            seconds = timed(lambda: unet(x, t), repeats, dev)
    result = {
        "config": config,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "seconds": statistics.median(seconds),
        "tflop": counter.get_total_flops() / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else peak_rss_gib(),
        "yardstick_s": stick,
    }
    if reference is not None:
        result["rel_l2_vs_fp32"] = float((out.float() - reference).norm() / reference.norm())
    return result


def work_ddim(config: str, checkpoint: str | None, device: str, dtype: str, steps: int) -> dict:
    """The demo workload: 4 targets (4 frames each) at the model's size, DDIM `steps` with eta 1."""
    dev, torch_dtype = torch.device(device), DTYPES[dtype]
    if checkpoint:
        model, size = load_model(ModelChoice(ROOT / config, ROOT / checkpoint, checkpoint), dev, torch_dtype)
    else:
        model_config = read_model_config(ROOT / config)
        size = model_resolution(model_config)
        torch.manual_seed(0)
        model = instantiate_from_config(inference_config(model_config))
        model = prepare_for_inference(random_weights(model), dev, torch_dtype)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 4, size, size, 3), dtype=np.uint8)
    masks = np.zeros((4, 4, size, size), bool)
    masks[:, :, size // 3 :, size // 4 : size // 2] = True
    Inpainter(model, torch_dtype, steps=1)(frames, masks)  # warm-up
    inpainter = Inpainter(model, torch_dtype, steps=steps, eta=1.0)
    seconds = timed(lambda: inpainter(frames, masks, seeded_generator(dev, 0)), 1, dev)[0]
    return {
        "config": config,
        "weights": checkpoint or "random",
        "device": device,
        "dtype": dtype,
        "steps": steps,
        "size": size,
        "seconds": seconds,
        "seconds_per_frame": seconds / 4,
    }


def work_make_checkpoint(config: str, path: str) -> dict:
    """A checkpoint of `config` in the released layout: state_dict (weights, EMA, schedule), AdamW
    state for every trainable parameter, and Lightning's bookkeeping."""
    model = instantiate_from_config(OmegaConf.load(ROOT / config).model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [{"lr": 1e-6, "params": list(range(len(params)))}],
    }
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": model.state_dict(),
            "optimizer_states": [optimizer],
            "lr_schedulers": [],
            "callbacks": {},
        },
        path,
    )
    return {"bytes": Path(path).stat().st_size}


def work_load(config: str, path: str) -> dict:
    """Load for inference (fp32, CPU), touch every kept weight, report peak RSS against their bytes."""
    baseline = rss_gib()
    start = time.perf_counter()
    model, _ = load_model(ModelChoice(ROOT / config, Path(path), "synthetic"), "cpu", torch.float32)
    seconds = time.perf_counter() - start
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    kept = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30
    with torch.no_grad():
        checksum = sum(float(t.float().sum()) for t in tensors.values())
    return {
        "config": config,
        "seconds": seconds,
        "kept_gib": kept,
        "peak_over_baseline_gib": peak_rss_gib() - baseline,
        "ratio": (peak_rss_gib() - baseline) / kept,
        "checksum_finite": bool(np.isfinite(checksum)),
    }


def random_batch(model_config, batch: int) -> dict[str, torch.Tensor]:
    """A training batch of the model's shapes with random values (the values do not change the cost)."""
    size, latent = model_resolution(model_config), int(model_config.params.unet_config.params.image_size)
    frames = int(model_config.params.unet_config.params.get("dim_join", {}).get("num", 4))
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch, size, size, 3, generator=generator) * 2 - 1,
        "hand_images": torch.rand(batch, frames, size, size, 3, generator=generator) * 2 - 1,
        "mask": torch.randint(0, 2, (batch, frames, size, size), generator=generator).float() * 2 - 1,
        "loss_mask": torch.ones(batch, latent, latent, dtype=torch.bool),
    }


def work_train(config: str, batch: int, precision: str, steps: int) -> dict:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    cfg = OmegaConf.load(ROOT / config)
    pl.seed_everything(0, verbose=False)
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 1e-5
    data = random_batch(cfg.model, batch)

    class StepTimer(pl.Callback):
        seconds: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    timer, warmup = StepTimer(), 3
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader([data] * (warmup + steps), batch_size=None))
    step = statistics.median(timer.seconds[warmup:])
    return {"config": config, "batch": batch, "precision": precision, "steps_per_s": 1 / step}


def work_data(samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = OmegaConf.load(ROOT / OFFICIAL).data
        source = "EPIC/VISOR/EGO4D"
        if not all(os.environ.get(v) for v in ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION")):
            env = prepare_fixture_data(Path(tmp))
            os.environ.update(env)
            data.params.train.params.visor_files = env["VISOR_TRAIN_LIST"]
            source = "miniature fixture"
        dataset = instantiate_from_config(data.params.train)
        indices = np.random.default_rng(0).integers(len(dataset), size=samples)
        dataset[int(indices[0])]
        start = time.perf_counter()
        for index in indices:
            dataset[int(index)]
        return {"source": source, "samples_per_s": samples / (time.perf_counter() - start)}


WORKERS = {
    "peak": work_peak,
    "unet": work_unet,
    "ddim": work_ddim,
    "make_checkpoint": work_make_checkpoint,
    "load": work_load,
    "train": work_train,
    "data": work_data,
}


def run_worker(name: str, **kwargs: Any) -> dict:
    """One measurement in a fresh process; its result, or {'error': ...} if it failed."""
    command = [sys.executable, __file__, "--worker", name, json.dumps(kwargs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {name} {kwargs}: failed ({tail})", file=sys.stderr)
        return {"error": tail, **kwargs}
    result = json.loads(lines[-1])
    print(f"  {name}: {json.dumps(result)}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------------------- sections


def skipped(why: str, **case: Any) -> dict:
    return {**case, "note": f"skipped: {why}"}


def section_unet(device: str, peak: dict, quick: bool, bf16: bool) -> list[dict]:
    cases = [(OFFICIAL, 1, "fp32"), (OFFICIAL, 1, "bf16"), (SMALL, 4, "fp32"), (SMALL, 4, "bf16")]
    if device == "cuda":
        cases = [(OFFICIAL, b, d) for b in (1, 4) for d in ("fp32", "bf16", "fp16")] + cases[2:]
    rows = []
    for config, batch, dtype in cases:
        if dtype == "bf16" and not bf16:
            rows.append(skipped(EMULATED, config=config, batch=batch, dtype=dtype))
            continue
        repeats = 2 if config == OFFICIAL and device == "cpu" else 10
        row = run_worker(
            "unet", config=config, batch=batch, device=device, dtype=dtype, repeats=1 if quick else repeats
        )
        if "seconds" in row:
            row["tflops"] = row["tflop"] / row["seconds"]
            row["fraction_of_peak"] = row["tflops"] / peak[f"matmul_tflops_{dtype}"]
            if row.get("yardstick_s") and config == OFFICIAL and batch == 1:
                row["x_published"] = PUBLISHED_UNITS / (row["seconds"] / row["yardstick_s"])
        rows.append(row)
    return rows


def section_ddim(device: str, bf16: bool) -> list[dict]:
    """The embedded model in fp32 and bf16, and the official config in bf16 (fp32 where bf16 is
    emulated: what `--dtype auto` runs there)."""
    small = {"config": SMALL, "checkpoint": "models/vidm_small/vidm_small.safetensors", "steps": 50}
    rows = [run_worker("ddim", **small, device=device, dtype="fp32")]
    rows += [
        run_worker("ddim", **small, device=device, dtype="bf16")
        if bf16
        else skipped(EMULATED, **small, dtype="bf16")
    ]
    steps = 200 if device == "cuda" else 2
    official = "bf16" if bf16 else "fp32"
    rows += [run_worker("ddim", config=OFFICIAL, checkpoint=None, device=device, dtype=official, steps=steps)]
    return rows


def section_load(workdir: Path, config: str) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = str(Path(tmp) / "released_layout.ckpt")
        made = run_worker("make_checkpoint", config=config, path=path)
        row = run_worker("load", config=config, path=path)
        row["file_gib"] = made.get("bytes", 0) / 2**30
        return [row]


def section_train(bf16: bool) -> list[dict]:
    return [
        run_worker("train", config=config, batch=batch, precision=precision, steps=10)
        if bf16 or precision == "32-true"
        else skipped(EMULATED, config=config, batch=batch, precision=precision)
        for config, batch in ((TINY, 2), (SMALL, 16))
        for precision in ("32-true", "bf16-mixed")
    ]


def print_tables(results: dict) -> None:
    peak = results.get("peak", {})
    if peak:
        line = ", ".join(
            f"{k.removeprefix('matmul_tflops_')} {v * 1000:.0f} GFLOP/s"
            for k, v in peak.items()
            if k.startswith("matmul")
        )
        print(f"\n{peak['device']}: 4096² matmul {line}; yardstick {peak.get('yardstick_s') or 'n/a'} s")
    table(
        results.get("unet"),
        "UNet forward",
        [
            "config",
            "batch",
            "dtype",
            "seconds",
            "tflops",
            "fraction_of_peak",
            "peak_gib",
            "rel_l2_vs_fp32",
            "x_published",
        ],
    )
    table(
        results.get("ddim"),
        "DDIM, demo workload (4 targets)",
        ["config", "weights", "dtype", "steps", "size", "seconds", "seconds_per_frame"],
    )
    table(
        results.get("load"),
        "Loading the released layout (fp32, CPU)",
        ["config", "file_gib", "seconds", "kept_gib", "peak_over_baseline_gib", "ratio"],
    )
    table(
        results.get("train"),
        "Training (Lightning loop, one in-memory batch)",
        ["config", "batch", "precision", "steps_per_s"],
    )
    table(results.get("data"), "NoHands loading, one process", ["source", "samples_per_s"])


def table(rows: list[dict] | None, title: str, columns: list[str]) -> None:
    if not rows:
        return

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return (
            Path(value).stem
            if isinstance(value, str) and value.endswith((".yaml", ".safetensors"))
            else str(value)
        )

    print(f"\n{title}\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print(
            "| "
            + " | ".join(cell(row[c] if c in row else last_word(row, c == columns[-1])) for c in columns)
            + " |"
        )


def last_word(row: dict, last_column: bool) -> str | None:
    """Why a row has no figures (its error or note), shown in its last column."""
    return row.get("error", row.get("note")) if last_column else None


def gpu_check() -> dict:
    """The official config's demo workload in bf16 on CUDA: 4 targets x 200 DDIM steps after a warm-up,
    the achieved TFLOP/s, and the SDPA kernel CUDA picks for the model's attention shapes."""
    results = {"peak": work_peak("cuda")}
    results["ddim"] = [work_ddim(OFFICIAL, None, "cuda", "bf16", 200)]
    unet = work_unet(OFFICIAL, 4, "cuda", "bf16", 10)
    results["unet"] = [unet]
    ddim = results["ddim"][0]
    ddim["tflops"] = unet["tflop"] * ddim["steps"] / ddim["seconds"]
    q = torch.randn(4, 8, 4 * 32 * 32, 64, device="cuda", dtype=torch.bfloat16)
    kernels = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        with contextlib.suppress(RuntimeError), sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
            kernels[backend.name] = "available"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize()
    kernels["picked"] = sorted(
        {
            e.key
            for e in prof.key_averages()
            if "attention" in e.key.lower() or "fmha" in e.key.lower() or "flash" in e.key.lower()
        }
    )
    results["sdpa"] = kernels
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("unet", "ddim", "load", "train", "data"),
        help="sections to run (default all)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark.json"), help="JSON results (default benchmark.json)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the load section writes its temporary checkpoint",
    )
    parser.add_argument(
        "--load-config",
        default=OFFICIAL,
        help=f"config of the load section's checkpoint (default {OFFICIAL}: a 6.4 GB file)",
    )
    parser.add_argument("--quick", action="store_true", help="one timed repeat per UNet case")
    parser.add_argument(
        "--gpu-check", action="store_true", help="the official demo workload in bf16 on CUDA, then exit"
    )
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="time bf16 also on a CPU that emulates it (no AMX or AVX512-BF16; hours on 2 cores)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](**json.loads(rest[0]))))
        return 0
    if args.gpu_check:
        results = gpu_check()
        print(json.dumps(results, indent=2))
        args.out.write_text(json.dumps(results, indent=2))
        return 0
    sections = args.only or ["unet", "ddim", "load", "train", "data"]
    bf16 = args.emulated_bf16 or not emulates_bf16(torch.device(args.device))
    results: dict[str, Any] = {"peak": run_worker("peak", device=args.device, bf16=bf16)}
    if "unet" in sections:
        results["unet"] = section_unet(args.device, results["peak"], args.quick, bf16)
    if "ddim" in sections:
        results["ddim"] = section_ddim(args.device, bf16)
    if "load" in sections:
        results["load"] = section_load(args.workdir, args.load_config)
    if "train" in sections:
        results["train"] = section_train(bf16)
    if "data" in sections:
        results["data"] = [run_worker("data", samples=200)]
    args.out.write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
