#!/usr/bin/env python
"""Speed and memory of the model and the pipeline around it, on this machine: one table, one JSON.

Every figure is measured in this run, each measurement in a fresh process (so its peak memory is its
own), and compared only with what this run measured too:

  peak       the machine's 4096x4096 matmul rate in fp32 and bf16 (fp16 on CUDA): the ceiling that the
             UNet figures are a fraction of (benchmarks/peak.py)
  unet       UNet forward per config, batch and dtype: seconds, achieved TFLOP/s, fraction of the
             matmul peak, peak memory, and for bf16/fp16 the relative L2 error against fp32
             (benchmarks/unet.py); with --published, the published implementation's UNet on the same
             inputs (benchmarks/published_unet.py) and the speed-up over it
  ddim       the demo workload: 4 targets with 3 context frames each, DDIM, decoded
             (benchmarks/sampling.py)
  load       loading a checkpoint in the released layout, written into --workdir and deleted after:
             seconds, and peak RSS over the bytes of the weights kept (benchmarks/loading.py)
  train      training steps/s in Lightning's loop, fp32 against bf16-mixed (benchmarks/training_speed.py)
  data       NoHands samples/s in one process (benchmarks/data_loading.py)
  factorize  factorisation end to end, decoding an H.264 clip to writing every layer: frames/s for
             the embedded model and the official architecture (random weights) at a few DDIM step
             counts, and per model the cost of a frame as fixed + per-step seconds, the terms of
             the planning formula in docs/performance.md (benchmarks/factorize_throughput.py)

    python benchmarks/run.py                                   # everything that fits a CPU
    python benchmarks/run.py --only unet --published ../agent_inpainting
    python benchmarks/run.py --gpu-check                       # the official demo workload on CUDA

The published code's UNet needs a checkout of github.com/MatthewChang/agent_inpainting (--published).
Run it on a quiet machine: other work on the same cores changes every figure. On a CPU without AMX or
AVX512-BF16, bf16 is emulated (about 80x slower than fp32 on AVX2): its bf16 cases are skipped and the
table says so, unless --emulated-bf16 is given. Training memory per GPU: benchmarks/training_memory.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import OFFICIAL, SMALL, SMALL_WEIGHTS, TINY, run_worker  # noqa: E402
from benchmarks.published_unet import UNET_FILE  # noqa: E402
from ldm.inference.device import emulates_bf16  # noqa: E402
from ldm.util import atomic_output  # noqa: E402

SECTIONS = ("unet", "ddim", "load", "train", "data", "factorize")
EMULATED = "bf16 is emulated on this CPU (no AMX or AVX512-BF16); --emulated-bf16 times it anyway"
"""Why the bf16 cases are skipped on such a CPU: they would take hours and show nothing."""


def skipped(why: str, **case: Any) -> dict:
    return {**case, "note": f"skipped: {why}"}


def section_unet(device: str, peak: dict, quick: bool, bf16: bool, published: Path | None) -> list[dict]:
    cases = [(OFFICIAL, 1, "fp32"), (OFFICIAL, 1, "bf16"), (SMALL, 4, "fp32"), (SMALL, 4, "bf16")]
    if device == "cuda":
        cases = [(OFFICIAL, b, d) for b in (1, 4) for d in ("fp32", "bf16", "fp16")] + cases[2:]
    rows = []
    for config, batch, dtype in cases:
        if dtype == "bf16" and not bf16:
            rows.append(skipped(EMULATED, config=config, batch=batch, dtype=dtype))
            continue
        repeats = 1 if quick else 2 if config == OFFICIAL and device == "cpu" else 10
        case = {"config": config, "batch": batch, "device": device, "dtype": dtype, "repeats": repeats}
        row = with_peak_fraction(run_worker("unet", **case), peak)
        rows.append(row)
        if published is not None and config == OFFICIAL and dtype != "fp16":
            baseline = with_peak_fraction(
                run_worker("published_unet", published=str(published), **case), peak
            )
            if "seconds" in row and "seconds" in baseline:
                row["x_published"] = baseline["seconds"] / row["seconds"]
            rows.append(baseline)
    return rows


def with_peak_fraction(row: dict, peak: dict) -> dict:
    """The row with its achieved TFLOP/s and their fraction of this machine's matmul peak."""
    if "seconds" in row:
        row["tflops"] = row["tflop"] / row["seconds"]
        row["fraction_of_peak"] = row["tflops"] / peak[f"matmul_tflops_{row['dtype']}"]
    return row


def section_ddim(device: str, bf16: bool) -> list[dict]:
    """The embedded model in fp32 and bf16, and the official config in bf16 (fp32 where bf16 is
    emulated: what `--dtype auto` runs there)."""
    small = {"config": SMALL, "checkpoint": SMALL_WEIGHTS, "steps": 50}
    rows = [run_worker("sampling", **small, device=device, dtype="fp32")]
    rows += [
        run_worker("sampling", **small, device=device, dtype="bf16")
        if bf16
        else skipped(EMULATED, **small, dtype="bf16")
    ]
    steps = 200 if device == "cuda" else 2
    official = "bf16" if bf16 else "fp32"
    rows += [
        run_worker("sampling", config=OFFICIAL, checkpoint=None, device=device, dtype=official, steps=steps)
    ]
    return rows


def section_load(workdir: Path, config: str) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = str(Path(tmp) / "released_layout.ckpt")
        made = run_worker("loading", step="make", config=config, path=path)
        row = run_worker("loading", step="load", config=config, path=path)
        row["file_gib"] = made.get("bytes", 0) / 2**30
        return [row]


def section_train(bf16: bool) -> list[dict]:
    return [
        run_worker("training_speed", config=config, batch=batch, precision=precision, steps=10)
        if bf16 or precision == "32-true"
        else skipped(EMULATED, config=config, batch=batch, precision=precision)
        for config, batch in ((TINY, 2), (SMALL, 16))
        for precision in ("32-true", "bf16-mixed")
    ]


def section_factorize(device: str) -> list[dict]:
    """Frames/s of factorisation at two or more step counts per model; then each model's seconds per
    frame split into a fixed part and a part per DDIM step (a line through the two cheapest counts)."""
    cases = [(SMALL, SMALL_WEIGHTS, steps, 24) for steps in (1, 3)]
    official_steps = (10, 50, 200) if device == "cuda" else (1, 2)
    cases += [(OFFICIAL, None, steps, 32 if device == "cuda" else 8) for steps in official_steps]
    rows = [
        run_worker(
            "factorize_throughput",
            config=config,
            checkpoint=checkpoint,
            steps=steps,
            frames=frames,
            size=256,
            device=device,
            dtype="auto",
        )
        for config, checkpoint, steps, frames in cases
    ]
    return rows + frame_costs(rows)


def frame_costs(rows: list[dict]) -> list[dict]:
    """Per config: seconds per frame = fixed + per_step x steps, from its two lowest step counts."""
    costs = []
    for config in dict.fromkeys(row["config"] for row in rows):
        measured = sorted(
            (r["steps"], 1 / r["streaming_frames_per_s"])
            for r in rows
            if r["config"] == config and r.get("streaming_frames_per_s")
        )
        if len(measured) < 2:
            continue
        (s1, t1), (s2, t2) = measured[:2]
        per_step = (t2 - t1) / (s2 - s1)
        costs.append(
            {
                "config": config,
                "fixed_s": t1 - per_step * s1,
                "per_step_s": per_step,
                "note": "seconds per frame = fixed_s + per_step_s x steps",
            }
        )
    return costs


def print_tables(results: dict) -> None:
    peak = results.get("peak", {})
    if peak:
        rates = ", ".join(
            f"{k.removeprefix('matmul_tflops_')} {v * 1000:.0f} GFLOP/s"
            for k, v in peak.items()
            if k.startswith("matmul")
        )
        print(f"\n{peak.get('device')}: 4096² matmul {rates}")
    unet_columns = ["code", "config", "batch", "dtype", "seconds", "tflops", "fraction_of_peak", "peak_gib"]
    table(results.get("unet"), "UNet forward", [*unet_columns, "rel_l2_vs_fp32", "x_published"])
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
    factorize = results.get("factorize") or []
    table(
        [row for row in factorize if "steps" in row or "error" in row],
        "Factorisation end to end (256-px frames, one process)",
        ["config", "weights", "dtype", "steps", "frames", "streaming_frames_per_s", "call_frames_per_s"],
    )
    table(
        [row for row in factorize if "per_step_s" in row],
        "Cost of a frame",
        ["config", "fixed_s", "per_step_s", "note"],
    )


def table(rows: list[dict] | None, title: str, columns: list[str]) -> None:
    if not rows:
        return

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        is_file = isinstance(value, str) and value.endswith((".yaml", ".safetensors"))
        return Path(value).stem if is_file else str(value)

    print(f"\n{title}\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        cells = [cell(row[c] if c in row else last_word(row, c == columns[-1])) for c in columns]
        print("| " + " | ".join(cells) + " |")


def last_word(row: dict, last_column: bool) -> str | None:
    """Why a row has no figures (its error or note), shown in its last column."""
    return row.get("error", row.get("note")) if last_column else None


def gpu_check(device: str) -> dict:
    """The official config's demo workload in bf16 on a CUDA `device`: 4 targets x 200 DDIM steps after
    a warm-up, the achieved TFLOP/s, and the SDPA kernel CUDA picks for the model's attention shapes."""
    results = {"peak": run_worker("peak", device=device)}
    ddim = run_worker("sampling", config=OFFICIAL, checkpoint=None, device=device, dtype="bf16", steps=200)
    unet = run_worker("unet", config=OFFICIAL, batch=4, device=device, dtype="bf16", repeats=10)
    if "seconds" in ddim and "tflop" in unet:
        ddim["tflops"] = unet["tflop"] * ddim["steps"] / ddim["seconds"]
    results["ddim"], results["unet"] = [ddim], [unet]
    results["sdpa"] = sdpa_kernels(torch.device(device))
    return results


def sdpa_kernels(device: torch.device) -> dict:
    """Which fused attention kernels CUDA offers for the official model's attention shape, and which it picks."""
    q = torch.randn(4, 8, 4 * 32 * 32, 64, device=device, dtype=torch.bfloat16)
    kernels: dict[str, Any] = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        with contextlib.suppress(RuntimeError), sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
            kernels[backend.name] = "available"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize(device)
    names = ("attention", "fmha", "flash")
    kernels["picked"] = sorted({e.key for e in prof.key_averages() if any(n in e.key.lower() for n in names)})
    return kernels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="sections to run (default all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark.json"), help="JSON results (default benchmark.json)"
    )
    parser.add_argument(
        "--published", type=Path, help="a checkout of the published repository: time its UNet as the baseline"
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
        help=f"config of the load section's checkpoint (default {OFFICIAL}: 6.4 GB)",
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
    args = parser.parse_args(argv)
    args.only = args.only or list(SECTIONS)
    check_arguments(parser, args)
    return args


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop at once, with one line, on a device or path that the run would otherwise trip on later."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a device name (try cpu, cuda, cuda:1)")
    if args.gpu_check and device.type != "cuda":
        parser.error(f"--gpu-check: needs a CUDA device, got --device {args.device}")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    if "load" in args.only and not args.gpu_check and not args.workdir.is_dir():
        parser.error(f"--workdir {args.workdir}: no such folder")
    if args.published is not None and not (args.published / UNET_FILE).is_file():
        parser.error(
            f"--published {args.published}: not a checkout of the published repository (no {UNET_FILE})"
        )


def save(results: dict, path: Path) -> None:
    """Write the results so far, whole (through a temporary file): a later section that fails keeps them."""
    with atomic_output(path) as partial:
        partial.write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu_check:
        results = gpu_check(args.device)
        print(json.dumps(results, indent=2))
        save(results, args.out)
        return 0
    bf16 = args.emulated_bf16 or not emulates_bf16(torch.device(args.device))
    results: dict[str, Any] = {"peak": run_worker("peak", device=args.device, bf16=bf16)}
    sections = {
        "unet": lambda: section_unet(args.device, results["peak"], args.quick, bf16, args.published),
        "ddim": lambda: section_ddim(args.device, bf16),
        "load": lambda: section_load(args.workdir, args.load_config),
        "train": lambda: section_train(bf16),
        "data": lambda: [run_worker("data_loading", samples=200)],
        "factorize": lambda: section_factorize(args.device),
    }
    for name in SECTIONS:
        if name in args.only:
            results[name] = sections[name]()
            save(results, args.out)
    print_tables(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
