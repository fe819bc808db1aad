"""Training a VQ first stage from scratch (the embedded small model's first stage)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from ldm.models.autoencoder import VQModel
from ldm.modules.vqvae.quantize import VectorQuantizer
from tests.test_inference_support import single_thread

DDCONFIG = dict(
    attn_type="none", double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3,
    ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
)  # fmt: skip
LOSS = {"target": "ldm.modules.losses.reconstruction.VQReconstructionLoss"}


def test_quantiser_counts_usage_in_training_and_restarts_dead_codes():
    torch.manual_seed(0)
    quantiser = VectorQuantizer(8, 3).train()
    z = torch.randn(2, 3, 4, 4) + 10.0  # far from every initial code
    _, _, indices = quantiser(z)
    assert quantiser.usage.sum() == 32 and quantiser.usage[indices.unique()].all()
    dead = int((quantiser.usage == 0).sum())
    assert quantiser.restart_dead_codes(z) == dead > 0
    assert quantiser.usage is None, "counting starts again after a restart"
    restarted = quantiser.embedding.weight[quantiser.embedding.weight.norm(dim=1) > 5]
    assert len(restarted) == dead, "restarted codes now sit on the latents"
    quantiser.eval()
    quantiser(z)
    assert quantiser.usage is None, "no counting outside training"


def test_codebook_is_not_part_of_the_saved_usage_state():
    model = VQModel(DDCONFIG, LOSS, n_embed=16, embed_dim=3)
    assert not any("usage" in key for key in model.state_dict())


class RepeatedBatch(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, length: int):
        self.images, self.length = images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index % len(self.images)]}


def test_vq_model_learns_to_reconstruct_smooth_images(tmp_path):
    """60 Lightning steps on 4 smooth 32-px images: the reconstruction error at least halves."""
    torch.manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 32, 32) * 2 - 1, 7, 1, 3).permute(0, 2, 3, 1)
    model = VQModel(DDCONFIG, LOSS, n_embed=64, embed_dim=3, learning_rate=2e-3, restart_dead_codes_every=20)

    def error() -> float:
        model.eval()
        with torch.no_grad():
            x = images.permute(0, 3, 1, 2)
            return float((model(x)[0] - x).abs().mean())

    before = error()
    trainer = pl.Trainer(
        max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(RepeatedBatch(images, 4 * 60), batch_size=4)
    with single_thread():
        trainer.fit(model, loader)
    after = error()
    assert after < 0.5 * before, (before, after)


def test_codebook_starts_on_the_latents_of_a_warmed_up_autoencoder(tmp_path):
    """quantize_from_step: the first steps train without quantisation, then every code is placed on
    that step's latents (not on a random encoder's), and quantised training goes on from there."""
    torch.manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 32, 32) * 2 - 1, 7, 1, 3).permute(0, 2, 3, 1)
    model = VQModel(DDCONFIG, LOSS, n_embed=64, embed_dim=3, learning_rate=2e-3, quantize_from_step=10)
    initial_codes = model.quantize.embedding.weight.detach().clone()
    seen = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step in (9, 11):
                seen[trainer.global_step] = pl_module.quantize.embedding.weight.detach().clone()

    trainer = pl.Trainer(
        max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Watch()],
    )  # fmt: skip
    with single_thread():
        trainer.fit(model, torch.utils.data.DataLoader(RepeatedBatch(images, 4 * 12), batch_size=4))
    assert torch.equal(seen[9], initial_codes), "no codebook use before quantize_from_step"
    with torch.no_grad():
        latents = model.quant_conv(model.encoder(images.permute(0, 3, 1, 2)))
    spread = latents.std(dim=(0, 2, 3))
    assert not torch.equal(seen[11], initial_codes)
    assert torch.all(seen[11].std(dim=0) > 0.2 * spread), (
        "the codes cover the latents, not the initial uniform box"
    )
