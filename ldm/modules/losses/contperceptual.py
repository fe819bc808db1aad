"""First-stage losses named by configs."""

from torch import nn


class DummyLoss(nn.Module):
    """Placeholder loss of a frozen first stage: the official config names it, nothing calls it."""
