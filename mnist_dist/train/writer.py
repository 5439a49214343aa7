"""The main process's writes, in one object: the run folder (its lock, config.yaml, what an earlier run left),
metrics.jsonl, the tracker (W&B, TensorBoard), the best model, and at the end the model, summary.json and the
report. Every other rank gets NullWriter, whose methods do nothing (nanochat's DummyWandb): the loop calls the
same methods on every rank and holds no `if is_main_process` of its own.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from mnist_dist import config, metrics
from mnist_dist.metrics import EvalRecord, Predictions
from mnist_dist.outputs import report, tracking
from mnist_dist.run import artifact, atomic, checkpoint, lock, rundir
from mnist_dist.train import stopping


class NullWriter:
    """What every rank but the main one writes: nothing."""

    # The tracker's run id, saved in each checkpoint (by the main process)
    run_id: str | None = None
    predictions_wanted = 0  # test images whose class probabilities the writes use

    def start(
        self, global_step: int, resumed: Path | None, run_id: str | None, facts: dict
    ) -> None:
        pass

    def log_train(self, values: dict, epoch: float, step: int) -> None:
        pass

    def log_eval(self, record: EvalRecord, predictions: Predictions | None) -> None:
        pass

    def save_best(self, model: torch.nn.Module) -> None:
        pass

    def finish(
        self,
        model: torch.nn.Module,
        summary: dict,
        record: EvalRecord,
        predictions: Predictions | None,
    ) -> None:
        pass


class RunWriter(NullWriter):
    """The main process's writer. Created holding the run folder's lock: one writer per folder, so a second run
    into it stops before it has read or written anything."""

    precision = "no"  # what the run's evaluations ran in, recorded with the model (set at start)

    def __init__(self, cfg: config.Config, teardown: contextlib.ExitStack):
        self.cfg, self.run_dir = cfg, Path(cfg.run.dir)
        # a run that fails before it writes anything leaves no empty folder
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True)
            teardown.callback(_remove_if_empty, self.run_dir)
        teardown.callback(lock.RunLock.acquire(self.run_dir).release)
        # what a crash or a full disk left: it holds space a resume needs
        checkpoint.clean_partial(self.run_dir)
        self.tracker: tracking.Tracker | None = None
        teardown.push(self.close)

    def start(
        self, global_step: int, resumed: Path | None, run_id: str | None, facts: dict
    ) -> None:
        """Once the run knows where it starts: a fresh run in an old folder moves what an earlier run left aside
        (kept, not mixed in); a resumed one drops the records its checkpoint does not cover. Then config.yaml and
        the tracker (a resume continues the checkpoint's tracker run)."""
        if resumed is None:
            if (kept := rundir.set_aside(self.run_dir)) is not None:
                print(
                    f"mnist-dist: an earlier run's files in {self.run_dir} moved to {kept}",
                    flush=True,
                )
        else:
            rundir.truncate_jsonl(self.run_dir / rundir.METRICS, global_step)
        atomic.write_text(self.run_dir / rundir.CONFIG, config.dump(self.cfg))
        self.tracker = tracking.start(self.cfg, self.run_dir, run_id, facts)
        self.precision = facts["mixed_precision"]
        self.classes, self.stats = facts["classes"], facts["pixel_stats"]
        self.run_id = self.tracker.run_id
        self.predictions_wanted = max(report.NUM_SAMPLES, self.tracker.predictions_wanted)

    def log_train(self, values: dict, epoch: float, step: int) -> None:
        assert self.tracker is not None
        named = {metrics.name("train", k, "/"): v for k, v in values.items()}
        self.tracker.log(named | {"epoch": epoch}, step)

    def log_eval(self, record: EvalRecord, predictions: Predictions | None) -> None:
        assert self.tracker is not None
        rundir.append_jsonl(self.run_dir / rundir.METRICS, record.flat())
        self.tracker.log_eval(record, predictions)
        print(epoch_text(record), flush=True)

    def save_best(self, model: torch.nn.Module) -> None:
        """The best model so far to run.dir/best/. A failure is a warning: the next checkpoint, a collective,
        stops every rank if the disk is really full."""
        try:
            self._save_model(model, self.run_dir / rundir.BEST)
        except OSError as e:
            print(
                f"mnist-dist: warning: could not save the best model to {self.run_dir / rundir.BEST} ({e})",
                file=sys.stderr,
                flush=True,
            )

    def finish(
        self,
        model: torch.nn.Module,
        summary: dict,
        record: EvalRecord,
        predictions: Predictions | None,
    ) -> None:
        assert self.tracker is not None
        self._save_model(model, self.run_dir)
        summary["git_revision"] = git_revision()
        atomic.write_text(self.run_dir / rundir.SUMMARY, json.dumps(summary, indent=2))
        # curves, confusion, samples, report.md
        report.write_after_training(self.run_dir, predictions)
        self.tracker.finish(summary, record)

    def close(self, exc_type, exc, tb) -> None:
        """On the teardown stack: a run that did not finish closes its tracker (preempted: to be resumed)."""
        if exc is not None and self.tracker is not None:
            self.tracker.finish(None, preempted=isinstance(exc, stopping.Preempted))

    def _save_model(self, model: torch.nn.Module, where: Path) -> None:
        cfg, (mean, std) = self.cfg, self.stats
        name, kwargs, dataset = cfg.model.name, cfg.model.kwargs, cfg.data.name
        artifact.save_model(
            where, model, name, kwargs, dataset, mean, std, self.classes, self.precision
        )


def open_writer(
    cfg: config.Config, is_main_process: bool, teardown: contextlib.ExitStack
) -> NullWriter:
    """The writer of this process. A bad run.dir is one line on every rank now, before any data is read."""
    rundir.check_usable(Path(cfg.run.dir))
    return RunWriter(cfg, teardown) if is_main_process else NullWriter()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def epoch_text(record: EvalRecord) -> str:
    """One evaluation as a line of the log."""
    loss = None if record.train_loss is None else round(record.train_loss, 4)
    val = f"val_acc {record.splits['val'].accuracy:.4f} " if "val" in record.splits else ""
    test = record.splits["test"]
    return (
        f"epoch {record.epoch:.2f} step {record.global_step}: train_loss {loss} {val}"
        f"test_acc {test.accuracy:.4f} test_loss {test.loss:.4f} ({test.count} images)"
    )


def git_revision() -> str | None:
    """The package's git revision (with -dirty for uncommitted changes), so a result can be reproduced."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        head, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        if head.returncode == 0
        else None
    )
