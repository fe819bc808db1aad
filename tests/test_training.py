"""The training loop learns, EMA follows every step, validation reports EMA losses, initialisation.

In-process Lightning fits of the tiny config's model on a small synthetic batch (32 px frames, so
8 x 8 latents) keep these tests to seconds; the full-size runs through main.py are in
tests/test_main_e2e.py.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ldm.checkpoint import CheckpointError, saved_global_step
from ldm.training.callbacks import LastCheckpoint, SetupCallback
from ldm.training.runs import RunPaths
from ldm.training.trainer import build_model, run_seed
from ldm.util import instantiate_from_config
from tests.conftest import ROOT

TINY_CONFIG = ROOT / "configs" / "inpaint_4frame_tiny.yaml"


def tiny_model(learning_rate: float = 1e-3, seed: int = 0) -> pl.LightningModule:
    """The model of configs/inpaint_4frame_tiny.yaml, freshly initialised with `seed`."""
    torch.manual_seed(seed)
    model = instantiate_from_config(OmegaConf.load(TINY_CONFIG).model)
    model.learning_rate = learning_rate
    return model


def synthetic_batch(
    batch_size: int = 2, size: int = 32, frames: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch in the dataset's format: smooth scenes panning across frames, a square hole in each.

    image (B,S,S,3) in [-1,1] is the last frame; hand_images (B,T,S,S,3) has the hole set to -1;
    mask (B,T,S,S) is +1 in the hole; loss_mask (B,S/4,S/4) is all True.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch_size, 3, 8, 8 + frames, generator=generator) * 2 - 1
    scene = F.interpolate(
        coarse, size=(size, size + frames * size // 8), mode="bilinear", align_corners=False
    )
    shift = size // 8
    clips = torch.stack([scene[..., t * shift : t * shift + size] for t in range(frames)], dim=1)
    clips = clips.permute(0, 1, 3, 4, 2).contiguous()  # B,T,H,W,3
    hole = torch.zeros(batch_size, frames, size, size, dtype=torch.bool)
    hole[:, :, size // 4 : size // 2, size // 4 : size // 2] = True
    return {
        "image": clips[:, -1].clone(),
        "hand_images": clips.masked_fill(hole[..., None], -1.0),
        "mask": hole.float() * 2 - 1,
        "loss_mask": torch.ones(batch_size, size // 4, size // 4, dtype=torch.bool),
    }


def batch_loader(batch: dict[str, torch.Tensor], length: int) -> DataLoader:
    """The same pre-made batch `length` times."""
    return DataLoader([batch] * length, batch_size=None)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(autouse=True)
def one_thread():
    """Run these small-tensor tests on one thread.

    32-px batches gain nothing from a second thread, and when the other core is busy (tests run
    beside other work) OpenMP's waiting threads were seen to make each step 10-30x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def fixed_draw_loss(model: pl.LightningModule, batch: dict, draws: int = 8) -> float:
    """Training loss of `batch` averaged over fixed timesteps and noise (the same before and after)."""
    model.eval()
    z, c = model.get_input(batch, model.first_stage_key)
    generator = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(draws):
        t = torch.randint(0, model.num_timesteps, (z.shape[0],), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        loss, _ = model.p_losses(z, c, t, noise=noise, loss_mask=batch["loss_mask"].unsqueeze(1))
        losses.append(float(loss))
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def test_hole_loss_weight_weighs_the_target_hole_of_the_loss():
    model, batch = tiny_model(), synthetic_batch()
    batch["loss_mask"][0, 0, 0] = False
    z, c, plain = model.loss_inputs(batch)
    model.hole_loss_weight = 3.0
    _, _, weights = model.loss_inputs(batch)
    hole = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    hole[..., 2:4, 2:4] = True  # the batch's 8x8-pixel hole at a quarter of the 32-px side
    expected = torch.where(hole, 3.0, 1.0) * plain
    torch.testing.assert_close(weights, expected)
    assert weights[0, 0, 0, 0] == 0 and plain[1].eq(1).all()
    t, noise = torch.tensor([100, 700]), torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    loss, _ = model.p_losses(z, c, t, noise=noise, loss_mask=weights)
    error = (model.apply_model(model.q_sample(z, t, noise), t, c) - noise).abs()
    torch.testing.assert_close(loss, (error * expected).mean())


def test_training_draws_timesteps_from_the_configured_range_only():
    model = tiny_model()
    x = torch.zeros(20_000, 1)  # 20 000 draws miss a given step with probability 2e-9
    t = model.draw_timesteps(x)
    assert t.min() == 0 and t.max() == model.num_timesteps - 1
    config = OmegaConf.load(TINY_CONFIG).model
    config.params.timestep_range = [750, 1000]
    t = instantiate_from_config(config).draw_timesteps(x)
    assert t.min() == 750 and t.max() == 999
    config.params.timestep_range = [500, 1001]
    with pytest.raises(ValueError, match=r"timestep_range must lie in \[0, 1000\], got \[500, 1001\)"):
        instantiate_from_config(config)


def test_logged_samples_use_the_configured_ddim_steps_and_spacing(monkeypatch):
    model, seen = tiny_model(), []
    apply_model = model.apply_model

    def recording_apply(x, t, cond, *args, **kwargs):
        seen.append(sorted(set(t.tolist())))
        return apply_model(x, t, cond, *args, **kwargs)

    monkeypatch.setattr(model, "apply_model", recording_apply)
    logger = instantiate_from_config(
        {
            "target": "ldm.models.diffusion.logging.InpaintLog3d",
            "params": {"ddim_steps": 1, "spacing": "trailing"},
        }
    )
    images = logger(model.eval(), synthetic_batch(), N=2)
    assert seen == [[999]]
    assert images["samples"].shape == images["target"].shape == (2, 3, 32, 32)


def test_overfits_one_batch():
    """120 AdamW steps on one batch more than halve its loss.

    Training draws t and noise at random every step (the real loop); the loss is measured on 8
    fixed (t, noise) draws before and after, so the comparison does not depend on the luck of one
    draw. At the start the zero-initialised output layer predicts 0 and the L1 loss is E|noise| ≈
    0.8. The context frames show the target outside the hole, so a model that learns can infer
    x0 and hence the noise; 0.5 x the start is far below what an untrained or broken loop reaches
    (the draws' spread is a few percent) and well above what 120 steps reach (about 0.2).
    """
    pl.seed_everything(0)
    batch = synthetic_batch()
    model = tiny_model(learning_rate=1e-3)
    before = fixed_draw_loss(model, batch)
    quiet_trainer(max_steps=120, limit_val_batches=0).fit(model, batch_loader(batch, 120))
    after = fixed_draw_loss(model, batch)
    # Measured: before 0.798; after 0.244 x with 1 and 2 threads, 0.240 x with the AVX2 kernels (AMD EPYC).
    assert before == pytest.approx(0.8, abs=0.1)
    assert after < 0.5 * before, f"loss went from {before:.3f} to {after:.3f}"


class RecordEma(pl.Callback):
    """Records EMA's update count and one shadow weight before every training batch."""

    def __init__(self):
        self.counts, self.shadows = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts.append(int(pl_module.model_ema.num_updates))
        self.shadows.append(pl_module.model_ema.diffusion_modelinput_blocks00weight.clone())


def test_ema_updates_after_every_step():
    model, record = tiny_model(), RecordEma()
    quiet_trainer(max_steps=3, limit_val_batches=0, callbacks=[record]).fit(
        model, batch_loader(synthetic_batch(), 3)
    )
    assert record.counts == [0, 1, 2]
    assert int(model.model_ema.num_updates) == 3 == model.global_step
    shadows = [*record.shadows, model.model_ema.diffusion_modelinput_blocks00weight]
    assert all(not torch.equal(a, b) for a, b in zip(shadows, shadows[1:], strict=False))


def test_weights_without_ema_start_the_ema_too(tmp_path):
    """Fine-tuning from an inference file (EMA weights under the denoiser's names, no `model_ema`):
    the EMA starts from the loaded weights, not from the fresh initialisation."""
    source = tiny_model(seed=1)
    weights = {k: v for k, v in source.state_dict().items() if k.startswith("model.diffusion_model.")}
    save_file(weights, tmp_path / "weights.safetensors")
    config = OmegaConf.load(TINY_CONFIG).model
    config.params.ckpt_path = str(tmp_path / "weights.safetensors")
    torch.manual_seed(0)
    model = instantiate_from_config(config)
    ema = model.model_ema.as_parameters(model.model)
    for name, value in model.model.named_parameters():
        assert torch.equal(value, weights[f"model.{name}"]) and torch.equal(ema[name], value), name


def test_validation_reports_ema_losses_with_ema_weights():
    """Training weights predict a constant 5 for the noise, EMA weights predict 0.

    With L1 loss that gives val/loss ≈ E|noise - 5| ≈ 5 and val/loss_ema ≈ E|noise| ≈ 0.8, so
    each number shows which weights computed it; validation must leave the training weights in place.
    """
    model = tiny_model()
    final = model.model.diffusion_model.out[4]
    with torch.no_grad():
        final.bias.fill_(5.0)
        model.model_ema.diffusion_modelout4bias.zero_()
    metrics = quiet_trainer().validate(model, batch_loader(synthetic_batch(), 2), verbose=False)[0]
    # Measured 4.99 and 0.813 (AMD EPYC, all 3 settings).
    assert metrics["val/loss"] == pytest.approx(5.0, abs=0.2)
    assert metrics["val/loss_ema"] == pytest.approx(0.8, abs=0.1)
    assert torch.all(final.bias == 5.0)


def test_validation_scores_both_weights_on_the_same_timesteps_and_noise():
    """With EMA weights equal to the training weights the two losses must be equal: any difference
    would come from the draws, and would make the choice of the best checkpoint noisy."""
    model = tiny_model()
    final = model.model.diffusion_model.out[4]
    with torch.no_grad():
        final.bias.fill_(0.3)
        model.model_ema.diffusion_modelout4bias.fill_(0.3)
    metrics = quiet_trainer().validate(model, batch_loader(synthetic_batch(), 3), verbose=False)[0]
    assert metrics["val/loss"] == metrics["val/loss_ema"]


class FillWeights:
    """A stand-in initializer (the real one needs the 2 GB inpainting_big checkpoint)."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.model.diffusion_model.out[4].weight.fill_(self.value)


def config_with_initializer():
    config = OmegaConf.create({"model": OmegaConf.load(TINY_CONFIG).model})
    config.initializer = {"target": "tests.test_training.FillWeights", "params": {"value": 0.25}}
    return config


def test_initializer_runs_for_fresh_runs_only(tmp_path):
    config = config_with_initializer()
    fresh = build_model(config, RunPaths(tmp_path / "fresh"))
    assert torch.all(fresh.model.diffusion_model.out[4].weight == 0.25)

    trained = tiny_model(seed=1)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": trained.state_dict(), "global_step": 7}, checkpoint)
    resumed = build_model(config, RunPaths(tmp_path / "run", checkpoint))
    torch.testing.assert_close(resumed.state_dict(), trained.state_dict())


def test_resume_checkpoint_must_fit_the_config(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    state = tiny_model().state_dict()
    state.pop("model.diffusion_model.out.4.bias")
    torch.save({"state_dict": state}, checkpoint)
    with pytest.raises(CheckpointError, match="1 missing: model.diffusion_model.out.4.bias") as err:
        build_model(config_with_initializer(), RunPaths(tmp_path, checkpoint))
    assert "\n" not in str(err.value)


class InterruptAtStep(pl.Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) when the batch after `step` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_single_process_run_saves_last_checkpoint(tmp_path):
    """Ctrl-C (KeyboardInterrupt) during a fit leaves checkpoints/last.ckpt at the current step."""
    paths = RunPaths(tmp_path / "run")
    setup = SetupCallback(paths, "now", OmegaConf.create(), OmegaConf.create())
    last = LastCheckpoint(str(paths.ckptdir))
    trainer = quiet_trainer(
        max_steps=5,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[setup, last, InterruptAtStep(2)],
    )
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after KeyboardInterrupt
        trainer.fit(tiny_model(), batch_loader(synthetic_batch(), 5))
    saved = torch.load(paths.ckptdir / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and int(saved["state_dict"]["model_ema.num_updates"]) == 2
    assert sorted(p.name for p in paths.cfgdir.iterdir()) == ["now-lightning.yaml", "now-project.yaml"]


class RecordLastCheckpointStep(pl.Callback):
    """The global_step stored in last.ckpt, read at the start of every training batch."""

    def __init__(self, path):
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.path.is_file():
            self.steps.append(torch.load(self.path, weights_only=True)["global_step"])


@pytest.mark.parametrize("every, expected", [(0, [2, 2, 4]), (3, [2, 3, 4])])
def test_last_checkpoint_follows_every_validation_and_the_end(tmp_path, every, expected):
    """last.ckpt holds the latest validated (or every-n) step during the fit and the final step
    after it, whatever the monitored metric did (ModelCheckpoint's own save_last does not)."""
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=every)
    record = RecordLastCheckpointStep(tmp_path / "last.ckpt")
    trainer = quiet_trainer(
        max_steps=5,
        val_check_interval=2,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[last, record],
    )
    trainer.fit(tiny_model(), batch_loader(synthetic_batch(), 5), batch_loader(synthetic_batch(), 1))
    assert record.steps == expected
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5


class RecordLearningRate(pl.Callback):
    """(global_step, learning rate) at the start of every training batch."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def scheduled_tiny_model(max_decay_steps: int, learning_rate: float) -> pl.LightningModule:
    model = tiny_model(learning_rate)
    model.scheduler_config = {
        "target": "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
        "params": {"warm_up_steps": 2, "max_decay_steps": max_decay_steps, "f_min": 0.1},
    }
    return model


def test_a_resumed_run_follows_the_configured_schedule_from_the_saved_step(tmp_path):
    """Resuming with a longer schedule and another rate (overridden on the command line) stretches the
    decay from the saved step on, at the new rate; the checkpoint's own settings do not come back."""
    first = quiet_trainer(
        max_steps=3, limit_val_batches=0, enable_checkpointing=True, default_root_dir=tmp_path
    )
    first.callbacks.append(LastCheckpoint(str(tmp_path), every_n_train_steps=0))
    first.fit(scheduled_tiny_model(max_decay_steps=4, learning_rate=1e-3), batch_loader(synthetic_batch(), 3))
    record = RecordLearningRate()
    resumed = quiet_trainer(max_steps=5, limit_val_batches=0, callbacks=[record])
    stretched = scheduled_tiny_model(max_decay_steps=10, learning_rate=2e-3)
    resumed.fit(stretched, batch_loader(synthetic_batch(), 5), ckpt_path=tmp_path / "last.ckpt")
    factor = instantiate_from_config(stretched.scheduler_config)
    assert [step for step, _ in record.rates] == [3, 4]
    assert [rate for _, rate in record.rates] == pytest.approx([2e-3 * factor(3), 2e-3 * factor(4)])
    assert factor(4) > 0.8, "the saved schedule (to step 4) would be at its floor, 0.1"


class RecordBatches(pl.Callback):
    """A fingerprint (the sum of its target frames) of every training batch."""

    def __init__(self):
        self.fingerprints = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.fingerprints.append(round(float(batch["image"].sum()), 3))


def test_a_resumed_run_draws_new_batches_instead_of_replaying_its_first(tmp_path):
    """main.py seeds after building the model, as here. Lightning restarts the epoch's shuffle on
    resume, so re-seeded with the run's seed alone, a resumed run would see its first batches again."""
    batches = [synthetic_batch(seed=seed) for seed in range(16)]
    fresh, resumed = RecordBatches(), RecordBatches()
    model = tiny_model()
    pl.seed_everything(run_seed(23, 0), verbose=False)
    first = quiet_trainer(
        max_steps=3,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[fresh],
        default_root_dir=tmp_path,
    )
    first.callbacks.append(LastCheckpoint(str(tmp_path), every_n_train_steps=0))
    first.fit(model, DataLoader(batches, batch_size=None, shuffle=True))
    step = saved_global_step(tmp_path / "last.ckpt")
    model = tiny_model()
    pl.seed_everything(run_seed(23, step), verbose=False)
    second = quiet_trainer(max_steps=6, limit_val_batches=0, callbacks=[resumed])
    second.fit(model, DataLoader(batches, batch_size=None, shuffle=True), ckpt_path=tmp_path / "last.ckpt")
    assert step == 3 and len(resumed.fingerprints) == 3
    assert resumed.fingerprints != fresh.fingerprints
    assert run_seed(23, 3) == run_seed(23, 3) != run_seed(23, 4), "the same resume draws the same"
