"""The run folder's lock: RUN_DIR/.lock names the one process that may write the folder, and a lock whose holder
is gone (a killed run, a requeued SLURM job, a restarted elastic job, a dead node) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import stat as statmod
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil

from mnist_dist.errors import UserError
from mnist_dist.run.rundir import LOCK, slurm_job_id


def started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if there is no such process. A pid is reused
    once its process is gone: (pid, start) names one process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, start: float | None) -> bool:
    """Whether the process that (pid, start) named still runs: not ended, not only its zombie (a container's
    init may never reap it), and not another process that took the pid since (start None: any)."""
    try:
        process = psutil.Process(pid)
        zombie = process.status() == psutil.STATUS_ZOMBIE
        return not zombie and (start is None or process.create_time() == start)
    except psutil.AccessDenied:  # another user's, so it exists
        return True
    except psutil.Error:  # no such process
        return False


def _elastic_job() -> tuple[str, int] | None:
    """(job, attempt) of torchrun's elastic agent this process is a worker of: the rendezvous id
    (TORCHELASTIC_RUN_ID; for the default id "none", the agent itself, as host:pid:start) and its restart count."""
    run_id, attempt = (
        os.environ.get("TORCHELASTIC_RUN_ID"),
        os.environ.get("TORCHELASTIC_RESTART_COUNT", ""),
    )
    if not run_id or not attempt.isdigit():
        return None
    if run_id == "none":
        run_id = f"none@{socket.gethostname()}:{os.getppid()}:{started(os.getppid())}"
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
        pid, pid_start = os.getpid(), started(os.getpid())
        me = {
            "pid": pid,
            "pid_start": pid_start,
            "host": socket.gethostname(),
            "slurm_job": slurm_job_id(),
        }
        me["since"] = time.strftime("%Y-%m-%d %H:%M:%S")
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
            # still the stale one, not a fresh lock of a faster taker
            if self._stale(self._inspect()) is not None:
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
        if (
            isinstance(holder, dict)
            and isinstance(holder.get("pid"), int)
            and isinstance(holder.get("host"), str)
        ):
            return _LockFile(holder, "", age_s)
        text = raw.decode("utf-8", "replace")
        return _LockFile(
            None, f"not a lock record: {text[:60]!r}" + ("..." if len(text) > 60 else ""), age_s
        )

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
            if not alive(holder["pid"], holder.get("pid_start")):
                return f"pid {holder['pid']} on this host has ended"
            return None
        if holder.get("slurm_job") and holder.get("slurm_job") == slurm_job_id():
            return f"it belongs to this SLURM job ({holder['slurm_job']}), requeued"
        job, attempt = _elastic_job() or (None, 0)
        earlier = holder.get("elastic_attempt")
        if (
            job
            and holder.get("elastic_job") == job
            and isinstance(earlier, int)
            and earlier < attempt
        ):
            return f"it belongs to attempt {earlier} of this elastic job ({job}), restarted"
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
        if found is not None and (found.holder or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


class _LockFile(NamedTuple):
    holder: dict | None  # the lock record; None when the file is damaged
    damage: str  # what is wrong with a damaged one, e.g. "a directory, not a file", "empty"
    age_s: float  # since its last change (the holder's heartbeat)


FILE_TYPES = {"DIR": "a directory", "FIFO": "a FIFO", "LNK": "a symlink", "SOCK": "a socket"}
FILE_TYPES |= {"CHR": "a character device", "BLK": "a block device"}


def _file_type(mode: int) -> str:
    kinds = (name for kind, name in FILE_TYPES.items() if getattr(statmod, f"S_IS{kind}")(mode))
    return next(kinds, "not a regular file")


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
