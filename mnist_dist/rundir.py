"""The run folder: the names of the files a run leaves, and how they are read and written.

RUN_DIR/config.yaml      the merged config            RUN_DIR/metrics.jsonl   one record per evaluation
RUN_DIR/summary.json     final numbers                RUN_DIR/model.safetensors + model.json   the model
RUN_DIR/checkpoints/     full training state          RUN_DIR/curves.png ... report.md          pictures
Every whole-file write goes through mnist_dist.atomic (a temporary name, then a rename): a reader never sees
half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat as statmod
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import yaml

from mnist_dist import atomic, config, procs
from mnist_dist.errors import UserError

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MODEL_FILE, MODEL_META = "model.safetensors", "model.json"
LOCK, BEST = ".lock", "best"  # BEST: the best model by checkpoint.best_metric, a folder like the run's own model
TRACKER_RUN_ID = ".tracker_run_id"  # the run folder's W&B run id, chosen once (tracking.choose_run_id)
SWEEP_FILE, SWEEP_POINT = "sweep.yaml", "sweep_point.json"  # a sweep folder's file; a point's overrides and status
CURVES, CONFUSION, SAMPLES, REPORT = "curves.png", "confusion_matrix.png", "samples.png", "report.md"
PICTURES = (CURVES, CONFUSION, SAMPLES)
HUB_CARD, HUB_CONFIG, HUB_ONNX = "README.md", "config.json", "model.onnx"  # hub.export's, beside a model


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
    """The run's own data and train config (so the data are what it was trained on), with the user's overrides on
    top; run.dir is the run folder and progress bars are off."""
    run_dir = of_model(model_path)
    saved = run_dir / CONFIG
    base = {k: v for k, v in (read_config(saved) or {}).items() if k in ("data", "train")}
    try:  # the saved part alone first: a mistake in it names the file, not the user's overrides
        config.from_dict(config.Config, base)
    except UserError as e:
        raise RunFileError(f"{saved}: {e}") from None
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
        raise RunFileError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None


def _kind(value) -> str:
    return "a list" if isinstance(value, list) else f"the {type(value).__name__} {str(value)[:40]!r}"


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
        raise RunFileError(f"{path}: not valid JSON ({e}); the file was cut off, edited or damaged") from None
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
        and len(confusion) == 10
        and all(
            isinstance(row, list) and len(row) == 10 and all(_is_number(v) and v == int(v) >= 0 for v in row)
            for row in confusion
        )
    ):
        return "has a test_confusion that is not 10 rows of 10 counts"
    per_class = record.get("test_per_class_accuracy")
    if per_class is not None and not (isinstance(per_class, list) and all(_is_number(v) for v in per_class)):
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
    keep = [line for line, record in _records(path) if record.get("global_step", 0) <= max_global_step]
    atomic.write_text(path, "".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------- the folder lock


def slurm_job_id() -> str | None:
    """This SLURM job's own id: an array task's is ARRAYJOB_TASK (what scontrol requeue takes), else SLURM_JOB_ID."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _elastic_job() -> tuple[str, int] | None:
    """(job, attempt) of torchrun's elastic agent this process is a worker of: the rendezvous id
    (TORCHELASTIC_RUN_ID; for the default id "none", the agent itself, as host:pid:start) and its restart count."""
    run_id, attempt = os.environ.get("TORCHELASTIC_RUN_ID"), os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    if not run_id or not attempt.isdigit():
        return None
    if run_id == "none":
        run_id = f"none@{socket.gethostname()}:{os.getppid()}:{procs.start_time(os.getppid())}"
    return run_id, int(attempt)


class RunLock:
    """RUN_DIR/.lock names the one process that may write the folder: pid, host, SLURM job, start time.

    Created with O_CREAT|O_EXCL, which is atomic on local filesystems and on NFS (v3 and later), so it works on
    the shared filesystem of a cluster; a thread refreshes its mtime every HEARTBEAT_S seconds. A lock is stale,
    and taken over, when its holder is a process of this host that no longer exists, when it belongs to this
    same SLURM job (a requeued job resuming) or to an earlier attempt of this torchrun elastic job (its agent
    restarted the workers), or when nobody has refreshed it for STALE_S seconds (a node that
    died). Released (deleted) when the run ends, however it ends; SIGKILL leaves it behind as a stale lock.

    A damaged or foreign .lock (not a regular file, empty, or not a lock record) names no holder, so it is
    reported as damaged, with its content and age, never as a live run. Its age is the only sign of life left: a
    run refreshes its lock every HEARTBEAT_S, and a run creating one writes it microseconds after the create (an
    empty young lock is that moment). So it is refused while younger than DAMAGED_S and taken over after.
    Reading it never blocks (a FIFO is never opened) and a takeover removes any kind of file.
    """

    HEARTBEAT_S, STALE_S = 10.0, 120.0
    DAMAGED_S = 3 * HEARTBEAT_S  # three missed refreshes: no run holds a damaged lock this old

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="mnist-dist-run-lock")

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        lock = cls(Path(run_dir) / LOCK)
        pid, pid_start = procs.me()
        me = {
            "pid": pid,
            "pid_start": pid_start,
            "host": socket.gethostname(),
            "slurm_job": slurm_job_id(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if (elastic := _elastic_job()) is not None:
            me["elastic_job"], me["elastic_attempt"] = elastic
        for attempt in range(2):
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = lock._inspect()
                why_stale = lock._stale(found)
                if why_stale is None or attempt:
                    raise UserError(lock._refusal(run_dir, found)) from None
                lock._take_over(why_stale)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            lock._thread.start()
            return lock
        raise AssertionError("unreachable")

    def _refusal(self, run_dir: Path, found: _LockFile | None) -> str:
        if found is None:
            return f"run.dir={run_dir}: another run took {self.path} meanwhile; wait for it or use another run.dir"
        if found.holder is None:
            return (
                f"run.dir={run_dir}: its lock {self.path} is damaged ({found.damage}; last changed "
                f"{found.age_s:.0f} s ago). A run starting or running may still write it, so it is taken over "
                f"only when {self.DAMAGED_S:.0f} s old; if no run uses the folder, delete it"
            )
        holder = found.holder
        return (
            f"run.dir={run_dir} is in use by pid {holder['pid']} on {holder['host']} (since "
            f"{holder.get('since')}"
            + (f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else "")
            + f"): wait for it or use another run.dir; if that run is gone, delete {self.path}"
        )

    def _take_over(self, why: str) -> None:
        """Remove a stale lock, one taker at a time: a second taker that finds the takeover file busy, or the lock
        already replaced by the first, gives up (the O_EXCL create that follows decides who holds the folder)."""
        guard = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.lstat().st_mtime < self.STALE_S:
                    return  # another run is taking it over right now
            except FileNotFoundError:
                return
            _remove(guard)  # left by a taker that died: try again next round
            return
        try:
            os.close(fd)
            if self._stale(self._inspect()) is not None:  # still the stale one, not a fresh lock of a faster taker
                print(f"mnist-dist: taking over {self.path}: {why}", flush=True)
                _remove(self.path)
        finally:
            _remove(guard)

    def _inspect(self) -> _LockFile | None:
        """What the lock file holds now; None when there is none. Never opens anything but a regular file, and
        that without blocking (O_NONBLOCK: a FIFO swapped in after the lstat returns at once)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        age_s = time.time() - st.st_mtime
        if not statmod.S_ISREG(st.st_mode):
            return _LockFile(None, f"{_file_type(st.st_mode)}, not a file", age_s)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            return _LockFile(None, f"cannot be read: {e.strerror}", age_s)
        try:
            raw = os.read(fd, 4096) if statmod.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError as e:
            return _LockFile(None, f"cannot be read: {e.strerror}", age_s)
        finally:
            os.close(fd)
        if raw is None:
            return _LockFile(None, "not a file", age_s)
        if not raw.strip():
            return _LockFile(None, "empty", age_s)
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        pid, host = (holder.get("pid"), holder.get("host")) if isinstance(holder, dict) else (None, None)
        if not (isinstance(pid, int) and isinstance(host, str)):
            text = raw.decode("utf-8", "replace")
            return _LockFile(None, f"not a lock record: {text[:60]!r}" + ("..." if len(text) > 60 else ""), age_s)
        return _LockFile(holder, "", age_s)

    def _stale(self, found: _LockFile | None) -> str | None:
        """Why the lock's holder is gone, or None while it may be alive."""
        if found is None:
            return "released meanwhile"
        holder, age = found.holder, found.age_s
        if holder is None:
            if age > self.DAMAGED_S:
                return f"damaged ({found.damage}), not changed for {age:.0f} s"
            return None
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not procs.alive(holder["pid"], holder.get("pid_start")):
                return f"pid {holder['pid']} on this host has ended"
            return None
        if holder.get("slurm_job") and holder.get("slurm_job") == slurm_job_id():
            return f"it belongs to this SLURM job ({holder['slurm_job']}), requeued"
        elastic = _elastic_job()
        if (
            elastic
            and holder.get("elastic_job") == elastic[0]
            and isinstance(holder.get("elastic_attempt"), int)
            and holder["elastic_attempt"] < elastic[1]
        ):
            return f"it belongs to attempt {holder['elastic_attempt']} of this elastic job ({elastic[0]}), restarted"
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
        found = self._inspect()
        if found is not None and found.holder is not None and found.holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


class _LockFile(NamedTuple):
    holder: dict | None  # the lock record; None when the file is damaged
    damage: str  # what is wrong with a damaged one, e.g. "a directory, not a file", "empty"
    age_s: float  # since its last change (the holder's heartbeat)


def _file_type(mode: int) -> str:
    for test, name in (
        (statmod.S_ISDIR, "a directory"),
        (statmod.S_ISFIFO, "a FIFO"),
        (statmod.S_ISLNK, "a symlink"),
        (statmod.S_ISSOCK, "a socket"),
        (statmod.S_ISCHR, "a character device"),
        (statmod.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _remove(path: Path) -> None:
    """Remove a file of any kind. A directory is removed when empty; one with something in it is not ours to
    delete, so it is moved aside (PATH.damaged-TIME) and the message says where."""
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
            return
        try:
            path.rmdir()
        except OSError:
            aside = path.with_name(path.name + time.strftime(".damaged-%Y%m%d-%H%M%S"))
            os.replace(path, aside)
            print(f"mnist-dist: {path} held files: moved to {aside}", flush=True)
    except FileNotFoundError:
        pass
