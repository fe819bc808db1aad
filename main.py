"""Train VIDM with PyTorch Lightning, command-line compatible with the published main.py.

    python main.py --base configs/inpaint_4frame.yaml -t --gpus 0,1,2,3 [a.b.c=value ...]
    python main.py --resume logs/2024-01-01T00-00-00_inpaint_4frame -t

A run writes `<logdir>/[<project>/]<timestamp>_<name or config name><postfix>/` with
`checkpoints/` (last.ckpt and the best by the model's `monitor`), `configs/` (the merged project
and lightning configs), `images/` (ImageLogger grids) and `tensorboard/` (or `csv/` without
TensorBoard). Only the global-rank-zero process writes there. The pieces live in ldm/training/;
configs name `main.DataModuleFromConfig` and `main.ImageLogger`, as the published ones do.
"""

import sys

from ldm.training.callbacks import ImageLogger, LastCheckpoint, SetupCallback
from ldm.training.data import DataModuleFromConfig
from ldm.training.trainer import main

__all__ = ["DataModuleFromConfig", "ImageLogger", "LastCheckpoint", "SetupCallback", "main"]

if __name__ == "__main__":
    sys.exit(main())
