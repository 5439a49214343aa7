"""Experiment tracking behind one small interface (log, log_eval, finish): W&B, TensorBoard, or nothing.

The loop calls the tracker unconditionally, through one MetricLogger that also appends metrics.jsonl. Every
process other than the main one, and backend=none, gets the null Tracker, whose methods do nothing: one W&B
run per job, however many processes. Media (sample grid, misclassified table) are built from the predictions
the evaluation already made: nothing here runs the model.

W&B never blocks or prompts and never kills training:
  - without credentials (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a ~/.netrc entry) it runs offline into
    RUN_DIR/wandb/ and says how to upload (`wandb sync PATH`); WANDB_MODE=offline|disabled is honoured;
  - with credentials but no route to the W&B server (a compute node without internet), the same, after a
    TCP connect of at most 5 s instead of wandb's ~90 s wait that ends untracked;
  - any W&B error (init or log) prints one warning and the run goes on untracked;
  - a resumed run continues the same W&B run: the id is stored in every checkpoint's state.json;
  - under a W&B sweep agent, the run keeps the id the agent gave it (WANDB_RUN_ID).
Nothing here reads or writes credentials: wandb finds them itself; they never enter the config we log.

What a W&B run shows: charts against global_step; a summary that ranks runs by their best (val/accuracy max,
val/loss min, and the step of each), one name per number (test/accuracy), no local paths; job_type train or
sweep and a default group (SLURM job, torchrun run id; `mnist-dist sweep` sets its own); with log_model, the
final model (aliases latest, final) and the best one (best) as versions of one model artifact.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import string
import sys
import types
from pathlib import Path
from urllib.parse import urlparse

from mnist_dist import atomic, config, data, rundir
from mnist_dist.errors import PREEMPTED_EXIT_CODE
from mnist_dist.inference import Predictions

MISCLASSIFIED_ROWS = 64  # rows of the W&B table of wrong test predictions, per evaluation
SAMPLE_IMAGES = 32  # images in the W&B grid of sample predictions, per evaluation
SCAN_LIMIT = (
    5000  # test images (rank 0's share of the evaluation) scanned for mistakes per evaluation
)


def wandb_mode() -> str | None:
    """WANDB_MODE (or the legacy WANDB_DISABLED=true) as set by the user, else None."""
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode) or None


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
    except (
        Exception
    ):  # a private wandb API that moved, or an unreadable .netrc: treat as no credentials
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
    if any(
        os.environ.get(v)
        for v in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
    ):
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

    predictions_wanted = 0  # test images whose class probabilities log_eval would use

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def log(self, values: dict, step: int) -> None:
        pass

    def log_eval(self, record: dict, step: int, predictions: Predictions | None = None) -> None:
        pass

    def finish(self, summary: dict | None, preempted: bool = False) -> None:
        """summary=None: the run stopped early; preempted: it saved a checkpoint and will be resumed."""


def _warn_failed(name: str, what: str, e: Exception) -> None:
    _warn(
        f"{name} failed during {what} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
        f"training goes on without experiment tracking"
    )


def _guarded(tracker, what: str, fn, *args, **kwargs) -> None:
    """Calls fn; the tracking library's first error prints one warning and turns the tracker off for good."""
    if tracker.broken:
        return
    try:
        fn(*args, **kwargs)
    except Exception as e:
        tracker.broken = True
        _warn_failed(tracker.name, what, e)


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
            out.update(
                {
                    f"{split}/per_class_accuracy/{c.replace('/', '_')}": a
                    for c, a in zip(classes, value)
                }
            )
        elif (
            key.endswith(("_confusion", "_count")) or key in ("train_loss", "global_step")
        ) or value is None:
            continue  # matrix: drawn separately; counts: in the summary; train_loss: per step; global_step: W&B's step
        elif isinstance(value, (int, float)):
            out[_section(key)] = value
    return out


# ----------------------------------------------------------------------------- W&B

# metrics.jsonl names of summary.json's final numbers -> the names their charts have (one name per number)
SUMMARY_NAMES = {
    "test_accuracy": "test/accuracy",
    "test_loss": "test/loss",
    "test_count": "test/count",
    "train_seconds": "train/seconds",
    "epochs": "epoch",
}
# summary.json keys the dashboard leaves out: the last val accuracy is a chart (its summary is the best);
# the best model's path is local to the machine that trained
SUMMARY_LEFT_OUT = ("val_accuracy",)


def define_metrics(run) -> None:
    """Charts against global_step (optimizer steps, the same on any world size), and summaries that rank runs by
    their best validation numbers, not their last ones."""
    run.define_metric("global_step", hidden=True)
    for section in ("train/*", "val/*", "test/*", "epoch"):
        run.define_metric(section, step_metric="global_step")
    run.define_metric("val/accuracy", step_metric="global_step", summary="max")
    run.define_metric("val/loss", step_metric="global_step", summary="min")


def dashboard_summary(summary: dict) -> dict:
    """summary.json as a W&B summary: the charts' names for the final test numbers, best/* for the best model,
    no local paths (the data source keeps its kind: idx, hf:..., torchvision:...)."""
    out = {}
    for key, value in summary.items():
        if value is None or key in SUMMARY_LEFT_OUT:
            continue
        if key == "best" and isinstance(value, dict):
            out.update({f"best/{k}": v for k, v in value.items() if k != "model" and v is not None})
        elif key == "data_source" and isinstance(value, str) and value.startswith("idx:"):
            out[key] = "idx"
        elif not (isinstance(value, str) and os.path.isabs(value)):
            out[SUMMARY_NAMES.get(key, key)] = value
    return out


def best_of_history(metrics_path: Path) -> dict:
    """The global_step of the best validation accuracy (max) and loss (min), from metrics.jsonl (the whole run,
    resumes included). The values themselves are define_metric's: W&B resets a summary key that is also set by
    hand to its last value."""
    records = rundir.read_jsonl(metrics_path) if metrics_path.is_file() else []
    out = {}
    for key, pick in (("val_accuracy", max), ("val_loss", min)):
        scored = [r for r in records if isinstance(r.get(key), (int, float))]
        if scored:
            out[f"{_section(key)}_best_step"] = pick(scored, key=lambda r: r[key])["global_step"]
    return out


def model_artifact(run_id: str, folder: Path, metadata: dict):
    """The model files of a folder (a run's final model or its best/) as the run's model artifact."""
    import wandb

    artifact = wandb.Artifact(f"model-{run_id}", type="model", metadata=metadata)
    artifact.add_file(str(folder / rundir.MODEL_FILE))
    artifact.add_file(str(folder / rundir.MODEL_META))
    return artifact


def job_type(run_dir: Path) -> str:
    """sweep: a point of a W&B sweep agent or of `mnist-dist sweep` (its folder holds sweep_point.json)."""
    return (
        "sweep"
        if os.environ.get("WANDB_SWEEP_ID") or (run_dir / rundir.SWEEP_POINT).is_file()
        else "train"
    )


def default_group() -> str | None:
    """One group for everything one job ran: the SLURM job (an array's parent), else torchrun's run id."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    return slurm_group() or (elastic if elastic and elastic != "none" else None)


class WandbTracker:
    """One wandb run, main process only."""

    name = "wandb"
    predictions_wanted = SCAN_LIMIT

    def __init__(self, run, cfg: config.Config, run_dir: Path):
        self.run, self.run_id, self.broken = run, run.id, False
        self.log_model, self.run_dir = cfg.tracking.log_model, Path(run_dir)
        self.classes = data.CLASSES[cfg.data.name]
        self.last_step = 0
        _guarded(self, "define_metric", define_metrics, run)

    def log(self, values: dict, step: int) -> None:
        self.last_step = step
        _guarded(
            self,
            "log",
            self.run.log,
            {"global_step": step, **{_section(k): v for k, v in values.items()}},
            step=step,
        )

    def log_eval(self, record: dict, step: int, predictions: Predictions | None = None) -> None:
        self.last_step = step
        _guarded(
            self,
            "log_eval",
            lambda: self.run.log(
                {
                    "global_step": step,
                    **_scalars(record, self.classes),
                    **self._media(record, step, predictions),
                },
                step=step,
            ),
        )

    def _media(self, record: dict, step: int, predictions: Predictions | None) -> dict:
        import wandb

        values = {}
        if "test_confusion" in record:
            rows = [
                [self.classes[i], self.classes[j], n]
                for i, row in enumerate(record["test_confusion"])
                for j, n in enumerate(row)
            ]
            # The same chart wandb.plot.confusion_matrix makes, fed with counts instead of 10,000 labels.
            values["test/confusion_matrix"] = wandb.plot_table(
                "wandb/confusion_matrix/v1",
                wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows),
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": f"test confusion matrix, step {step}"},
            )
        if predictions is not None:
            values.update(self._predictions(predictions))
        return values

    def _predictions(self, p: Predictions) -> dict:
        """A grid of the first test images and a table of misclassified ones, with every class probability."""
        import torch
        import wandb

        confidence, preds = p.probs.max(1)
        grid = [
            wandb.Image(
                p.images[k].numpy(),
                caption=f"{self.classes[preds[k]]} ({confidence[k]:.2f})"
                + ("" if preds[k] == p.labels[k] else f" - true {self.classes[p.labels[k]]}"),
            )
            for k in range(min(SAMPLE_IMAGES, len(p.labels)))
        ]
        wrong = torch.nonzero(preds != p.labels).flatten()[:MISCLASSIFIED_ROWS].tolist()
        table = wandb.Table(
            columns=[
                "index",
                "image",
                "true",
                "predicted",
                "confidence",
                "p_true",
                *[f"p_{c}" for c in self.classes],
            ]
        )
        for k in wrong:
            table.add_data(
                k,
                wandb.Image(p.images[k].numpy()),
                self.classes[p.labels[k]],
                self.classes[preds[k]],
                float(confidence[k]),
                float(p.probs[k, p.labels[k]]),
                *[float(x) for x in p.probs[k]],
            )
        return {"test/samples": grid, "test/misclassified": table}

    def finish(self, summary: dict | None, preempted: bool = False) -> None:
        _guarded(self, "finish", self._finish, summary, preempted)
        self.broken = True  # finished: nothing more is sent

    def _finish(self, summary: dict | None, preempted: bool) -> None:
        import wandb

        run, run_dir = self.run, self.run_dir
        if summary is not None:
            run.summary.update(
                {**dashboard_summary(summary), **best_of_history(run_dir / rundir.METRICS)}
            )
            pictures = {
                f"report/{name[:-4]}": wandb.Image(str(run_dir / name))
                for name in rundir.PICTURES
                if (run_dir / name).is_file()
            }
            if pictures:
                run.log(pictures, step=self.last_step)
            if self.log_model:
                # One artifact name, two versions: the best model first, so that `latest` is the final one. When
                # both are the same weights, W&B keeps one version with all three aliases.
                for folder, aliases in (
                    (run_dir / rundir.BEST, ["best"]),
                    (run_dir, ["latest", "final"]),
                ):
                    if (folder / rundir.MODEL_FILE).is_file():
                        run.log_artifact(
                            model_artifact(run.id, folder, dashboard_summary(summary)),
                            aliases=aliases,
                        )
        offline = run.settings.mode == "offline"
        sync_dir = run.settings.sync_dir
        # W&B's contract for a run that will come back: mark_preempting(), then a non-zero exit code (the run shows
        # as preempted, not failed; the resume reopens it). Any other early stop (non-finite loss) is a failure.
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=0 if summary is not None else PREEMPTED_EXIT_CODE if preempted else 1)
        if offline:
            _say(
                f"W&B run {run.id} saved offline in {sync_dir}; upload it with: wandb sync {sync_dir}"
            )


def _init_kwargs(tc: config.TrackingConfig, init: dict) -> dict:
    """Our wandb.init arguments with tracking.init_kwargs on top (notes, settings, job_type, mode, ...); a name
    this wandb.init does not take is left out with a warning, not a failed init (the run would be untracked)."""
    import inspect

    import wandb

    known = inspect.signature(wandb.init).parameters
    unknown = sorted(k for k in tc.init_kwargs if k not in known)
    if unknown:
        _warn(f"tracking.init_kwargs: wandb.init takes no {', '.join(unknown)}; left out")
    return {**init, **{k: v for k, v in tc.init_kwargs.items() if k in known}}


def _start_wandb(
    cfg: config.Config, run_dir: Path, run_id: str, launch: dict
) -> Tracker | WandbTracker:
    import wandb

    tc = cfg.tracking
    init = _init_kwargs(
        tc,
        {
            "project": tc.project,
            "id": run_id,
            "resume": "allow",
            "dir": str(run_dir),
            "entity": tc.entity,
            "name": tc.run_name,
            "tags": list(tc.tags) or None,
            "group": tc.group or default_group(),
            "job_type": job_type(run_dir),
            "config": {**config.to_dict(cfg), "launch": launch},
        },
    )
    if wandb_mode() != "offline" and init.get("mode") not in ("offline", "disabled"):
        if not _has_wandb_credentials():
            # Online without credentials would prompt for a key (or fail): go offline into the run folder instead.
            init["mode"] = "offline"
            _say(
                "no W&B credentials (WANDB_API_KEY or ~/.netrc): W&B logs offline into the run folder"
            )
        elif why := _wandb_server_unreachable():
            init["mode"] = "offline"
            _say(f"W&B server {why}: W&B logs offline into the run folder")
    # wandb falls back to /tmp if dir does not exist
    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    # Tables are staged as artifact files under WANDB_DATA_DIR (default ~/.local/share/wandb) until synced:
    # keep them with the run unless the user chose a place.
    os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb" / "data"))
    try:
        run = wandb.init(**init)
    except Exception as e:
        _warn_failed("wandb", "init", e)
        return Tracker(run_id)
    if run.settings.mode == "offline":
        _say(
            f"W&B run {run.id} logs offline into {run.settings.sync_dir}; upload with: wandb sync {run.settings.sync_dir}"
        )
    return WandbTracker(run, cfg, run_dir)


def model_artifact_ref(model_path: Path) -> str | None:
    """The W&B artifact (model-<training run id>:best|final) of a run folder's model or of its best/, from the
    run folder's W&B run id; None for a model without a run (a Hub download, a loose file, a checkpoint)."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    run_dir = rundir.of_model(folder)
    try:
        run_id = (run_dir / rundir.TRACKER_RUN_ID).read_text().strip()
    except OSError:
        return None
    return (
        f"model-{run_id}:{'best' if folder.name == rundir.BEST and folder != run_dir else 'final'}"
        if run_id
        else None
    )


def log_evaluation(
    cfg: config.Config, model_path: Path, model_info: dict, result: dict, hub_repo: str | None
) -> None:
    """`mnist-dist eval` with tracking.backend=wandb: a W&B run of its own (job_type eval) with the result, that
    uses the model's artifact: online its lineage links the evaluation to the training run; offline wandb cannot
    use an artifact, so the run's config names it (model.artifact). Never fails the evaluation."""
    if (
        cfg.tracking.backend != "wandb"
        or wandb_mode() == "disabled"
        or importlib.util.find_spec("wandb") is None
    ):
        return
    import wandb

    tc, ref = cfg.tracking, model_artifact_ref(model_path)
    run_dir = rundir.of_model(model_path)
    # beside the training run's own W&B folder; a model without a run folder: wandb's default, ./wandb
    where = (
        run_dir
        if (run_dir / rundir.SUMMARY).is_file() and os.access(run_dir, os.W_OK)
        else Path.cwd()
    )
    split = result["split"]
    init = _init_kwargs(
        tc,
        {
            "project": tc.project,
            "entity": tc.entity,
            "name": tc.run_name,
            "tags": list(tc.tags) or None,
            "group": tc.group or default_group(),
            "job_type": "eval",
            "dir": str(where),
            "config": {
                "model": {
                    "artifact": ref,
                    "hub_repo": hub_repo,
                    "name": model_info["name"],
                    "dataset": model_info["dataset"],
                },
                "split": split,
                "data": {"name": cfg.data.name},
                "world_size": result.get("world_size"),
            },
        },
    )
    if (
        wandb_mode() != "offline"
        and init.get("mode") not in ("offline", "disabled")
        and (not _has_wandb_credentials() or _wandb_server_unreachable())
    ):
        init["mode"] = "offline"
    (where / "wandb").mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(**init)
    except Exception as e:
        _warn(
            f"wandb failed during init ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            f"the evaluation is not tracked"
        )
        return
    # for _guarded: the first error warns, once
    tracker = types.SimpleNamespace(name="wandb", broken=False)
    classes = model_info["classes"]
    values = {f"{split}/{k}": result[k] for k in ("accuracy", "loss", "count")}
    values.update(
        {
            f"{split}/per_class_accuracy/{c.replace('/', '_')}": a
            for c, a in zip(classes, result["per_class_accuracy"])
        }
    )
    if ref and run.settings.mode != "offline":
        _guarded(
            tracker, "use_artifact", run.use_artifact, ref if "/" in ref else f"{run.project}/{ref}"
        )
    _guarded(tracker, "log", run.log, values)
    _guarded(tracker, "finish", run.finish)
    if run.settings.mode == "offline":
        _say(
            f"W&B run {run.id} saved offline in {run.settings.sync_dir}; upload it with: wandb sync {run.settings.sync_dir}"
        )


# ----------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """Scalars into RUN_DIR/tensorboard/ (per-class accuracy as one scalar per class) and, at the end, the run's
    pictures."""

    name = "tensorboard"
    predictions_wanted = 0

    def __init__(self, writer, cfg: config.Config, run_dir: Path, run_id: str | None):
        self.writer, self.run_id, self.broken = writer, run_id, False
        self.run_dir, self.classes = Path(run_dir), data.CLASSES[cfg.data.name]
        self.last_step = 0

    def _scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log(self, values: dict, step: int) -> None:
        self.last_step = step
        _guarded(
            self,
            "log",
            self._scalars,
            {_section(k): v for k, v in values.items() if v is not None},
            step,
        )

    def log_eval(self, record: dict, step: int, predictions: Predictions | None = None) -> None:
        self.last_step = step
        _guarded(self, "log_eval", self._scalars, _scalars(record, self.classes), step)

    def finish(self, summary: dict | None, preempted: bool = False) -> None:
        _guarded(self, "finish", self._finish, summary)
        self.broken = True

    def _finish(self, summary: dict | None) -> None:
        import numpy as np
        from PIL import Image

        if summary is not None:
            for name in rundir.PICTURES:
                if (self.run_dir / name).is_file():
                    with Image.open(self.run_dir / name) as img:
                        self.writer.add_image(
                            f"report/{name[:-4]}",
                            np.asarray(img.convert("RGB")),
                            self.last_step,
                            dataformats="HWC",
                        )
        self.writer.close()


def _start_tensorboard(
    cfg: config.Config, run_dir: Path, run_id: str | None
) -> Tracker | TensorBoardTracker:
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in config.flatten(cfg).items()
        }
        writer.add_hparams(hparams, metric_dict={}, run_name=".")
    except Exception as e:
        _warn_failed("tensorboard", "init", e)
        return Tracker(run_id)
    return TensorBoardTracker(writer, cfg, run_dir, run_id)


# ----------------------------------------------------------------------------- start


def choose_run_id(run_dir: Path, is_main_process: bool) -> str:
    """The run folder's run id, decided once: read from RUN_DIR/.tracker_run_id, or made in W&B's own format
    (8 base-36 characters) and written there by the main process. So a restart before the first checkpoint
    (torchrun's elastic agent, a requeue, the same command again) continues the same W&B run; a fresh run in an
    old folder finds the file set aside with the earlier run's files (rundir.set_aside) and gets a new one. Made
    here, before init, so that it survives init's failure."""
    path = run_dir / rundir.TRACKER_RUN_ID
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    if saved:
        return saved
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if is_main_process:
        atomic.write_text(path, run_id + "\n")
    return run_id


def start(
    cfg: config.Config,
    run_dir: Path,
    resume_run_id: str | None = None,
    launch: dict | None = None,
    is_main_process: bool = True,
):
    """The tracker for this process: the real one on the main process, the null Tracker elsewhere.

    The run id: the one a checkpoint stored (a resume continues its W&B run), else the one a W&B sweep agent
    gave (WANDB_RUN_ID), else the run folder's own (choose_run_id).
    """
    backend = cfg.tracking.backend
    run_id = (
        resume_run_id
        or os.environ.get("WANDB_RUN_ID")
        or choose_run_id(Path(run_dir), is_main_process)
    )
    if not is_main_process or backend == "none":
        return Tracker(run_id)
    if backend == "wandb" and wandb_mode() == "disabled":
        _say("W&B is disabled (WANDB_MODE=disabled): no experiment tracking")
        return Tracker(run_id)
    module = {"wandb": "wandb", "tensorboard": "tensorboard"}[backend]
    if importlib.util.find_spec(module) is None:
        _warn(
            f"tracking.backend={backend} but the {backend} package is not installed; no experiment tracking"
        )
        return Tracker(run_id)
    run_dir = Path(run_dir)
    if backend == "wandb":
        return _start_wandb(cfg, run_dir, run_id, launch or {})
    return _start_tensorboard(cfg, run_dir, run_id)


class MetricLogger:
    """The one writer of a run's metrics: evaluation records are appended to metrics.jsonl (main process) and,
    like training records, sent to the tracker (the null one elsewhere)."""

    def __init__(self, metrics_path: Path | None, tracker):
        self.metrics_path, self.tracker = metrics_path, tracker

    def log_train(self, values: dict, step: int) -> None:
        self.tracker.log(values, step=step)

    def log_eval(self, record: dict, predictions: Predictions | None = None) -> None:
        if self.metrics_path is not None:
            rundir.append_jsonl(self.metrics_path, record)
        self.tracker.log_eval(record, step=record["global_step"], predictions=predictions)
