"""The run folder: the names of the files a run leaves, and how they are read and written.

RUN_DIR/config.yaml      the merged config            RUN_DIR/metrics.jsonl   one record per evaluation
RUN_DIR/summary.json     final numbers                RUN_DIR/model.safetensors + model.json   the model
RUN_DIR/checkpoints/     full training state          RUN_DIR/curves.png ... report.md          pictures
Every whole-file write goes through mnist_dist.atomic (a temporary name, then a rename): a reader never sees
half a file. RUN_DIR/.lock (LOCK), which says who writes the folder, is mnist_dist.lock's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mnist_dist import config
from mnist_dist.errors import UserError
from mnist_dist.run import atomic

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MODEL_FILE, MODEL_META = "model.safetensors", "model.json"
LOCK = ".lock"
BEST = "best"  # the best model by checkpoint.best_metric, a folder like the run's own model
# the run folder's W&B run id, chosen once (tracking.choose_run_id)
TRACKER_RUN_ID = ".tracker_run_id"
# a sweep folder's copy of its sweep file; a point's overrides and status
SWEEP_FILE, SWEEP_POINT = "sweep.yaml", "sweep_point.json"
CURVES, CONFUSION = "curves.png", "confusion_matrix.png"
SAMPLES, REPORT = "samples.png", "report.md"
PICTURES = (CURVES, CONFUSION, SAMPLES)
# hub.export's, beside a model
HUB_CARD, HUB_CONFIG, HUB_ONNX = "README.md", "config.json", "model.onnx"


def check_usable(run_dir: Path, name: str | None = None) -> None:
    """One clear line, before any data is read, when run_dir cannot hold a run: a file, or a place nothing can be
    written (read-only mount, /proc). Tries a temporary folder in the nearest existing folder and removes it.
    name: how the message names the folder (default `run.dir=RUN_DIR`)."""
    name = name or f"run.dir={run_dir}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{name} is a file, not a folder")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{name}: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mnist-dist-probe-", dir=existing))
    except OSError as e:
        raise UserError(f"{name}: cannot create anything in {existing} ({e.strerror})") from None


def set_aside(run_dir: Path) -> Path | None:
    """Move what an earlier run left in run_dir (checkpoints, models, metrics, summary, pictures) into
    run_dir/previous-<time>/, so that a fresh start in an old folder neither mixes nor loses anything."""
    names = [
        "checkpoints",
        BEST,
        CONFIG,
        METRICS,
        SUMMARY,
        MODEL_FILE,
        MODEL_META,
        REPORT,
        TRACKER_RUN_ID,
    ]
    names += [
        *PICTURES,
        HUB_CARD,
        HUB_CONFIG,
        HUB_ONNX,
    ]  # a card of the earlier run must not describe the new one
    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not any(p.name in ("checkpoints", BEST, METRICS, SUMMARY, MODEL_FILE) for p in present):
        return None
    kept = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    while kept.exists():
        kept = kept.with_name(kept.name + "x")
    kept.mkdir()
    for p in present:
        os.replace(p, kept / p.name)
    return kept


def of_model(model_path: str | Path) -> Path:
    """The run folder of a run folder, of its best/ folder, or of a model.safetensors inside either."""
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    return folder.parent if folder.name == BEST and (folder.parent / CONFIG).is_file() else folder


def pick_model(path: str | Path, best: bool) -> Path:
    """What eval/predict/export load: the path as given (by default a run's final model), or with best=True the
    best model by validation that the run kept in RUN_DIR/best/."""
    if not best:
        return Path(path)
    folder = of_model(path) / BEST
    if not (folder / MODEL_FILE).is_file():
        raise UserError(
            f"{folder}: no best model (the run had no validation split, checkpoint.best_metric=none, "
            f"or it predates best-model keeping)"
        )
    return folder


def load_run_config(model_path: str | Path, overrides: list[str]) -> config.Config:
    """The data and train config the model was trained with (so the data are what it was trained on): its run's
    config.yaml, a training checkpoint's state.json, or for a folder with neither (a Hub folder) its dataset's
    defaults; the user's overrides on top. run.dir is the run folder and progress bars are off."""
    run_dir = of_model(model_path)
    saved, state, info = run_dir / CONFIG, run_dir / "state.json", run_dir / MODEL_META
    if saved.is_file() or not state.is_file():
        tree = read_config(saved)
    else:  # checkpoints/step_N
        saved, tree = state, (read_json(state) or {}).get("config") or {}
    base = {k: v for k, v in (tree or {}).items() if k in ("data", "train")}
    try:  # the saved part alone first: a mistake in it names the file, not the user's overrides
        config.from_dict(config.Config, base)
    except UserError as e:
        raise RunFileError(f"{saved}: {e}") from None
    # a Hub folder: its dataset's defaults (an image folder's data.dir is the user's to give)
    if not tree:
        base = {"data": {"name": (read_json(info) or {}).get("dataset", "mnist")}}
    for text in overrides:
        base = config.merge(base, config.parse_override(text))
    base.setdefault("run", {})["dir"] = str(run_dir)
    base.setdefault("train", {})["progress"] = False
    return config.from_dict(config.Config, base)


# ----------------------------------------------------------------------------- reading a run's files
# One reader per kind of file. A file that is missing is None (or no records); one that is there but damaged
# (not UTF-8, not JSON/YAML, or not the mapping it must be) is a RunFileError naming it: every command that reads
# run folders (report, eval, compare, train on resume) says so in one line instead of a traceback.


class RunFileError(UserError):
    """A file of a run folder that is there but cannot be used."""


def _text(path: Path) -> str | None:
    if not path.exists():
        return None
    if not path.is_file():
        raise RunFileError(f"{path}: not a regular file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(
            f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})"
        ) from None


def _kind(value) -> str:
    return (
        "a list" if isinstance(value, list) else f"the {type(value).__name__} {str(value)[:40]!r}"
    )


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes, read in 1 MB chunks (checkpoint manifests, downloaded data)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def add_best_argument(parser) -> None:
    """--best for every command that reads a run's model (eval, predict, export)."""
    parser.add_argument(
        "--best",
        action="store_true",
        help="use the best model by validation (RUN_DIR/best/) instead of the final one (the default: "
        "the model summary.json's test numbers describe)",
    )


def read_config(path: Path) -> dict | None:
    """A run's config.yaml: a mapping (an empty file is an empty one)."""
    text = _text(path)
    if text is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RunFileError(
            f"{path}: not valid YAML ({getattr(e, 'problem', None) or 'unreadable'}{where}); the file "
            f"was edited or damaged"
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: holds {_kind(value)}, not a mapping of config sections")
    return value


def read_json(path: Path) -> dict | None:
    """summary.json, model.json, sweep_point.json: a JSON object."""
    text = _text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFileError(
            f"{path}: not valid JSON ({e}); the file was cut off, edited or damaged"
        ) from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: holds {_kind(value)}, not a JSON object")
    return value


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) pairs of metrics.jsonl; each record is an object with a number `epoch` and `global_step`.
    A last line that is not JSON was cut off by a kill during the append: it is dropped with a warning (it never
    had a checkpoint behind it). A broken line before the last, or a record of another shape, is refused."""
    lines = [line for line in (_text(path) or "").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise RunFileError(
                    f"{path}: line {i + 1} is not JSON ({e.msg}); the file was edited or damaged"
                ) from None
            print(
                f"mnist-dist: warning: {path}: dropped a half-written last line (a run killed while appending)",
                file=sys.stderr,
            )
            continue
        if not isinstance(record, dict):
            raise RunFileError(f"{path}: line {i + 1} holds {_kind(record)}, not a metrics record")
        problem = _record_problem(record)
        if problem:
            raise RunFileError(f"{path}: line {i + 1} {problem}; the file was edited or damaged")
        out.append((line, record))
    return out


def _record_problem(record: dict) -> str | None:
    """What is wrong with the shape of a metrics record, in the fields the commands compute with."""
    missing = [k for k in ("epoch", "global_step") if not _is_number(record.get(k))]
    if missing:
        return f"has no number {' or '.join(missing)}"
    confusion = record.get("test_confusion")
    if confusion is not None and not (
        isinstance(confusion, list)
        and len(confusion) >= 2
        and all(
            isinstance(row, list)
            and len(row) == len(confusion)
            and all(_is_number(v) and v == int(v) >= 0 for v in row)
            for row in confusion
        )
    ):
        return "has a test_confusion that is not a square table of counts (a row and a column per class)"
    per_class = record.get("test_per_class_accuracy")
    if per_class is not None and not (
        isinstance(per_class, list) and all(_is_number(v) for v in per_class)
    ):
        return "has a test_per_class_accuracy that is not a list of numbers"
    return None


def check_numbers(path: Path, record: dict, keys) -> None:
    """The fields of a file's record that must be numbers (or null) where present: one line naming the file."""
    for key in keys:
        if record.get(key) is not None and not _is_number(record[key]):
            raise RunFileError(f"{path}: {key} is {_kind(record[key])}, not a number")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_jsonl(path: Path) -> list[dict]:
    """metrics.jsonl's records (none when the file is missing)."""
    return [record for _, record in _records(path)]


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, max_global_step: int) -> None:
    """Keep only records with global_step <= max_global_step (a resume drops what its checkpoint does not cover)."""
    if not path.exists():
        return
    keep = [
        line for line, record in _records(path) if record.get("global_step", 0) <= max_global_step
    ]
    atomic.write_text(path, "".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------- the SLURM job


def slurm_job_id() -> str | None:
    """This SLURM job's own id: an array task's is ARRAYJOB_TASK (what scontrol requeue takes), else SLURM_JOB_ID."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")
