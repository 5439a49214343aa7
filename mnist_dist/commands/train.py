"""`mnist-dist train [--config RECIPE] [key=value ...]` (= `accelerate launch train_accel.py ...`): the config
merged from defaults, a recipe or YAML file and overrides, then one training run (mnist_dist/train/loop.py)."""

from __future__ import annotations

import argparse

from mnist_dist import config
from mnist_dist.train import loop


class _KeysEpilog(argparse.RawDescriptionHelpFormatter):
    """Builds the config-key list (epilog = config.help_text) only when help is printed: not at every start-up."""

    def add_text(self, text):
        super().add_text(text() if callable(text) else text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _KeysEpilog
    parser.epilog = config.help_text  # type: ignore[assignment]  # a callable: _KeysEpilog calls it at --help
    parser.add_argument(
        "--config",
        metavar="YAML_OR_RECIPE",
        help="a YAML file, or a recipe by name (`mnist-dist recipes`; defaults < YAML < overrides)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="smoke test: 1 epoch, 5 steps, no progress bars"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the merged config and exit"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.epochs=3 data.name=fashion_mnist run.dir=runs/x",
    )


def run(args) -> int:
    overrides = list(args.overrides)
    if args.dry_run:
        overrides += ["train.epochs=1", "train.max_steps=5", "train.progress=false"]
    cfg = config.load(args.config, overrides)
    if args.print_config:
        print(config.dump(cfg), end="")
        return 0
    return loop.train(cfg)
