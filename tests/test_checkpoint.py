"""Checkpoint reading is safe by default, mismatches are explained, conversion round-trips."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ldm.checkpoint import (
    CheckpointError,
    file_mappings,
    first_stage_state,
    load_model_weights,
    read_state_dict,
    release_mapped_pages,
)
from ldm.inference.model import load_inference_model, prepare_for_inference
from ldm.inference.model_config import inference_config
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.util import instantiate_from_config
from tests.conftest import ROOT, reference_config
from tests.test_training import TINY_CONFIG, batch_loader, quiet_trainer, synthetic_batch, tiny_model


class Payload:
    """Stands in for a malicious object: unpickling it would call os.system."""

    def __reduce__(self):
        return (print, ("pickle payload ran",))


def lightning_checkpoint(path, state):
    torch.save({"state_dict": state, "global_step": 3, "optimizer_states": []}, path)
    return path


def test_reads_lightning_checkpoint_memory_mapped(reference, tmp_path):
    path = lightning_checkpoint(tmp_path / "m.ckpt", reference["state_dict"])
    state = read_state_dict(path)
    assert list(state) == list(reference["state_dict"])
    assert torch.equal(state["betas"], reference["state_dict"]["betas"])


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only")
def test_copied_weights_give_their_mapped_pages_back_and_keep_their_values(tmp_path):
    weight = torch.randn(64, 1024, 256)  # 64 MiB
    state = read_state_dict(lightning_checkpoint(tmp_path / "big.ckpt", {"w": weight}))
    mapped = state["w"]
    mappings = file_mappings()
    before = resident_mib()
    copy = mapped.to(torch.bfloat16)
    paged_in = resident_mib() - before
    release_mapped_pages(mapped, mappings)
    # Measured: 96 MiB paged in (the 64 MiB read and their 32 MiB bf16 copy), 32 MiB left after.
    assert paged_in > 60 and resident_mib() - before < paged_in - 48, "the file's pages are dropped"
    assert torch.equal(mapped, weight), "a later read pages the same bytes in again"
    assert torch.equal(copy, weight.to(torch.bfloat16))
    ordinary = weight.clone()
    release_mapped_pages(ordinary, mappings)
    assert torch.equal(ordinary, weight), "memory that is not a mapped file is never touched"


def test_pickle_payload_is_refused_unless_unsafe(reference, tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(reference["state_dict"]), "callbacks": Payload()}, path)
    with pytest.raises(CheckpointError, match="--unsafe-load") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)
    assert "pickle payload ran" not in capsys.readouterr().out
    read_state_dict(path, unsafe=True)
    assert "pickle payload ran" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a readable PyTorch checkpoint"), (b"hello, world" * 10, "not a readable PyTorch checkpoint")],
)
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "absent.ckpt")
    torch.save({"epoch": 1}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        read_state_dict(tmp_path / "x.ckpt")


def test_mismatch_lists_the_first_keys(reference, tmp_path):
    state = collections.OrderedDict(reference["state_dict"])
    del state["model.diffusion_model.out.4.bias"]
    state["model.extra.weight"] = torch.zeros(1)
    state["first_stage_model.quantize.embedding.weight"] = torch.zeros(65, 3)
    path = lightning_checkpoint(tmp_path / "m.ckpt", state)
    model = instantiate_from_config(reference["config"])
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, path)
    message = str(err.value)
    assert "1 missing: model.diffusion_model.out.4.bias" in message
    assert "1 unexpected: model.extra.weight" in message
    assert "first_stage_model.quantize.embedding.weight (65, 3) vs (64, 3)" in message
    assert "\n" not in message


def test_inference_loading_uses_ema_weights(reference, tmp_path):
    state = dict(reference["state_dict"])
    state["model_ema.diffusion_modelout4bias"] = torch.full((3,), 7.0)
    path = lightning_checkpoint(tmp_path / "m.ckpt", state)
    model = load_inference_model(reference["config"], path)
    assert not model.training and not isinstance(model, pl.LightningModule)
    assert torch.all(model.model.diffusion_model.out[4].bias == 7.0)


def test_inference_class_holds_the_training_modules_weights_and_computes_the_same(small_model, reference):
    model = instantiate_from_config(inference_config(reference["config"])).eval()
    assert type(model).__name__ == "LatentDiffusionModel"
    assert type(model.first_stage_model).__name__ == "VQFirstStage"
    weights = {k: v for k, v in small_model.state_dict().items() if not k.startswith("model_ema.")}
    model.load_state_dict(weights, strict=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *reference["x_noisy"].shape[1:], generator=generator)
    c = torch.randn(2, *reference["cond"].shape[1:], generator=generator)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model.apply_model(x, t, c), small_model.apply_model(x, t, c))
        assert torch.equal(model.decode_first_stage(x), small_model.decode_first_stage(x))


class OwnLatentDiffusion(LatentDiffusion):
    """A user's subclass of the training module, which inference builds as it is."""


def test_inference_builds_other_training_modules_as_they_are_with_their_ema(reference, tmp_path):
    state = dict(reference["state_dict"])
    state["model_ema.diffusion_modelout4bias"] = torch.full((3,), 7.0)
    config = {**reference["config"], "target": f"{__name__}.OwnLatentDiffusion"}
    model = load_inference_model(config, lightning_checkpoint(tmp_path / "m.ckpt", state))
    assert type(model) is OwnLatentDiffusion and not model.use_ema
    assert torch.all(model.model.diffusion_model.out[4].bias == 7.0)


def test_inference_imports_neither_lightning_nor_dynamo():
    """Both take seconds to import; the demo's start-up is mostly imports."""
    script = (
        "import sys, torch\n"
        "from ldm.inference.inpainter import Inpainter\n"
        "from ldm.inference.model import choose_model, load_model\n"
        "model, size = load_model(choose_model())\n"
        "import numpy as np\n"
        "frames = np.zeros((1, 4, size, size, 3), np.uint8); masks = np.ones((1, 4, size, size), bool)\n"
        "Inpainter(model, torch.float32, steps=2)(frames, masks)\n"
        "print(sorted(m for m in ('pytorch_lightning', 'lightning_fabric', 'torch._dynamo') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_converted_safetensors_give_the_same_model(reference, tmp_path):
    ckpt = lightning_checkpoint(tmp_path / "m.ckpt", reference["state_dict"])
    out = tmp_path / "m.safetensors"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), str(ckpt), str(out)],
        check=True,
        cwd=ROOT,
    )
    from_ckpt = load_inference_model(reference["config"], ckpt)
    from_st = load_inference_model(reference["config"], out)
    for (k1, v1), (k2, v2) in zip(from_ckpt.state_dict().items(), from_st.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    with torch.no_grad():
        eps = from_st.apply_model(reference["x_noisy"], reference["t"], reference["cond"])
    torch.testing.assert_close(eps, reference["eps"], rtol=1e-3, atol=1e-4)


def test_converted_file_records_the_latent_scale_factor_that_loading_then_uses(reference, tmp_path):
    ckpt = lightning_checkpoint(tmp_path / "m.ckpt", reference["state_dict"])
    script = str(ROOT / "scripts" / "convert_checkpoint.py")
    plain, scaled = tmp_path / "plain.safetensors", tmp_path / "scaled.safetensors"
    subprocess.run([sys.executable, script, str(ckpt), str(plain)], check=True, cwd=ROOT)
    subprocess.run(
        [sys.executable, script, str(ckpt), str(scaled), "--scale-factor", "0.443"], check=True, cwd=ROOT
    )
    assert load_inference_model(reference["config"], plain).scale_factor != 0.443, "the config's factor"
    assert load_inference_model(reference["config"], scaled).scale_factor == 0.443
    fine_tune = instantiate_from_config(reference_config(reference, ckpt_path=str(scaled)))
    assert fine_tune.scale_factor == 0.443, "training from the file keeps the factor it was trained with"
    tensors = load_file(plain)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"scale_factor": "large"})
    with pytest.raises(
        CheckpointError, match="bad.safetensors: its recorded scale_factor 'large' is not a positive number"
    ):
        load_inference_model(reference["config"], tmp_path / "bad.safetensors")


class RecordScaleFactor(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.scale_factor = pl_module.scale_factor


def test_the_scale_factor_survives_convert_fine_tune_resume_convert_and_load(tmp_path):
    """Weights trained at 0.443 (their file records it) are converted again, fine-tuned from that file,
    resumed from the fine-tune's checkpoint, converted and loaded: every step scales the latents by
    0.443, not by the config's 1.0, and the state dict keeps its layout (the factor is recorded beside
    it). Before, the second conversion dropped the factor and Lightning checkpoints never carried it."""
    sys.path.insert(0, str(ROOT))
    from scripts.convert_checkpoint import main as convert

    config = OmegaConf.load(TINY_CONFIG).model
    trained = tiny_model(seed=1)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "trained.ckpt")
    assert (
        convert([str(tmp_path / "trained.ckpt"), str(tmp_path / "a.safetensors"), "--scale-factor", "0.443"])
        == 0
    )
    assert convert([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    fine_tune = instantiate_from_config(
        {**config, "params": {**config.params, "ckpt_path": str(tmp_path / "b.safetensors")}}
    )
    fine_tune.learning_rate = 1e-3
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(fine_tune, batch_loader(synthetic_batch(), 1))
    trainer.save_checkpoint(tmp_path / "fine_tune.ckpt")
    saved = torch.load(tmp_path / "fine_tune.ckpt", weights_only=True)
    assert list(saved["state_dict"]) == list(tiny_model().state_dict()), "the layout is unchanged"
    resumed, record = tiny_model(), RecordScaleFactor()
    assert resumed.scale_factor == 1.0
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, callbacks=[record])
    trainer.fit(
        resumed, batch_loader(synthetic_batch(), 2), ckpt_path=tmp_path / "fine_tune.ckpt", weights_only=True
    )
    assert record.scale_factor == 0.443, "the resumed run trains at the fine-tune's factor"
    trainer.save_checkpoint(tmp_path / "resumed.ckpt")
    assert convert([str(tmp_path / "resumed.ckpt"), str(tmp_path / "c.safetensors")]) == 0
    for path in ("a.safetensors", "b.safetensors", "fine_tune.ckpt", "resumed.ckpt", "c.safetensors"):
        assert load_inference_model(config, tmp_path / path).scale_factor == 0.443, path


def test_fp16_conversion_halves_the_file(reference, tmp_path):
    ckpt = lightning_checkpoint(tmp_path / "m.ckpt", reference["state_dict"])
    full, half = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    script = str(ROOT / "scripts" / "convert_checkpoint.py")
    subprocess.run([sys.executable, script, str(ckpt), str(full)], check=True, cwd=ROOT)
    subprocess.run([sys.executable, script, str(ckpt), str(half), "--fp16"], check=True, cwd=ROOT)
    assert half.stat().st_size < 0.55 * full.stat().st_size  # measured 0.502
    model = load_inference_model(reference["config"], half)
    assert model.model.diffusion_model.out[4].weight.dtype == torch.float16, "the file's tensors, not copies"
    model = prepare_for_inference(model, "cpu", torch.float32)
    assert model.model.diffusion_model.out[4].weight.dtype == torch.float32


def test_inpainting_big_layout_loads_into_the_2d_config(tmp_path):
    """LDM's inpainting_big stores its conditioner (the first stage itself) as cond_stage_model.*;
    the 2D config's conditioner holds the first stage as cond_stage_model.first_stage_model.*."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "configs" / "ldm_inpainting_big.yaml").model
    small = {"model_channels": 32, "attention_resolutions": [2], "channel_mult": [1, 2], "num_heads": 4}
    config.params.unet_config.params.update(small)
    config.params.first_stage_config.params.update({"n_embed": 64})
    config.params.first_stage_config.params.ddconfig.update(
        {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1}
    )
    state = instantiate_from_config(config).state_dict()
    state = {
        k.replace("cond_stage_model.first_stage_model.", "cond_stage_model."): v for k, v in state.items()
    }
    state["first_stage_model.post_quant_conv.bias"] = torch.full((3,), 2.0)
    path = lightning_checkpoint(tmp_path / "last.ckpt", state)
    model = load_inference_model(config, path)
    assert torch.all(model.cond_stage_model.first_stage_model.post_quant_conv.bias == 2.0)


def test_convert_installs_a_fine_tuned_decoder_only_on_the_same_encoder(tmp_path, capsys):
    """--decoder-from: the embedded weights get a VQ checkpoint's decoder; a first stage whose
    encoder differs (other latents than the denoiser learned) is refused with one line."""
    sys.path.insert(0, str(ROOT))
    from scripts.convert_checkpoint import main as convert

    weights = ROOT / "models" / "vidm_small" / "vidm_small.safetensors"
    first_stage = {k: v.float() for k, v in first_stage_state(weights).items()}
    first_stage["decoder.conv_out.bias"] = torch.tensor([0.5, -0.25, 0.125])
    torch.save({"state_dict": first_stage, "global_step": 3}, tmp_path / "decoder.ckpt")
    assert (
        convert(
            [
                str(weights),
                str(tmp_path / "out.safetensors"),
                "--fp16",
                "--decoder-from",
                str(tmp_path / "decoder.ckpt"),
            ]
        )
        == 0
    )
    before, after = load_file(weights), load_file(tmp_path / "out.safetensors")
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["first_stage_model.decoder.conv_out.bias"]
    assert after[changed[0]].tolist() == [0.5, -0.25, 0.125]
    first_stage["encoder.conv_in.bias"] = first_stage["encoder.conv_in.bias"] + 0.1
    torch.save({"state_dict": first_stage}, tmp_path / "other.ckpt")
    assert (
        convert(
            [str(weights), str(tmp_path / "bad.safetensors"), "--decoder-from", str(tmp_path / "other.ckpt")]
        )
        == 1
    )
    assert not (tmp_path / "bad.safetensors").exists(), "nothing written"
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "other.ckpt: its 'encoder.conv_in.bias' differs" in error[0], error
