"""Processes on this host, from /proc (the one place that parses it): is a pid still the process it was? (A pid is
reused once its process is gone; the kernel's start time of the process tells the two apart.) Used by the
run-folder lock and the shared-memory all-reduce, to tell a dead holder or peer from a slow one; by the sweep, to
find a point's process tree; and for the seconds since this process's exec."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses): [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if there is no such process, or only its
    zombie (dead, waiting to be reaped: a container's init may never do it)."""
    try:
        fields = _stat(pid)
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for p in Path("/proc").iterdir():
        try:
            out[int(p.name)] = int(_stat(p.name)[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, their children, ...), nearest first."""
    by_parent, found, frontier = parents(), [], [pid]
    while frontier:
        frontier = [child for child, parent in by_parent.items() if parent in frontier]
        found += frontier
    return found


def since_exec(unix_time: float | None) -> float | None:
    """Seconds from this process's exec to `unix_time` (Linux: from /proc, 10 ms resolution); None elsewhere."""
    try:
        started = int(_stat("self")[19]) / os.sysconf("SC_CLK_TCK")  # since boot
        age = float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None
    return None if unix_time is None else unix_time - (time.time() - age)


def me() -> tuple[int, str | None]:
    return os.getpid(), start_time(os.getpid())


def alive(pid: int, started: str | None) -> bool:
    if not Path(
        "/proc/self/stat"
    ).exists():  # macOS: no /proc, so no start time; the pid alone must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    now = start_time(pid)
    return now is not None and now == started
