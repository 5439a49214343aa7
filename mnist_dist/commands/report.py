"""`mnist-dist report RUN_DIR`: the pictures and report.md of a run folder, with or without W&B.

Everything is rebuilt from files the run left (report.build_report): metrics.jsonl (curves, confusion matrix), the
saved model (model.safetensors + model.json) and the run's config.yaml data section (test images for
samples.png), summary.json (final numbers, git revision). Training writes the same files at its end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_dist.errors import UserError
from mnist_dist.outputs import report
from mnist_dist.run.rundir import CONFUSION, CURVES, METRICS, MODEL_FILE, REPORT, SAMPLES, SUMMARY

# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run folder (with metrics.jsonl, model.safetensors, config.yaml)",
    )


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not any((run_dir / name).is_file() for name in (METRICS, SUMMARY, MODEL_FILE)):
        raise UserError(f"{run_dir}: not a run folder (no {METRICS}, {SUMMARY} or {MODEL_FILE})")
    problems = report.build_report(run_dir)
    for name in (CURVES, CONFUSION, SAMPLES, REPORT):
        if (run_dir / name).is_file():
            print(run_dir / name)
    for line in problems:
        print(f"mnist-dist report: warning: {line}", file=sys.stderr)
    return 1 if problems else 0
