"""Experiment tracking behind one small interface: W&B or TensorBoard through Accelerate's trackers, or nothing.

The loop calls tracker.log / log_eval / finish unconditionally. Every process other than the main one, and
backend=none, gets the base Tracker, whose methods do nothing: one W&B run per job, however many processes.

W&B never blocks or prompts and never kills training:
  - without credentials (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a ~/.netrc entry) it runs offline into
    RUN_DIR/wandb/ and says how to upload (`wandb sync PATH`); WANDB_MODE=offline|disabled is honoured;
  - with credentials but no route to the W&B server (a compute node without internet), the same, after a
    TCP connect of at most 5 s instead of wandb's ~90 s wait that ends untracked;
  - any W&B error (init or log) prints one warning and the run goes on untracked;
  - a resumed run continues the same W&B run: the id is stored in every checkpoint (train.save_checkpoint).
Nothing here reads or writes credentials: wandb finds them itself; they never enter the config we log.
"""
from __future__ import annotations

import os
import secrets
import socket
import string
import sys
from pathlib import Path
from urllib.parse import urlparse

from mnist_dist.errors import PREEMPTED_EXIT_CODE

MISCLASSIFIED_ROWS = 64  # rows of the W&B table of wrong test predictions, per evaluation
SAMPLE_IMAGES = 32  # images in the W&B grid of sample predictions, per evaluation
SCAN_LIMIT = 5000  # test images scanned for mistakes per evaluation (main process only, other ranks wait)


def wandb_mode() -> str | None:
    """WANDB_MODE (or the legacy WANDB_DISABLED=true) as set by the user, else None."""
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode) or None


def log_with(tcfg) -> str | None:
    """What make_accelerator passes to Accelerator(log_with=...)."""
    if tcfg.backend == "none" or (tcfg.backend == "wandb" and wandb_mode() == "disabled"):
        return None
    return tcfg.backend


def slurm_group() -> str | None:
    """The SLURM job (an array's parent id for array tasks): every requeue and task lands in one W&B group."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def _has_wandb_credentials() -> bool:
    """True if wandb would find credentials without asking. Never reads the key into our own objects."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import wbnetrc
        return wbnetrc.read_netrc_auth(host=_wandb_base_url()) is not None
    except Exception:  # a private wandb API that moved, or an unreadable .netrc: treat as no credentials
        return False


def _wandb_base_url() -> str:
    """The server wandb.init will use (its default < `wandb login --host` < WANDB_BASE_URL), as wandb's own
    process-wide settings resolve it; a bare wandb.Settings() reads neither the settings files nor the environment."""
    import wandb
    return wandb.setup().settings.base_url


def _wandb_server_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the W&B server cannot be reached (a compute node without internet), or None if it can or we cannot
    tell (a proxy is set: only wandb's own client knows the way). Online, wandb.init would wait ~90 s and then
    fail, and the run would have no tracking at all; offline it keeps everything for `wandb sync`."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        url = urlparse(_wandb_base_url())
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    except Exception:  # a settings layout this wandb does not have: let wandb find out itself
        return None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return None
    except OSError as e:
        return f"{url.scheme}://{host}:{port} unreachable ({type(e).__name__}: {e})"


def _warn(message: str) -> None:
    key = os.environ.get("WANDB_API_KEY")
    if key:  # an error message from a tracking library must not carry the credential into logs
        message = message.replace(key, "***")
    print(f"mnist-dist: warning: {message}", file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(f"mnist-dist: {message}", flush=True)


# ----------------------------------------------------------------------------- the interface


class Tracker:
    """No tracking. run_id is kept so that a run resumed with tracking on continues the same W&B run."""

    def __init__(self, accelerator=None, run_id: str | None = None):
        self.accelerator, self.run_id = accelerator, run_id

    def log(self, values: dict, step: int) -> None:
        pass

    def log_eval(self, record: dict, step: int, model=None, test=None) -> None:
        pass

    def finish(self, summary: dict | None, preempted: bool = False, **artifacts) -> None:
        """summary=None: the run stopped early; preempted: it saved a checkpoint and will be resumed."""


def _section(key: str) -> str:
    """metrics.jsonl names -> W&B panel sections: val_loss -> val/loss, lr -> train/lr; epoch stays epoch."""
    head, _, rest = key.partition("_")
    if head in ("train", "val", "test") and rest:
        return f"{head}/{rest}"
    return {"lr": "train/lr", "images_per_s": "train/images_per_s"}.get(key, key)


def _scalars(record: dict, classes: list[str]) -> dict:
    """The scalar part of an evaluation record; per-class lists become one scalar per class."""
    out = {}
    for key, value in record.items():
        if key.endswith("_per_class_accuracy"):
            split = key.split("_", 1)[0]
            # "/" would nest W&B keys (T-shirt/top): one panel per class needs a flat name.
            out.update({f"{split}/per_class_accuracy/{c.replace('/', '_')}": a for c, a in zip(classes, value)})
        elif (key.endswith(("_confusion", "_count")) or key in ("train_loss", "global_step")) or value is None:
            continue  # matrix: drawn separately; counts: in the summary; train_loss: per step; global_step: W&B's step
        elif isinstance(value, (int, float)):
            out[_section(key)] = value
    return out


class _AccelerateTracker(Tracker):
    """Logs through the Accelerator's started tracker (main process only). The first error from the
    tracking library prints one warning and turns this object into a Tracker that does nothing."""

    name = ""  # Accelerate's tracker name

    def __init__(self, accelerator, cfg, run_dir: Path, run_id: str | None):
        super().__init__(accelerator, run_id)
        from mnist_dist.checkpoint import CLASSES
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.classes = CLASSES[cfg.data.name]
        self.last_step = 0
        self.broken = False

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.broken = True
            _warn(f"{self.name} failed during {what} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                  f"training goes on without experiment tracking")
            self._detach()
            return None

    def _detach(self) -> None:
        # end_training() would otherwise call the tracker's finish() again (W&B raises on a finished run).
        self.accelerator.trackers = [t for t in self.accelerator.trackers if t.name != self.name]

    def _backend(self):
        return self.accelerator.get_tracker(self.name, unwrap=True)

    def log(self, values: dict, step: int) -> None:
        self.last_step = step
        self._guard("log", self.accelerator.log, {_section(k): v for k, v in values.items()}, step=step)

    def log_eval(self, record: dict, step: int, model=None, test=None) -> None:
        self.last_step = step
        self._guard("log_eval", self.accelerator.log, _scalars(record, self.classes), step=step)

    def finish(self, summary: dict | None, preempted: bool = False, run_dir=None, **_) -> None:
        if self.broken:
            return
        self._guard("finish", self._finish, summary, Path(run_dir) if run_dir else self.run_dir, preempted)
        if not self.broken:
            self._detach()

    def _finish(self, summary: dict | None, run_dir: Path, preempted: bool) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------- W&B


class WandbTracker(_AccelerateTracker):
    name = "wandb"

    def log_eval(self, record: dict, step: int, model=None, test=None) -> None:
        super().log_eval(record, step)
        self._guard("log_eval", self._log_eval_media, record, step, model, test)

    def _log_eval_media(self, record: dict, step: int, model, test) -> None:
        import wandb
        values = {}
        if "test_confusion" in record:
            rows = [[self.classes[i], self.classes[j], n] for i, row in enumerate(record["test_confusion"])
                    for j, n in enumerate(row)]
            # The same chart wandb.plot.confusion_matrix makes, fed with counts instead of 10,000 labels.
            values["test/confusion_matrix"] = wandb.plot_table(
                "wandb/confusion_matrix/v1", wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows),
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": f"test confusion matrix, step {step}"})
        if model is not None and test is not None:
            values.update(self._predictions(model, test))
        if values:
            self._backend().log(values, step=step)

    def _predictions(self, model, test) -> dict:
        """A grid of the first test images and a table of misclassified ones, with every class probability."""
        import torch
        import wandb
        from mnist_dist import data, report
        mean, std = data.STATS[self.cfg.data.name]
        images, labels = test.images[:SCAN_LIMIT], test.labels[:SCAN_LIMIT]
        probs = report.predict(model, images, mean, std, batch_size=self.cfg.train.eval_batch_size)
        confidence, preds = probs.max(1)
        grid = [wandb.Image(images[k].numpy(), caption=f"{self.classes[preds[k]]} ({confidence[k]:.2f})"
                            + ("" if preds[k] == labels[k] else f" - true {self.classes[labels[k]]}"))
                for k in range(min(SAMPLE_IMAGES, len(labels)))]
        wrong = torch.nonzero(preds != labels).flatten()[:MISCLASSIFIED_ROWS].tolist()
        table = wandb.Table(columns=["index", "image", "true", "predicted", "confidence", "p_true",
                                     *[f"p_{c}" for c in self.classes]])
        for k in wrong:
            table.add_data(k, wandb.Image(images[k].numpy()), self.classes[labels[k]], self.classes[preds[k]],
                           float(confidence[k]), float(probs[k, labels[k]]), *[float(p) for p in probs[k]])
        return {"test/samples": grid, "test/misclassified": table}

    def _finish(self, summary: dict | None, run_dir: Path, preempted: bool) -> None:
        import wandb
        from mnist_dist import report
        run = self._backend()
        if summary is not None:
            run.summary.update({k: v for k, v in summary.items() if v is not None})
            pictures = {f"report/{name[:-4]}": wandb.Image(str(run_dir / name))
                        for name in (report.CURVES, report.CONFUSION, report.SAMPLES) if (run_dir / name).is_file()}
            if pictures:
                run.log(pictures, step=self.last_step)
            model_file = run_dir / "model.safetensors"
            if self.cfg.tracking.log_model and model_file.is_file():
                artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=summary)
                artifact.add_file(str(model_file))
                artifact.add_file(str(run_dir / "model.json"))
                run.log_artifact(artifact, aliases=["latest", "final"])
        offline = run.settings.mode == "offline"
        sync_dir = run.settings.sync_dir
        # W&B's contract for a run that will come back: mark_preempting(), then a non-zero exit code (the run shows
        # as preempted, not failed; the resume reopens it). Any other early stop (non-finite loss) is a failure.
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=0 if summary is not None else PREEMPTED_EXIT_CODE if preempted else 1)
        if offline:
            _say(f"W&B run {run.id} saved offline in {sync_dir}; upload it with: wandb sync {sync_dir}")


def _start_wandb(accelerator, cfg, run_dir: Path, resume_run_id: str | None) -> Tracker:
    from mnist_dist import config
    tc = cfg.tracking
    # W&B's own id format (8 base-36 characters), made here so it exists before init and survives its failure.
    run_id = resume_run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    init = {"id": run_id, "resume": "allow", "dir": str(run_dir), "entity": tc.entity, "name": tc.run_name,
            "tags": list(tc.tags) or None, "group": tc.group or slurm_group()}
    if wandb_mode() != "offline":
        if not _has_wandb_credentials():
            # Online without credentials would prompt for a key (or fail): go offline into the run folder instead.
            init["mode"] = "offline"
            _say("no W&B credentials (WANDB_API_KEY or ~/.netrc): W&B logs offline into the run folder")
        elif why := _wandb_server_unreachable():
            init["mode"] = "offline"
            _say(f"W&B server {why}: W&B logs offline into the run folder")
    tracker = WandbTracker(accelerator, cfg, run_dir, run_id)
    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp if dir does not exist
    # Tables are staged as artifact files under WANDB_DATA_DIR (default ~/.local/share/wandb) until synced:
    # keep them with the run unless the user chose a place.
    os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb" / "data"))
    launch = {"world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
              "distributed_type": accelerator.distributed_type.value,
              "global_batch_size": cfg.train.per_device_batch_size * accelerator.num_processes * cfg.train.grad_accum_steps}
    tracker._guard("init", accelerator.init_trackers, tc.project, config={**config.to_dict(cfg), "launch": launch},
                   init_kwargs={"wandb": init})
    if tracker.broken:
        return Tracker(accelerator, run_id)
    run = tracker._backend()
    if run.settings.mode == "offline":
        _say(f"W&B run {run.id} logs offline into {run.settings.sync_dir}; upload with: wandb sync {run.settings.sync_dir}")
    return tracker


# ----------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker(_AccelerateTracker):
    """Scalars (per-class accuracy as one scalar per class) and, at the end, the run's pictures."""

    name = "tensorboard"

    def _finish(self, summary: dict | None, run_dir: Path, preempted: bool) -> None:
        import numpy as np
        from PIL import Image
        from mnist_dist import report
        writer = self._backend()
        if summary is not None:
            for name in (report.CURVES, report.CONFUSION, report.SAMPLES):
                if (run_dir / name).is_file():
                    with Image.open(run_dir / name) as img:
                        writer.add_image(f"report/{name[:-4]}", np.asarray(img.convert("RGB")), self.last_step,
                                         dataformats="HWC")
        writer.close()


def _start_tensorboard(accelerator, cfg, run_dir: Path, resume_run_id: str | None) -> Tracker:
    from mnist_dist import config
    tracker = TensorBoardTracker(accelerator, cfg, run_dir, resume_run_id)
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.flatten(cfg).items()}
    # Accelerate writes the events into <logging_dir>/<name>/, and logging_dir is the run folder.
    tracker._guard("init", accelerator.init_trackers, "tensorboard", config=hparams)
    return Tracker(accelerator, resume_run_id) if tracker.broken else tracker


# ----------------------------------------------------------------------------- start


def start(accelerator, cfg, run_dir, resume_run_id: str | None) -> Tracker:
    """The tracker for this process: the real one on the main process, a do-nothing Tracker elsewhere."""
    backend = cfg.tracking.backend
    if not accelerator.is_main_process or backend == "none":
        return Tracker(accelerator, resume_run_id)
    if backend == "wandb" and wandb_mode() == "disabled":
        _say("W&B is disabled (WANDB_MODE=disabled): no experiment tracking")
        return Tracker(accelerator, resume_run_id)
    if not any(getattr(t, "value", t) == backend for t in accelerator.log_with):
        _warn(f"tracking.backend={backend} but the {backend} package is not installed; no experiment tracking")
        return Tracker(accelerator, resume_run_id)
    starter = _start_wandb if backend == "wandb" else _start_tensorboard
    return starter(accelerator, cfg, Path(run_dir), resume_run_id)
