"""`mnist-dist train|eval|predict|export|report|recipes|sweep|compare|convert`: one entry point, one line per user mistake, exit codes.

Each subcommand lives in its own module, which provides add_arguments(parser) and run(args) -> int.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import mnist_dist
from mnist_dist.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError

COMMANDS = {  # name: (module, one-line help)
    "train": ("mnist_dist.train", "train a model (same as `accelerate launch train_accel.py ...`)"),
    "eval": ("mnist_dist.evaluate", "evaluate a trained model on a dataset split"),
    "predict": (
        "mnist_dist.predict",
        "classify image files (PNG/JPEG/BMP/GIF) with a trained model",
    ),
    "export": ("mnist_dist.export", "export a trained model (ONNX, TorchScript)"),
    "push": (
        "mnist_dist.push",
        "upload a run's model to the Hugging Face Hub (its Hub files only)",
    ),
    "report": ("mnist_dist.report", "rebuild the pictures and report.md of a run folder"),
    "recipes": ("mnist_dist.recipes", "list the training recipes that --config NAME finds"),
    "sweep": (
        "mnist_dist.sweep",
        "run a sweep file's points (grid or random), each in its own run folder",
    ),
    "compare": (
        "mnist_dist.compare",
        "rank run folders or a sweep folder by a metric: a table and a picture",
    ),
    "download": (
        "mnist_dist.download",
        "get the official MNIST / Fashion-MNIST IDX files, verified, into a folder",
    ),
    "convert": (
        "mnist_dist.convert",
        "turn a CSV of digits (784 pixels and a label per row) into an IDX folder",
    ),
    "scripts": (
        "mnist_dist.scripts",
        "print or write the SLURM scripts and launch YAMLs (sbatch without a checkout)",
    ),
}


class _Version(argparse.Action):
    """--version, looked up only when asked (the installed metadata: ~10 ms that no training start-up needs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mnist-dist {mnist_dist.__version__}")
        parser.exit()


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per available command."""
    parser = argparse.ArgumentParser(
        prog="mnist-dist", description="Train and use MNIST-family classifiers."
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a real missing dependency inside the module
                raise
            continue
        p = commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, command=name)
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    if argv and argv[0] in commands:
        # Intermixed: options and key=value overrides in any order (`eval RUN --json data.dir=X`), which plain
        # parse_args refuses once an option has ended the positionals.
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)  # --help, or a usage error naming the commands
    try:
        return args._run(args) or 0
    except UserError as e:
        print(f"mnist-dist {args.command}: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print(f"mnist-dist {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except BrokenPipeError:
        # The reader left (`mnist-dist recipes | head`): stop quietly, as other command-line tools do; stdout now
        # goes nowhere so that the interpreter's final flush does not fail again (the Python docs' recipe, signal).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
