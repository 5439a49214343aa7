"""How a run stops before its end and comes back: preemption signals and Ctrl-C, the ranks' agreement on them,
the Preempted ending, and what follows it (a SLURM requeue, or ending torchrun's elastic agent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import torch

from mnist_dist.errors import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from mnist_dist.run import rundir

if TYPE_CHECKING:  # the type only: accelerate is imported where it is built
    from accelerate import Accelerator


LAUNCHER_GONE = "its launcher's end"  # what stops the workers of a launcher that was killed


class Preempted(Exception):
    """Every rank raises it at the same step, once the checkpoint is saved: the run is to be resumed. Ctrl-C is
    the user's stop (exit 130, no requeue); the end of the workers' launcher stops them too (exit 75, nothing
    to requeue or restart); any other signal is the scheduler's (exit 75, requeued)."""

    def __init__(self, signal_name: str | None, global_step: int):
        self.interrupted = signal_name == "SIGINT"
        # The scheduler's signal: requeue, and end torchrun's agent.
        self.by_scheduler = signal_name not in ("SIGINT", LAUNCHER_GONE)
        self.exit_code = INTERRUPTED_EXIT_CODE if self.interrupted else PREEMPTED_EXIT_CODE
        super().__init__(
            f"{'interrupted' if self.interrupted else 'preempted'} by {signal_name or 'a signal on another rank'}: "
            f"checkpoint saved at global_step {global_step}"
        )


class StopFlags:
    """Preemption signals, and a first Ctrl-C (SIGINT), set a local flag; ranks agree on it (and on non-finite
    losses) at step boundaries, then checkpoint and stop. A second Ctrl-C stops at once (KeyboardInterrupt). The
    workers of a launcher (torchrun's agent, accelerate launch: LOCAL_RANK is set) also stop when it is gone
    (SIGKILL): their parent is then another process, and nothing else would stop them."""

    def __init__(self, signal_names):
        self.signal_received: str | None = None
        self.launcher = os.getppid() if "LOCAL_RANK" in os.environ else None
        self.previous = {}  # restored by restore(): a notebook or library caller gets its own handlers back
        for name in signal_names:
            self.previous[getattr(signal, name)] = signal.signal(
                getattr(signal, name), self._handler
            )
        self.previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._interrupt))

    def __enter__(self) -> StopFlags:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handler(self, signum, frame):
        self.signal_received = signal.Signals(signum).name

    def _interrupt(self, signum, frame):
        if self.signal_received == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the checkpoint
        self.signal_received = "SIGINT"
        print(
            "mnist-dist: interrupted: saving a checkpoint at the next step (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def agree(self, accelerator: Accelerator, non_finite: torch.Tensor) -> tuple[bool, bool]:
        """(preempt, non_finite) as agreed by every rank. A host-device sync point."""
        if self.launcher not in (None, os.getppid()) and self.signal_received is None:
            self.signal_received = LAUNCHER_GONE
        local = torch.stack(
            [
                torch.tensor(float(self.signal_received is not None), device=non_finite.device),
                non_finite.float(),
            ]
        )
        if accelerator.num_processes > 1:
            local = accelerator.reduce(local, reduction="sum")
        preempt, bad = local.tolist()
        return preempt > 0, bad > 0


def requeue_slurm_job(accelerator: Accelerator) -> None:
    # an array task is requeued by its own id (ARRAYJOB_TASK), not the array's
    job = rundir.slurm_job_id()
    if not job or not accelerator.is_main_process:
        return
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        accelerator.print(
            f"requeue of SLURM job {job} failed ({e}); resubmit with the same run.dir to resume"
        )
        return
    accelerator.print(
        f"requeue of SLURM job {job}: "
        + ("ok" if result.returncode == 0 else result.stderr.strip())
    )


def end_elastic_agent() -> None:
    """After a preemption: end torchrun's elastic agent rather than be restarted by it. The agent restarts a
    worker group on any non-zero exit while restarts remain (it has no notion of "requeue me"; torch/distributed/
    elastic/agent/server/api.py, _invoke_run), so each node's local rank 0 sends its agent (our parent) SIGTERM,
    the agent's own way to stop: it stops the workers, which finish saving and exit 75 (they take SIGTERM as a
    preemption signal), and exits itself. With no restarts left (max_restarts 0, as the shipped YAMLs) the agent
    ends on its own, and is left alone."""
    env = os.environ
    restarts_left = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) - int(
        env.get("TORCHELASTIC_RESTART_COUNT", "0")
    )
    if env.get("TORCHELASTIC_RUN_ID") and env.get("LOCAL_RANK") == "0" and restarts_left > 0:
        print(
            f"mnist-dist: preempted: stopping torchrun's elastic agent (pid {os.getppid()}) instead of letting it "
            f"restart the workers",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getppid(), signal.SIGTERM)
