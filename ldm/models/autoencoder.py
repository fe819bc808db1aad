"""Training the VQ first stage (`VQFirstStage`): images (B,3,H,W) in [-1,1] ↔ latents (B,embed_dim,H/f,W/f)."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from einops import rearrange

from ldm.checkpoint import first_stage_state, load_state_into
from ldm.models.first_stage import VQFirstStage
from ldm.util import instantiate_from_config


class VQModel(VQFirstStage, pl.LightningModule):
    """The Lightning module that trains a `VQFirstStage` on reconstruction and codebook losses."""

    def __init__(
        self,
        ddconfig: Mapping,
        lossconfig: Mapping,
        n_embed: int,
        embed_dim: int,
        image_key: str = "image",
        monitor: str | None = None,
        learning_rate: float = 4.5e-6,
        restart_dead_codes_every: int = 0,
        quantize_from_step: int = 0,
        train_decoder_only: bool = False,
        ckpt_path: str | None = None,
    ):
        super().__init__(ddconfig=ddconfig, n_embed=n_embed, embed_dim=embed_dim)
        self.image_key = image_key
        self.learning_rate = learning_rate
        self.restart_dead_codes_every = restart_dead_codes_every
        self.quantize_from_step = quantize_from_step
        self._codes_started = False
        if monitor is not None:
            self.monitor = monitor
        self.loss = instantiate_from_config(lossconfig)
        if ckpt_path is not None:
            load_state_into(self, first_stage_state(ckpt_path), ckpt_path, strict=False)
        self.train_decoder_only = train_decoder_only
        if train_decoder_only:
            for module in (self.encoder, self.quant_conv, self.quantize):
                module.requires_grad_(False)

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether some steps leave trainable parameters out of the loss (the codebook, before
        `quantize_from_step`): multi-process (DDP) training must then look for them."""
        return self.quantize_from_step > 0 and not self.train_decoder_only

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction through the quantiser, and the codebook loss."""
        quant, codebook_loss, _ = self.quantize(self.encode(x))
        return self.decode(quant, force_not_quantize=True), codebook_loss

    def get_input(self, batch: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        """Channel-last images (B,H,W,3) → (B,3,H,W) float."""
        return rearrange(batch[key], "b h w c -> b c h w").contiguous().float()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Reconstruction + codebook loss.

        For the first `quantize_from_step` steps the decoder sees the encoder's latents unquantised
        (a plain autoencoder learns what to encode, colour included); the codebook then starts on
        that step's latents, and with `restart_dead_codes_every` codes unused for that many steps
        move onto current latents. Starting the codebook on a random encoder's latents instead can
        leave it on a degenerate set that quantisation never escapes (it was seen to drop colour).
        """
        x = self.get_input(batch, self.image_key)
        if self.train_decoder_only:
            return self._decoder_step(x)
        h = self.quant_conv(self.encoder(x))
        if self.global_step < self.quantize_from_step:
            reconstruction = self.decoder(self.post_quant_conv(h))
            loss, logs = self.loss(h.new_zeros(()), x, reconstruction, split="train")
            self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
            return loss
        if self.global_step == self.quantize_from_step and not self._codes_started:
            self.quantize.reset_codes(h)
            self._sync_codebook()
            self._codes_started = True
        quant, codebook_loss, _ = self.quantize(h)
        reconstruction = self.decoder(self.post_quant_conv(quant))
        loss, logs = self.loss(codebook_loss, x, reconstruction, split="train")
        every = self.restart_dead_codes_every
        if every and (self.global_step + 1) % every == 0:
            logs["train/restarted_codes"] = torch.tensor(float(self.quantize.restart_dead_codes(h)))
            self._sync_codebook()
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _decoder_step(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss through the fixed encoder and codebook: only the decoder learns, so
        the latents (and a diffusion model trained on them) stay as they were."""
        with torch.no_grad():
            quant = self.quantize(self.encode(x))[0]
        reconstruction = self.decode(quant, force_not_quantize=True)
        loss, logs = self.loss(x.new_zeros(()), x, reconstruction, split="train")
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _sync_codebook(self) -> None:
        """Give every process rank 0's codebook after a reset (DDP only syncs gradients)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.quantize.embedding.weight.data, src=0)

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        x = self.get_input(batch, self.image_key)
        reconstruction, codebook_loss = self(x)
        _, logs = self.loss(codebook_loss, x, reconstruction, split="val")
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for name, p in self.named_parameters() if not name.startswith("loss.")]
        return torch.optim.Adam(params, lr=self.learning_rate)

    @torch.no_grad()
    def log_images(
        self, batch: Mapping[str, torch.Tensor], N: int = 8, **_: object
    ) -> dict[str, torch.Tensor]:
        x = self.get_input(batch, self.image_key)[:N]
        return {"inputs": x, "reconstructions": self(x)[0].clamp(-1, 1)}


class VQModelInterface(VQModel):
    """The name LDM and VIDM configs give the first stage (`encode` stops before quantisation)."""
