"""`mnist-dist sweep FILE`: a sweep file's points run one after another, or one of them (--index, a SLURM array
task), each in its own run folder under one sweep folder. No W&B server is needed; the same file also works with
`wandb sweep` + `wandb agent`.

Each point is `mnist-dist train` (under --launcher, e.g. `accelerate launch`) with the file's base arguments, the
point's `key=value` overrides, run.dir=SWEEP_DIR/point_NNN and tracking.group=<sweep folder name>, so the W&B
runs of one sweep share a group. A failed point does not stop the others (the exit status is 1 at the end); a
preempted or interrupted one stops the sweep with its status, and running the same command again skips the
finished points and resumes the interrupted one from its checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from mnist_dist import rundir, sweeps
from mnist_dist.errors import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, UserError

POINT_DIR = "point_{:03d}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="SWEEP_YAML", help="a sweep file, e.g. configs/sweeps/debug_grid.yaml")
    parser.add_argument("--dir", help="the sweep folder (default: runs/sweeps/<file name>)")
    parser.add_argument("--count", type=int, default=4, help="random search: how many points (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random search: the seed that draws the points")
    parser.add_argument("--index", type=int, help="run only this point (0-based), e.g. $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--list", action="store_true", help="print the points and their overrides, then exit")
    parser.add_argument("--launcher", default="",
                        help='run each point under this launcher, e.g. "accelerate launch --config_file '
                             'configs/accelerate/cpu_ddp2.yaml" (default: one process)')


def run(args) -> int:
    sweep = sweeps.load(args.file)
    if args.count < 1:
        raise UserError("--count must be at least 1")
    points = sweep.points(args.count, args.seed)
    if args.list:
        for i, point in enumerate(points):
            print(f"{i}: {' '.join(sweeps.overrides(point))}")
        return 0
    if args.index is not None and not 0 <= args.index < len(points):
        raise UserError(f"--index {args.index}: {args.file} has points 0-{len(points) - 1}")
    folder = Path(args.dir or Path("runs") / "sweeps" / sweep.name)
    rundir.check_usable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(args.file).read_text(encoding="utf-8")
    saved = folder / rundir.SWEEP_FILE
    if saved.is_file() and saved.read_text(encoding="utf-8") != text:
        raise UserError(f"{folder} holds another sweep ({saved} differs from {args.file}); use another --dir")
    if not saved.is_file():
        rundir.atomic_write_text(saved, text)  # array tasks starting together write the same text
    launcher = shlex.split(args.launcher) or [sys.executable]
    failed = []
    for i in [args.index] if args.index is not None else range(len(points)):
        run_dir = folder / POINT_DIR.format(i)
        if (run_dir / rundir.SUMMARY).is_file():
            print(f"sweep {sweep.name}: point {i} finished earlier ({run_dir})", flush=True)
            continue
        words = sweeps.overrides(points[i])
        print(f"sweep {sweep.name}: point {i + 1}/{len(points)} ({' '.join(words)}) -> {run_dir}", flush=True)
        run_dir.mkdir(exist_ok=True)
        record = {"index": i, "overrides": words, "exit_code": None}
        rundir.atomic_write_text(run_dir / rundir.SWEEP_POINT, json.dumps(record))
        code = run_point([*launcher, "-m", "mnist_dist.cli", "train", *sweep.base_args,
                          f"tracking.group={folder.name}", *words, f"run.dir={run_dir}"], launched=bool(args.launcher))
        rundir.atomic_write_text(run_dir / rundir.SWEEP_POINT, json.dumps({**record, "exit_code": code}))
        if code in (PREEMPTED_EXIT_CODE, INTERRUPTED_EXIT_CODE):
            print(f"sweep {sweep.name}: point {i} stopped with its checkpoint (exit {code}); run the same command "
                  f"again to resume it", flush=True)
            return code
        if code != 0:
            failed.append(i)
            print(f"sweep {sweep.name}: point {i} failed (exit {code}); going on", file=sys.stderr, flush=True)
    if failed:
        print(f"sweep {sweep.name}: {len(failed)} point(s) failed: {failed}; compare: mnist-dist compare {folder}",
              file=sys.stderr)
        return 1
    print(f"sweep {sweep.name}: done; compare: mnist-dist compare {folder}")
    return 0


def run_point(cmd: list[str], launched: bool) -> int:
    """Runs one point and waits for it. A preemption signal (USR1, TERM) that reaches the sweep goes on to the
    training processes, which checkpoint: the child itself, or under a launcher its training children (torchrun's
    agent would die of USR1 and leaves its workers in sessions of their own). Ctrl-C reaches the training through
    the terminal's process group already; the sweep only keeps waiting for the checkpoint."""
    proc = subprocess.Popen(cmd)

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


def _training_children(launcher_pid: int) -> list[int]:
    """The processes a launcher started that run mnist_dist (its workers), from /proc."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher_pid and b"mnist_dist" in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
