"""`mnist-dist sweep FILE`: a sweep file's points run one after another, or one of them (--index, a SLURM array
task), each in its own run folder under one sweep folder. No W&B server is needed; the same file also works with
`wandb sweep` + `wandb agent`.

Each point is `mnist-dist train` (under --launcher, e.g. `accelerate launch`) with the file's base arguments, the
point's `key=value` overrides, run.dir=SWEEP_DIR/point_NNN and tracking.group=<sweep folder name>, so the W&B
runs of one sweep share a group. A failed point does not stop the others (the exit status is 1 at the end); a
preempted or interrupted one stops the sweep with its status, and running the same command again skips the
finished points and resumes the interrupted one from its checkpoints.

A point's training dies with its sweep, even under `kill -9` of the sweep alone: a watchdog process (in a session
of its own) holds one end of a pipe whose other end only the sweep holds, and when the sweep is gone it freezes
and kills the point's whole process tree (a launcher's workers too). Each point's sweep_point.json says how it
ended (`status`: running, finished, failed, preempted, interrupted, killed); a point still marked running whose
process is gone was killed with its sweep: the next run of the sweep records that and runs it again (it resumes
from its checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from mnist_dist.config import sweeps
from mnist_dist.errors import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, UserError
from mnist_dist.run import atomic, lock, rundir

POINT_DIR = "point_{:03d}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="SWEEP_YAML", help="a sweep file, e.g. configs/sweeps/debug_grid.yaml"
    )
    parser.add_argument("--dir", help="the sweep folder (default: runs/sweeps/<file name>)")
    parser.add_argument(
        "--count",
        type=int,
        help="how many points: a random search draws this many (default 4), a grid runs its first COUNT (default all)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random search: the seed that draws the points"
    )
    parser.add_argument(
        "--index", type=int, help="run only this point (0-based), e.g. $SLURM_ARRAY_TASK_ID"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the points and their overrides, then exit"
    )
    parser.add_argument(
        "--launcher",
        default="",
        help='run each point under this launcher, e.g. "accelerate launch --config_file '
        'configs/accelerate/cpu_ddp2.yaml" (default: one process)',
    )


def run(args) -> int:
    sweep = sweeps.load(args.file)
    if args.count is not None and args.count < 1:
        raise UserError("--count must be at least 1")
    points = sweep.points(args.count, args.seed)
    if args.list:
        for i, point in enumerate(points):
            print(f"{i}: {' '.join(sweeps.overrides(point))}")
        return 0
    if args.index is not None and not 0 <= args.index < len(points):
        raise UserError(f"--index {args.index}: {args.file} has points 0-{len(points) - 1}")
    sweep_dir = Path(args.dir or Path("runs") / "sweeps" / sweep.name)
    open_sweep_folder(sweep_dir, Path(args.file))
    launcher = shlex.split(args.launcher)  # none: the point is `python -m mnist_dist.cli train ...`
    failed = []
    for i in [args.index] if args.index is not None else range(len(points)):
        code = run_one(sweep, points, i, sweep_dir, launcher)
        if code in (PREEMPTED_EXIT_CODE, INTERRUPTED_EXIT_CODE):
            print(
                f"sweep {sweep.name}: point {i} stopped with its checkpoint (exit {code}); run the same "
                f"command again to resume it",
                flush=True,
            )
            return code
        if code:
            failed.append(i)
            print(
                f"sweep {sweep.name}: point {i} failed (exit {code}); going on",
                file=sys.stderr,
                flush=True,
            )
    if failed:
        print(
            f"sweep {sweep.name}: {len(failed)} point(s) failed: {failed}; compare: mnist-dist compare "
            f"{sweep_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"sweep {sweep.name}: done; compare: mnist-dist compare {sweep_dir}")
    return 0


def open_sweep_folder(sweep_dir: Path, file: Path) -> None:
    """The sweep folder, holding a copy of its sweep file: another sweep's folder is refused."""
    rundir.check_usable(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text, saved = file.read_text(encoding="utf-8"), sweep_dir / rundir.SWEEP_FILE
    if saved.is_file() and saved.read_text(encoding="utf-8") != text:
        raise UserError(
            f"{sweep_dir} holds another sweep ({saved} differs from {file}); use another --dir"
        )
    if not saved.is_file():
        atomic.write_text(saved, text)  # array tasks starting together write the same text


def run_one(
    sweep: sweeps.Sweep, points: list[dict], i: int, sweep_dir: Path, launcher: list[str]
) -> int:
    """Point i, in SWEEP_DIR/point_NNN: its exit code, 0 when it finished earlier or runs in another sweep."""
    run_dir, status_file = (
        sweep_dir / POINT_DIR.format(i),
        sweep_dir / POINT_DIR.format(i) / rundir.SWEEP_POINT,
    )
    if (run_dir / rundir.SUMMARY).is_file():
        print(f"sweep {sweep.name}: point {i} finished earlier ({run_dir})", flush=True)
        return 0
    previous = rundir.read_json(status_file) or {}
    if previous.get("status") == "running":
        # Another host's pid cannot be looked up: that sweep (a requeued array task) is taken as gone.
        if previous.get("host") == socket.gethostname() and lock.alive(
            previous["pid"], previous.get("started")
        ):
            print(
                f"sweep {sweep.name}: point {i} is running in process {previous['pid']} (another sweep); skipped",
                flush=True,
            )
            return 0
        atomic.write_text(status_file, json.dumps({**previous, "status": "killed"}))
        print(
            f"sweep {sweep.name}: point {i} was killed with its sweep (process {previous.get('pid')} is gone); "
            f"running it again",
            flush=True,
        )
    words = sweeps.overrides(points[i])
    print(
        f"sweep {sweep.name}: point {i + 1}/{len(points)} ({' '.join(words)}) -> {run_dir}",
        flush=True,
    )
    run_dir.mkdir(exist_ok=True)
    record = {"index": i, "overrides": words, "exit_code": None, "status": "starting"}
    atomic.write_text(status_file, json.dumps(record))

    def started(pid: int) -> None:
        record.update(
            status="running", host=socket.gethostname(), pid=pid, started=lock.started(pid)
        )
        atomic.write_text(status_file, json.dumps(record))

    train = [*(launcher or [sys.executable]), "-m", "mnist_dist.cli", "train", *sweep.base_args]
    train += [f"tracking.group={sweep_dir.name}", *words, f"run.dir={run_dir}"]
    code = run_point(train, launched=bool(launcher), on_start=started)
    atomic.write_text(
        status_file, json.dumps({**record, "exit_code": code, "status": ending(code)})
    )
    return code


def ending(code: int) -> str:
    """How a point ended, from its exit status (negative: killed by that signal)."""
    return {
        0: "finished",
        PREEMPTED_EXIT_CODE: "preempted",
        INTERRUPTED_EXIT_CODE: "interrupted",
    }.get(code, "killed" if code < 0 else "failed")


def run_point(cmd: list[str], launched: bool, on_start=lambda pid: None) -> int:
    """Runs one point and waits for it, under a watchdog that kills its process tree if the sweep dies first. A
    preemption signal (USR1, TERM) that reaches the sweep goes on to the training processes, which checkpoint:
    the child itself, or under a launcher its training children (torchrun's agent would die of USR1 and leaves
    its workers in sessions of their own). Ctrl-C reaches the training through the terminal's process group
    already; the sweep only keeps waiting for the checkpoint."""
    read_end, write_end = os.pipe()  # not inheritable: only this process holds the write end
    # A session of its own: Ctrl-C and a kill of the sweep's process group do not reach the watchdog.
    watchdog = subprocess.Popen(
        [sys.executable, "-c", "from mnist_dist.commands import sweep; sweep.watch()"],
        stdin=read_end,
        start_new_session=True,
    )
    os.close(read_end)
    try:
        proc = subprocess.Popen(cmd)
    except BaseException:
        os.close(write_end)
        raise
    _tell(write_end, f"{proc.pid} {lock.started(proc.pid)}\n")
    on_start(proc.pid)

    def forward(signum, frame):
        for pid in _training_children(proc.pid) if launched else [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _tell(write_end, "done\n")  # the point ended: nothing for the watchdog to do
        os.close(write_end)
        watchdog.wait()


def _tell(fd: int, text: str) -> None:
    """A line to the watchdog; one that died early (it cannot guard this point) must not end the sweep."""
    try:
        os.write(fd, text.encode())
    except BrokenPipeError:
        print(
            "mnist-dist sweep: warning: the watchdog is gone; this point's training would outlive a killed sweep",
            file=sys.stderr,
            flush=True,
        )


def watch() -> None:
    """The watchdog (its own process): reads the point's pid and start time, then waits for the sweep to write
    `done` or to die (end of file). If the sweep died while the point runs, the point's tree is frozen (SIGSTOP,
    so nothing forks any more) and killed: parent first would leave its children to init, out of reach."""
    lines = sys.stdin.buffer.read().decode().split("\n")
    if "done" in lines or not lines[0]:
        return
    pid, started = int(lines[0].split()[0]), lines[0].split()[1]
    if not lock.alive(pid, None if started == "None" else float(started)):
        return
    frozen: list[int] = []
    while new := [p for p in [pid, *descendants(pid)] if p not in frozen]:
        for p in new:
            _signal(p, signal.SIGSTOP)
        frozen += new
    for p in frozen:
        _signal(p, signal.SIGKILL)
    print(
        f"mnist-dist sweep: the sweep died; killed its point's processes {frozen}",
        file=sys.stderr,
        flush=True,
    )


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def descendants(pid: int, recursive: bool = True) -> list[int]:
    """The processes below pid (children, and with recursive their children, ...); none once it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=recursive)]
    except psutil.Error:
        return []


def _training_children(launcher_pid: int) -> list[int]:
    """The processes a launcher started that run mnist_dist (its workers)."""
    found = []
    for child in descendants(launcher_pid, recursive=False):
        try:
            if any("mnist_dist" in word for word in psutil.Process(child).cmdline()):
                found.append(child)
        except psutil.Error:  # gone meanwhile
            continue
    return found
