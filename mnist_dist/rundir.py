"""The run folder: the names of the files a run leaves, and how they are read and written.

RUN_DIR/config.yaml      the merged config            RUN_DIR/metrics.jsonl   one record per evaluation
RUN_DIR/summary.json     final numbers                RUN_DIR/model.safetensors + model.json   the model
RUN_DIR/checkpoints/     full training state          RUN_DIR/curves.png ... report.md          pictures
Every whole-file write goes to a temporary name first and is renamed: a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from mnist_dist import config, procs
from mnist_dist.errors import UserError

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MODEL_FILE, MODEL_META = "model.safetensors", "model.json"
LOCK, BEST = ".lock", "best"  # BEST: the best model by checkpoint.best_metric, a folder like the run's own model
SWEEP_FILE, SWEEP_POINT = "sweep.yaml", "sweep_point.json"  # a sweep folder's file; a point's overrides and status
CURVES, CONFUSION, SAMPLES, REPORT = "curves.png", "confusion_matrix.png", "samples.png", "report.md"
PICTURES = (CURVES, CONFUSION, SAMPLES)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, content: bytes) -> None:
    """Write to a temporary file of its own (two writers of one file never share it), then rename."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
        raise


def check_usable(run_dir: Path) -> None:
    """One clear line, before any data is read, when run_dir cannot hold a run: a file, or a place nothing can be
    written (read-only mount, /proc). Tries a temporary folder in the nearest existing folder and removes it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir={run_dir} is a file, not a folder")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run.dir={run_dir}: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mnist-dist-probe-", dir=existing))
    except OSError as e:
        raise UserError(f"run.dir={run_dir}: cannot create anything in {existing} ({e.strerror})") from None


def set_aside(run_dir: Path) -> Path | None:
    """Move what an earlier run left in run_dir (checkpoints, models, metrics, summary, pictures) into
    run_dir/previous-<time>/, so that a fresh start in an old folder neither mixes nor loses anything."""
    names = ["checkpoints", BEST, CONFIG, METRICS, SUMMARY, MODEL_FILE, MODEL_META, REPORT, *PICTURES]
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
        raise UserError(f"{folder}: no best model (the run had no validation split, checkpoint.best_metric=none, "
                        f"or it predates best-model keeping)")
    return folder


def load_run_config(model_path: str | Path, overrides: list[str]) -> config.Config:
    """The run's own data and train config (so the data are what it was trained on), with the user's overrides on
    top; run.dir is the run folder and progress bars are off."""
    run_dir = of_model(model_path)
    saved = run_dir / CONFIG
    base = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    base = {k: v for k, v in base.items() if k in ("data", "train")}
    for text in overrides:
        base = config.merge(base, config.parse_override(text))
    base.setdefault("run", {})["dir"] = str(run_dir)
    base.setdefault("train", {})["progress"] = False
    return config.from_dict(config.Config, base)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) pairs. A last line that is not JSON was cut off by a kill during the append: it is dropped
    with a warning (it never had a checkpoint behind it). A broken line before the last is refused."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise UserError(f"{path}: line {i + 1} is not JSON ({e.msg}); the file was edited or damaged") from None
            print(f"mnist-dist: warning: {path}: dropped a half-written last line (a run killed while appending)",
                  file=sys.stderr)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [record for _, record in _records(path)] if path.is_file() else []


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, max_global_step: int) -> None:
    """Keep only records with global_step <= max_global_step (a resume drops what its checkpoint does not cover)."""
    if not path.exists():
        return
    keep = [line for line, record in _records(path) if record.get("global_step", 0) <= max_global_step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------- the folder lock


def _slurm_job() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class RunLock:
    """RUN_DIR/.lock names the one process that may write the folder: pid, host, SLURM job, start time.

    Created with O_CREAT|O_EXCL, which is atomic on local filesystems and on NFS (v3 and later), so it works on
    the shared filesystem of a cluster; a thread refreshes its mtime every HEARTBEAT_S seconds. A lock is stale,
    and taken over, when its holder is a process of this host that no longer exists, when it belongs to this
    same SLURM job (a requeued job resuming), or when nobody has refreshed it for STALE_S seconds (a node that
    died). Released (deleted) when the run ends, however it ends; SIGKILL leaves it behind as a stale lock.
    """

    HEARTBEAT_S, STALE_S = 10.0, 120.0

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="mnist-dist-run-lock")

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        lock = cls(Path(run_dir) / LOCK)
        pid, pid_start = procs.me()
        me = {"pid": pid, "pid_start": pid_start, "host": socket.gethostname(),
              "slurm_job": _slurm_job(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for attempt in range(2):
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock._holder()
                why_stale = lock._stale(holder)
                if why_stale is None or attempt:
                    raise UserError(f"run.dir={run_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                                    f"(since {holder.get('since')}" + (f", SLURM job {holder['slurm_job']}"
                                                                        if holder.get("slurm_job") else "")
                                    + f"): wait for it or use another run.dir; if that run is gone, delete "
                                      f"{lock.path}") from None
                lock._take_over(why_stale)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            lock._thread.start()
            return lock
        raise AssertionError("unreachable")

    def _take_over(self, why: str) -> None:
        """Remove a stale lock, one taker at a time: a second taker that finds the takeover file busy, or the lock
        already replaced by the first, gives up (the O_EXCL create that follows decides who holds the folder)."""
        guard = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if time.time() - guard.stat().st_mtime < self.STALE_S:
                return  # another run is taking it over right now
            guard.unlink(missing_ok=True)  # left by a taker that died: try again next round
            return
        try:
            os.close(fd)
            if self._stale(self._holder()) is not None:  # still the stale one, not a fresh lock of a faster taker
                print(f"mnist-dist: taking over {self.path}: {why}", flush=True)
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # being written this very moment, or damaged: judged by its age below

    def _stale(self, holder: dict) -> str | None:
        """Why the lock's holder is gone, or None while it may be alive."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "released meanwhile"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not procs.alive(holder["pid"], holder.get("pid_start")):
                return f"pid {holder['pid']} on this host has ended"
            return None
        if holder.get("slurm_job") and holder.get("slurm_job") == _slurm_job():
            return f"it belongs to this SLURM job ({holder['slurm_job']}), requeued"
        if age > self.STALE_S:
            return f"not refreshed for {age:.0f} s (its host {holder.get('host')} stopped)"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Delete the lock if it is still ours (a run that lost it, say to a takeover, leaves the new one alone)."""
        self._stop.set()
        if self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
