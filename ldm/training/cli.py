"""main.py's command line, compatible with the published one: flags, boolean values, trailing overrides."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


TRUE_WORDS = ("yes", "true", "t", "y", "1")


FALSE_WORDS = ("no", "false", "f", "n", "0")


BOOLEAN_FLAGS = ("-t", "--train", "--no-test", "-d", "--debug", "--scale_lr")


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def explicit_flag_values(argv: list[str]) -> list[str]:
    """Give each boolean flag not followed by true/false an explicit `true`.

    The flags take an optional value (`-t`, `-t false`), and argparse would otherwise swallow a
    following override: `-t lightning.trainer.max_steps=6` must train *and* apply the override.
    """
    out = []
    for index, token in enumerate(argv):
        out.append(token)
        following = argv[index + 1].lower() if index + 1 < len(argv) else ""
        if token in BOOLEAN_FLAGS and following not in TRUE_WORDS + FALSE_WORDS:
            out.append("true")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Train (-t) a latent-diffusion model such as VIDM from OmegaConf configs with Lightning.",
        epilog=(
            "Trailing key=value arguments override config entries, e.g. lightning.trainer.max_steps=100 "
            "data.params.batch_size=2. Every lightning.trainer.* key is passed to pytorch_lightning.Trainer "
            "(accelerator, devices, strategy, num_nodes, precision, accumulate_grad_batches, ...). "
            "Without --gpus the run uses the CPU."
        ),
    )
    flag = {"type": str2bool, "nargs": "?", "const": True}
    parser.add_argument(
        "-b",
        "--base",
        nargs="*",
        default=[],
        metavar="config.yaml",
        help="configs, merged left to right (later ones win)",
    )
    parser.add_argument("-t", "--train", default=False, help="train the model", **flag)
    parser.add_argument("--no-test", default=False, help="skip testing after training", **flag)
    parser.add_argument(
        "-r",
        "--resume",
        default="",
        metavar="DIR_OR_CKPT",
        help="continue a run from its log directory (its checkpoints/last.ckpt) or one of its checkpoints; "
        "the model, EMA, optimizer and step are restored and the run keeps writing into the same directory",
    )
    parser.add_argument("-n", "--name", default="", help="run name (default: the first config's file name)")
    parser.add_argument("-p", "--project", default="", help="group the run under <logdir>/<project>/")
    parser.add_argument("-f", "--postfix", default="", help="appended to the run directory's name")
    parser.add_argument(
        "-l", "--logdir", default="logs", help="where run directories are made (default: logs)"
    )
    parser.add_argument("-s", "--seed", type=int, default=23, help="random seed (default: 23)")
    parser.add_argument(
        "-d",
        "--debug",
        default=False,
        help="open the debugger (pdb post-mortem) on an unexpected error",
        **flag,
    )
    parser.add_argument(
        "--scale_lr",
        default=True,
        help="learning rate = base_learning_rate x accumulate_grad_batches x devices x nodes x batch_size "
        "(default: true; false uses base_learning_rate as it is)",
        **flag,
    )
    parser.add_argument(
        "--gpus",
        default=None,
        metavar="IDS",
        help="GPU indices, e.g. 0,1,2,3 (or -1 for all): train on them with DDP",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="read the --resume checkpoint with full unpickling (runs code in the file: only for files you trust)",
    )
    return parser
