#!/usr/bin/env python
"""Draw the documentation's plots from the JSON that scripts/evaluate.py and benchmarks/run.py write.

    python scripts/plot_results.py                     # docs/results/*.json -> docs/*.png

Reads, in --results:
  evaluation_synthetic.json   evaluate.py on the held-out synthetic clips (its OUT/results.json)
  evaluation_real.json        evaluate.py --data folder on real frames
  evaluation_steps_*.json     evaluate.py runs at other --steps (the plot adds the synthetic run's)
  benchmark.json              benchmarks/run.py --only unet --published ... (our UNet and the published one)
and writes quality.png, quality_vs_steps.png and speed.png into --out. Needs matplotlib
(`pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    raise SystemExit("error: the plots need matplotlib: pip install matplotlib") from None

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "vidm": "VIDM (4 frames)",
    "vidm_single_frame": "VIDM, single frame",
    "telea": "Telea (OpenCV)",
    "temporal_copy": "temporal copy",
    "aligned_copy": "aligned copy",
    "autoencoder_bound": "first-stage bound",
}
"""The methods drawn, in order, with their labels."""


def read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such results file (see --help for what writes it)")
    return json.loads(path.read_text())


def describe(run: dict) -> str:
    """One line of what an evaluation run measured."""
    s = run["settings"]
    return f"{run['n']} {s['data']} samples at {s['size']} px, {s['steps']} DDIM steps, eta {s['eta']}"


def quality(synthetic: dict, real: dict, out: Path) -> None:
    """Masked PSNR per method, on the synthetic clips and on real frames."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (title, run) in zip(
        axes, (("held-out synthetic clips", synthetic), ("real frames", real)), strict=True
    ):
        names = [m for m in METHODS if m in run["methods"]]
        values = [run["methods"][m]["psnr_mask"] for m in names]
        bars = ax.barh(
            [METHODS[m] for m in names],
            values,
            color=["#c0392b" if m == "vidm" else "#7f8c8d" for m in names],
        )
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
        ax.set_title(f"{title}\n{describe(run)}", fontsize=9)
        ax.set_xlabel("PSNR inside the hole (dB)")
        ax.set_xlim(0, max(values) * 1.15)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def quality_vs_steps(runs: list[dict], out: Path) -> None:
    """Masked PSNR of the model against its DDIM steps, with and without context frames."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for method in ("vidm", "vidm_single_frame"):
        points = sorted(
            (r["settings"]["steps"], r["methods"][method]["psnr_mask"])
            for r in runs
            if method in r["methods"]
        )
        ax.plot(*zip(*points, strict=True), marker="o", label=METHODS[method])
    ax.set_xscale("log")
    steps = sorted({r["settings"]["steps"] for r in runs})
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("DDIM steps")
    ax.set_ylabel("PSNR inside the hole (dB)")
    ax.set_title(
        f"{runs[0]['n']} held-out synthetic clips at {runs[0]['settings']['size']} px, eta {runs[0]['settings']['eta']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def speed(benchmark: dict, out: Path) -> None:
    """Seconds of one UNet forward of the official config, this code against the published one."""
    rows = [
        r for r in benchmark.get("unet", []) if "seconds" in r and r["config"].endswith("inpaint_4frame.yaml")
    ]
    cases = sorted(
        {(r["batch"], r["dtype"]) for r in rows if r["code"] == "published"},
        key=lambda c: (c[0], c[1] != "fp32"),
    )
    if not cases:
        raise SystemExit(
            "error: benchmark.json has no published-code rows (run benchmarks/run.py with --published)"
        )
    seconds = {(r["code"], r["batch"], r["dtype"]): r["seconds"] for r in rows}
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.38
    for offset, code, colour in ((-width / 2, "published", "#7f8c8d"), (width / 2, "this", "#c0392b")):
        values = [seconds[(code, batch, dtype)] for batch, dtype in cases]
        bars = ax.bar(
            [i + offset for i in range(len(cases))], values, width, label=f"{code} code", color=colour
        )
        ax.bar_label(bars, fmt="%.1f s", fontsize=8)
    ax.set_xticks(range(len(cases)), [f"{dtype}, batch {batch}" for batch, dtype in cases])
    ax.set_ylabel("seconds per UNet forward")
    ax.set_title(f"official config on {benchmark['peak']['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results", help="the JSON files")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    args = parser.parse_args(argv)
    synthetic = read(args.results / "evaluation_synthetic.json")
    args.out.mkdir(parents=True, exist_ok=True)
    quality(synthetic, read(args.results / "evaluation_real.json"), args.out / "quality.png")
    steps = [synthetic, *(read(p) for p in sorted(args.results.glob("evaluation_steps_*.json")))]
    quality_vs_steps(steps, args.out / "quality_vs_steps.png")
    speed(read(args.results / "benchmark.json"), args.out / "speed.png")
    for name in ("quality.png", "quality_vs_steps.png", "speed.png"):
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
