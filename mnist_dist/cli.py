"""`mnist-dist COMMAND`: one entry point, one line per user mistake, exit codes.

Each command is a module of mnist_dist/commands with add_arguments(parser) and run(args) -> int.
"""

from __future__ import annotations

import argparse
import os
import sys

import mnist_dist
from mnist_dist.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError


class _Version(argparse.Action):
    """--version, looked up only when asked (the installed metadata: ~10 ms that no training start-up needs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mnist-dist {mnist_dist.__version__}")
        parser.exit()


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per command."""
    from mnist_dist.commands import (
        compare,
        convert,
        demo,
        download,
        evaluate,
        export,
        predict,
        push,
        recipes,
        report,
        scripts,
        sweep,
        train,
    )

    commands = {
        "train": (train, "train a model (same as `accelerate launch train_accel.py ...`)"),
        "eval": (evaluate, "evaluate a trained model on a dataset split"),
        "predict": (predict, "classify image files (PNG/JPEG/BMP/GIF) with a trained model"),
        "export": (export, "export a trained model (ONNX, TorchScript, a Hub folder)"),
        "demo": (demo, "serve a draw-a-digit web page for a run's or a Hub repo's model (Gradio)"),
        "push": (push, "upload a run's model to the Hugging Face Hub (its Hub files only)"),
        "report": (report, "rebuild the pictures and report.md of a run folder"),
        "recipes": (recipes, "list the training recipes that --config NAME finds"),
        "sweep": (sweep, "run a sweep file's points (grid or random), each in its own run folder"),
        "compare": (
            compare,
            "rank run folders or a sweep folder by a metric: a table and a picture",
        ),
        "download": (
            download,
            "get the official MNIST / Fashion-MNIST IDX files, verified, into a folder",
        ),
        "convert": (
            convert,
            "turn a CSV of digits (784 pixels and a label per row) into an IDX folder",
        ),
        "scripts": (
            scripts,
            "print or write the SLURM scripts and launch YAMLs (sbatch without a checkout)",
        ),
    }
    parser = argparse.ArgumentParser(
        prog="mnist-dist", description="Train and use MNIST-family classifiers."
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (module, help_text) in commands.items():
        p = parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, command=name)
    return parser, parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = f"mnist-dist {argv[0] if argv and not argv[0].startswith('-') else ''}".strip()
    try:
        # Inside the try: a Ctrl-C while the commands import torch (a second of every start-up) is one line too.
        parser, commands = build_parser()
        if argv and argv[0] in commands:
            # Intermixed: options and key=value overrides in any order (`eval RUN --json data.dir=X`), which plain
            # parse_args refuses once an option has ended the positionals.
            args = commands[argv[0]].parse_intermixed_args(argv[1:])
        else:
            args = parser.parse_args(argv)  # --help, or a usage error naming the commands
        return args._run(args) or 0
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except BrokenPipeError:
        # The reader left (`mnist-dist recipes | head`): stop quietly, as other command-line tools do; stdout now
        # goes nowhere so that the interpreter's final flush does not fail again (the Python docs' recipe, signal).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        # A path that cannot be written or read (read-only, missing folder, full disk).
        where = f": {e.filename}" if e.filename else ""
        print(f"{name}: error: {e.strerror or e}{where}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
