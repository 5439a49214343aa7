"""`mnist-dist compare RUN_DIR... | SWEEP_DIR`: runs side by side, ranked by a metric, with a picture.

One row per run: the swept values (a sweep folder's parameters, else the config keys that differ between the runs),
the best value of the metric over its evaluations (a sweep's metric, else val_accuracy), test accuracy, the epoch
reached, train seconds and whether it finished. Also writes compare.png: the metric against train seconds and
against each swept value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_dist import config
from mnist_dist.config import sweeps
from mnist_dist.errors import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, UserError
from mnist_dist.outputs import plots
from mnist_dist.run import rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run folders, or a sweep folder"
    )
    parser.add_argument(
        "--metric",
        help="rank by this metric, as W&B charts it (val/accuracy) or as metrics.jsonl has it (val_accuracy); "
        "default: the sweep's metric, else val/accuracy",
    )
    parser.add_argument(
        "--minimize", action="store_true", help="smaller is better (default: the sweep's goal)"
    )
    parser.add_argument(
        "--png", help="where to write the picture (default: SWEEP_DIR/compare.png or compare.png)"
    )


def collect(paths: list[str]) -> tuple[list[Path], sweeps.Sweep | None, Path | None]:
    """(run folders, the sweep if one sweep folder was given, that folder)."""
    if len(paths) == 1 and (Path(paths[0]) / rundir.SWEEP_FILE).is_file():
        folder = Path(paths[0])
        return (
            sorted(
                p
                for p in folder.iterdir()
                if p.is_dir()
                and ((p / rundir.CONFIG).is_file() or (p / rundir.SWEEP_POINT).is_file())
            ),
            sweeps.load(folder / rundir.SWEEP_FILE),
            folder,
        )
    runs = [Path(p) for p in paths]
    for run in runs:
        if not (run / rundir.CONFIG).is_file():
            raise UserError(f"{run}: not a run folder (no {rundir.CONFIG})")
    return runs, None, None


def settings(run: Path) -> dict:
    """The run's flat config; for a sweep point that never started, the overrides the sweep gave it."""
    if (run / rundir.CONFIG).exists():
        tree = rundir.read_config(run / rundir.CONFIG)
        assert tree is not None  # the file is there
        return config.flatten(tree)
    path = run / rundir.SWEEP_POINT
    words = (rundir.read_json(path) or {}).get("overrides", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise rundir.RunFileError(f"{path}: overrides must be a list of key=value words")
    try:
        return {
            k: v for word in words for k, v in config.flatten(config.parse_override(word)).items()
        }
    except UserError as e:
        raise rundir.RunFileError(f"{path}: {e}") from None


def row(run: Path, keys: list[str], metric: str, maximize: bool) -> dict:
    flat = settings(run)
    records = rundir.read_jsonl(run / rundir.METRICS)
    summary = rundir.read_json(run / rundir.SUMMARY) or {}
    code = (rundir.read_json(run / rundir.SWEEP_POINT) or {}).get("exit_code")
    values = [r[metric] for r in records if isinstance(r.get(metric), (int, float))]
    status = (
        "done"
        if summary
        else "failed"
        if code not in (None, 0, PREEMPTED_EXIT_CODE, INTERRUPTED_EXIT_CODE)
        else "incomplete"
        if records or code is not None
        else "not run"
    )
    return {
        "run": run.name,
        "values": {k: flat.get(k) for k in keys},
        "metric": (max if maximize else min)(values) if values else None,
        "test_accuracy": summary.get("test_accuracy"),
        "epoch": records[-1]["epoch"] if records else None,
        "train_seconds": summary.get(
            "train_seconds", records[-1].get("train_seconds") if records else None
        ),
        "status": status,
    }


def run(args) -> int:
    # a misspelled one would rank every run by "-" (a sweep file's own is checked as it loads)
    named = sweeps.metric_key(args.metric, "--metric", file_names=True) if args.metric else None
    runs, sweep, folder = collect(args.runs)
    if not runs:
        raise UserError(f"{args.runs[0]}: no run folders in it yet")
    metric = named or (sweeps.metric_key(sweep.metric, "metric") if sweep else "val_accuracy")
    maximize = not args.minimize and (sweep.maximize if sweep and not args.metric else True)
    if sweep:
        keys = list(sweep.parameters)
    else:  # the keys in which the runs differ, run.dir aside
        flats = [settings(r) for r in runs]
        keys = sorted(
            k
            for k in set().union(*flats)
            if k != "run.dir" and len({repr(f.get(k)) for f in flats}) > 1
        )
    rows = [row(r, keys, metric, maximize) for r in runs]
    rows.sort(
        key=lambda r: (
            r["metric"] is None,
            -(r["metric"] or 0) if maximize else (r["metric"] or 0),
            r["run"],
        )
    )
    print(table(rows, keys, metric))
    png = Path(args.png) if args.png else (folder or Path(".")) / "compare.png"
    plots.comparison(
        rows, keys, metric, png, title=f"{folder.name if folder else 'runs'}: {metric}"
    )
    print(png)
    missing = [r["run"] for r in rows if r["status"] != "done"]
    if missing:
        print(f"mnist-dist compare: warning: not finished: {', '.join(missing)}", file=sys.stderr)
    return 0


def table(rows: list[dict], keys: list[str], metric: str) -> str:
    fmt = lambda v, d=4: "-" if v is None else f"{v:.{d}f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = ["rank", "run", *keys, f"best {metric}", "test_accuracy", "epoch", "train_s", "status"]
    body = [
        [
            str(i + 1),
            r["run"],
            *[fmt(r["values"][k], 6) for k in keys],
            fmt(r["metric"]),
            fmt(r["test_accuracy"]),
            fmt(r["epoch"], 2),
            fmt(r["train_seconds"], 1),
            r["status"],
        ]
        for i, r in enumerate(rows)
    ]
    widths = [max(len(line[c]) for line in [head, *body]) for c in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body]
    )
