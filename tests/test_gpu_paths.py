"""What a GPU run goes through, checked on the CPU: the float32 precision set-up that Lightning reads
back, caches that inference mode must not poison, exact VQ distances, the frozen first stage's memory,
DDP's strategy, memory-mapped resumes, each process's share of a factorisation, the memory estimate
and the smoke script. No GPU exists here: where a test needs one, it patches what CUDA would report
and says so."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy

from benchmarks.training_memory import estimate
from ldm.inference.jobs import needed_frames, process_share
from ldm.models.cond import Inpainting3d
from ldm.models.first_stage import FRAMES_PER_CALL, VQFirstStage
from ldm.modules.diffusionmodules.position import grid_sinusoids
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.training.checkpoint_io import MappedCheckpointIO
from ldm.training.trainer import ddp_strategy, trainer_arguments
from ldm.util import instantiate_from_config
from scripts.gpu_smoke import run_python
from tests.conftest import ROOT

SMALL = ROOT / "configs" / "vidm_small.yaml"
TINY = ROOT / "configs" / "inpaint_4frame_tiny.yaml"
FIRST_STAGE = ROOT / "configs" / "vq_f4_small.yaml"


def test_tf32_set_up_passes_lightnings_check_of_an_ampere_gpu():
    """The project's float32 precision set-up, then the check Lightning's CUDA accelerator runs on an
    sm80+ GPU. No GPU here: CUDA's availability and the capability (8, 0) are patched. In a fresh
    process, because the precision set-up is global."""
    script = """
import torch
from unittest import mock
from lightning_fabric.accelerators.cuda import _check_cuda_matmul_precision
from ldm.util import enable_tf32

enable_tf32()
with mock.patch.object(torch.cuda, "is_available", return_value=True), mock.patch.object(
    torch.cuda, "get_device_capability", return_value=(8, 0)
):
    _check_cuda_matmul_precision(torch.device("cuda", 0))
assert torch.backends.cuda.matmul.fp32_precision == "tf32", torch.backends.cuda.matmul.fp32_precision
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_training_step_after_an_inference_mode_forward():
    """Validating (or sampling) under torch.inference_mode, then training in float32, in one process."""
    grid_sinusoids.cache_clear()
    unet = instantiate_from_config(OmegaConf.load(SMALL).model.params.unet_config)
    x, t = torch.randn(1, 7, 4, 16, 16), torch.tensor([500])
    with torch.inference_mode():
        unet.eval()(x, t)
    unet.train()(x, t).square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_vq_distances_are_exact_where_the_expanded_form_cancels():
    """Latents far from the origin: |z|^2 + |e|^2 - 2 z.e loses the difference between two codes in
    float32 rounding (and a GPU with TF32 loses more); the nearest code must still win."""
    quantizer = VectorQuantizer(2, 3)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[1000.0, 1000.0, 1000.0], [1000.0, 1000.0, 1000.25]]))
    z = torch.tensor([1000.0, 1000.0, 1000.2]).reshape(1, 3, 1, 1)
    assert quantizer.nearest_indices(z).item() == 1


def test_the_frozen_first_stage_encodes_a_large_batch_in_chunks_with_the_same_latents():
    config = OmegaConf.load(SMALL).model.params.first_stage_config.params
    first_stage = VQFirstStage(config.ddconfig, config.n_embed, config.embed_dim).eval()
    calls = []
    first_stage.encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    frames, masks = torch.rand(12, 4, 64, 64, 3) * 2 - 1, (torch.rand(12, 4, 64, 64) > 0.5).float() * 2 - 1
    with torch.no_grad():
        chunked = Inpainting3d(first_stage)({"hand_images": frames, "mask": masks})
    whole = first_stage.encode(frames.flatten(0, 1).permute(0, 3, 1, 2)).detach()  # gradients on: one call
    assert calls == [FRAMES_PER_CALL] * 3 + [48]
    torch.testing.assert_close(chunked[:, :, :3].flatten(0, 1), whole, rtol=1e-5, atol=1e-5)


def test_ddp_leaves_buffers_alone_and_looks_for_parameters_only_when_the_model_asks():
    strategy = ddp_strategy("ddp")
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False,
        "broadcast_buffers": False,
        "gradient_as_bucket_view": True,
    }
    assert ddp_strategy("ddp_spawn", find_unused_parameters=True)._ddp_kwargs["find_unused_parameters"]
    assert ddp_strategy("ddp_find_unused_parameters_true")._ddp_kwargs["find_unused_parameters"]
    assert ddp_strategy("auto") == "auto" and ddp_strategy("fsdp") == "fsdp"
    several = trainer_arguments(OmegaConf.create({"devices": 2}), None, ROOT)
    assert several["strategy"] == "ddp"
    vq = instantiate_from_config(OmegaConf.load(FIRST_STAGE).model)
    assert vq.leaves_parameters_unused  # quantize_from_step: the codebook waits
    vq.quantize_from_step = 0
    assert not vq.leaves_parameters_unused


def test_a_resumed_run_memory_maps_its_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "global_step": 3}, path)
    loaded = MappedCheckpointIO().load_checkpoint(path, weights_only=True)
    address = loaded["state_dict"]["w"].data_ptr()
    assert any(low <= address < high for low, high in mappings_of(path))  # Linux's /proc/self/maps
    assert loaded["global_step"] == 3


def mappings_of(path) -> list[tuple[int, int]]:
    """Address ranges where this process has `path` memory-mapped."""
    ranges = []
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def test_each_process_decodes_a_video_only_up_to_its_own_part():
    plan = [(0, list(range(start, start + 4))) for start in range(0, 400, 4)]
    shares = [process_share(plan, rank, 4) for rank in range(4)]
    assert [item for share in shares for item in share] == plan
    for rank, share in enumerate(shares):
        last_needed = max(needed_frames([i for _, batch in share for i in batch], frame_skip=36))
        assert last_needed == 100 * (rank + 1) - 1  # round robin would need frame 399 in every process


def test_train_small_picks_the_precision_of_a_gpu_it_will_use():
    """--gpus -1 means every GPU: the first one decides. No GPU here: its bf16 support is patched."""
    sys.path.insert(0, str(ROOT))
    from scripts.train_small import precision

    with mock.patch("scripts.train_small.native_bf16", side_effect=lambda device: device.index == 0):
        assert precision("auto", "-1") == "bf16-mixed"
        assert precision("auto", "1,2") == "32-true"
        assert precision("32-true", "-1") == "32-true"


def test_memory_estimate_counts_the_weights_and_what_checkpointing_saves():
    config = OmegaConf.load(TINY)
    model = instantiate_from_config(config.model)
    unet = sum(p.numel() for p in model.model.parameters())
    frozen = sum(p.numel() for p in model.first_stage_model.parameters())
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.startswith("model_ema."))
    # weights, EMA and AdamW's two moments of the denoiser; the frozen first stage; float32 buffers
    expected = 4 * (4 * unet + frozen + buffers)
    plain = estimate(TINY, 2, "32", use_checkpoint=False)
    assert plain.resident_gib == pytest.approx(expected / 2**30, abs=0.005)
    checkpointed = estimate(TINY, 2, "32", use_checkpoint=True)
    assert checkpointed.resident_gib == plain.resident_gib
    assert checkpointed.peak_gib < plain.peak_gib
    assert estimate(TINY, 2, "bf16-mixed", use_checkpoint=False).peak_gib < plain.peak_gib


def test_the_smoke_scripts_programs_import_the_repository_where_it_is_not_installed():
    """A GPU machine without network gets a copy of the repository and no install (an editable one
    needs setuptools, which pip cannot fetch offline). Simulated with `python -S`: site-packages on
    PYTHONPATH, so no .pth file (this venv's editable install of the project) is read."""
    site_packages = sysconfig.get_paths()["purelib"]
    usage = run_python("-S", "scripts/factorize.py", "--help", env={"PYTHONPATH": site_packages})
    assert usage.startswith("usage: factorize.py")


@pytest.mark.slow
def test_the_gpu_smoke_script_runs_every_check_on_the_cpu(tmp_path):
    """scripts/gpu_smoke.py --cpu: the dry run of what a GPU machine runs, so the script keeps working."""
    report_path = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--cpu", "--out", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(report_path.read_text())
    failed = {name: check.get("error") for name, check in report["checks"].items() if not check["ok"]}
    assert result.returncode == 0 and not failed, (failed, result.stderr[-2000:])
    checks = report["checks"]
    assert list(checks) == ["environment", "train", "first_stage_ddp", "demo", "factorize", "unet", "memory"]
    assert checks["train"]["resumed_to_step"] == checks["train"]["32-true"]["steps"] + 2
    assert checks["demo"]["bf16"]["psnr_vs_fp32"] > 20  # the same picture, up to bf16 rounding
    assert checks["unet"]["seconds_channels_last"] > 0 and checks["unet"]["seconds_contiguous"] > 0
