"""`mnist-dist recipes`: the training recipes that `--config NAME` finds, each with its first comment line."""

from __future__ import annotations

import argparse

from mnist_dist import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", action="store_true", help="also print where each recipe file is")


def run(args) -> int:
    found = config.recipes()
    width = max(map(len, found), default=0)
    for name, path in found.items():
        print(
            f"{name:<{width}}  {config.recipe_summary(path)}"
            + (f"\n{'':<{width}}  {path}" if args.paths else "")
        )
    return 0
