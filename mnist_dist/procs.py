"""Process identity on this host: is a pid still the process it was? (A pid is reused once its process is gone;
the kernel's start time of the process tells the two apart.) Used by the run-folder lock and the shared-memory
all-reduce, to tell a dead holder or peer from a slow one."""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if there is no such process, or only its
    zombie (dead, waiting to be reaped: a container's init may never do it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def me() -> tuple[int, str | None]:
    return os.getpid(), start_time(os.getpid())


def alive(pid: int, started: str | None) -> bool:
    if not Path("/proc/self/stat").exists():  # macOS: no /proc, so no start time; the pid alone must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    now = start_time(pid)
    return now is not None and now == started
