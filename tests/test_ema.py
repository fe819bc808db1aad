"""LitEma keeps LDM's buffer names and update rule; ema_scope swaps weights in and out."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ldm.modules.ema import LitEma


def test_buffer_names_and_update_rule(small_model):
    ema = small_model.model_ema
    names = [name for name, _ in ema.named_buffers()]
    assert names[:2] == ["decay", "num_updates"]
    assert "diffusion_modelinput_blocks00weight" in names
    assert ema.decay.dtype == torch.float32 and ema.num_updates.dtype == torch.int32

    ema.load_state_dict(ema.state_dict() | {"num_updates": torch.tensor(0, dtype=torch.int32)})
    param = small_model.model.diffusion_model.input_blocks[0][0].weight
    shadow_before = ema.diffusion_modelinput_blocks00weight.clone()
    with torch.no_grad():
        param.add_(1.0)
    ema(small_model.model)
    decay = min(0.9999, 2 / 11)  # after the first update: (1 + n) / (10 + n) with n = 1
    expected = shadow_before - (1 - decay) * (shadow_before - param.detach())
    torch.testing.assert_close(ema.diffusion_modelinput_blocks00weight, expected)
    assert int(ema.num_updates) == 1


def count_host_reads(fn) -> int:
    """How often `fn()` reads a tensor's value into Python (item, float, int, bool all go through
    aten._local_scalar_dense): on a GPU each read waits for the device."""
    reads = []

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    with HostReads():
        fn()
    return len(reads)


def test_update_reads_nothing_back_from_the_device():
    net = torch.nn.Linear(3, 3)
    ema = LitEma(net)
    assert count_host_reads(lambda: ema(net)) == 0
    assert int(ema.num_updates) == 1


def test_update_follows_counters_loaded_from_a_checkpoint():
    net = torch.nn.Linear(3, 3)
    ema = LitEma(net, decay=0.9)
    saved = ema.state_dict() | {
        "num_updates": torch.tensor(99, dtype=torch.int32),
        "decay": torch.tensor(0.5),
    }
    ema.load_state_dict(saved)
    shadow = ema.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema(net)
    assert int(ema.num_updates) == 100
    torch.testing.assert_close(ema.weight, shadow + 0.5 * (net.weight.detach() - shadow))


def test_only_trainable_parameters_are_shadowed():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].weight.requires_grad = False
    names = {name for name, _ in LitEma(net).named_buffers()}
    assert names == {"decay", "num_updates", "0weight", "0bias", "1bias"}


def test_ema_scope_swaps_and_restores(small_model):
    param = small_model.model.diffusion_model.out[4].weight
    with torch.no_grad():
        small_model.model_ema.diffusion_modelout4weight.fill_(0.5)
    before = param.detach().clone()
    with small_model.ema_scope():
        assert torch.all(param == 0.5)
    assert torch.equal(param, before)
