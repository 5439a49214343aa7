"""Experiment tracking behind one small interface (log, log_eval, finish): W&B, TensorBoard, or nothing.

The main process's writer (train/writer.py) holds the tracker; backend=none gets the null Tracker, whose methods
do nothing. Numbers arrive named once (metrics.name: test/accuracy in W&B, test_accuracy in the files). Media
(sample grid, misclassified table) are built from the predictions the evaluation already made: nothing here
runs the model.

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
from pathlib import Path
from urllib.parse import urlparse

from mnist_dist import config, metrics
from mnist_dist.data import sources
from mnist_dist.errors import PREEMPTED_EXIT_CODE
from mnist_dist.metrics import EvalRecord, Predictions, SplitMetrics
from mnist_dist.run import atomic, rundir

MISCLASSIFIED_ROWS = 64  # rows of the W&B table of wrong test predictions, per evaluation
SAMPLE_IMAGES = 32  # images in the W&B grid of sample predictions, per evaluation
# test images (rank 0's share of the evaluation) scanned for mistakes per evaluation
SCAN_LIMIT = 5000
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def wandb_mode() -> str | None:
    """WANDB_MODE (or the legacy WANDB_DISABLED=true) as set by the user, else None."""
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode) or None


def _has_wandb_credentials() -> bool:
    """True if wandb would find credentials without asking. Never reads the key into our own objects."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import wbnetrc

        return wbnetrc.read_netrc_auth(host=_wandb_base_url()) is not None
    except Exception:  # a wandb API that moved, or an unreadable .netrc: treat as no credentials
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
    if any(os.environ.get(v) for v in PROXIES):
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
    # an error message from a tracking library must not carry the credential into logs
    if key := os.environ.get("WANDB_API_KEY"):
        message = message.replace(key, "***")
    print(f"mnist-dist: warning: {message}", file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(f"mnist-dist: {message}", flush=True)


def _warn_failed(
    name: str, what: str, e: Exception, then: str = "training goes on without it"
) -> None:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    _warn(f"{name} failed during {what} ({type(e).__name__}: {first}); {then}")


# ----------------------------------------------------------------------------- the interface


class Tracker:
    """No tracking. run_id is kept so that a run resumed with tracking on continues the same W&B run. The first
    error of a real tracker's library prints one warning and turns it into this (broken): training goes on."""

    name = "none"
    predictions_wanted = 0  # test images whose class probabilities log_eval would use
    broken = True

    def __init__(self, run_id: str | None = None):
        self.run_id, self.last_step = run_id, 0

    def log(self, values: dict, step: int) -> None:
        """values: W&B names (train/loss, epoch) at optimizer step `step`."""
        self.last_step = step
        self._guarded("log", self._log, {k: v for k, v in values.items() if v is not None}, step)

    def log_eval(self, record: EvalRecord, predictions: Predictions | None = None) -> None:
        self.last_step = record.global_step
        self._guarded("log_eval", self._log_eval, record, predictions)

    def finish(
        self, summary: dict | None, record: EvalRecord | None = None, preempted=False
    ) -> None:
        """summary: summary.json's, with the final evaluation (None: the run stopped early); preempted: it saved
        a checkpoint and will be resumed."""
        self._guarded("finish", self._finish, summary, record, preempted)
        self.broken = True  # finished: nothing more is sent

    def _guarded(self, what: str, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:
            self.broken = True
            _warn_failed(self.name, what, e)

    def _log(self, values: dict, step: int) -> None: ...

    def _log_eval(self, record: EvalRecord, predictions: Predictions | None) -> None: ...

    def _finish(self, summary: dict | None, record: EvalRecord | None, preempted: bool) -> None: ...


def split_scalars(split: str, m: SplitMetrics, classes: list[str]) -> dict:
    """A split's numbers under their charts' names (metrics.name), per-class accuracy as one scalar per class
    ("/" would nest W&B keys: T-shirt/top is T-shirt_top)."""
    per_class = metrics.name(split, "per_class_accuracy", "/")
    return {metrics.name(split, k, "/"): getattr(m, k) for k in ("loss", "accuracy", "count")} | {
        f"{per_class}/{c.replace('/', '_')}": a for c, a in zip(classes, m.per_class_accuracy)
    }


def eval_scalars(record: EvalRecord, classes: list[str]) -> dict:
    """An evaluation as charts: every split's but its count (a summary number), the epoch, the training window's
    accuracy and the training time (train/loss is charted at every log step)."""
    out: dict[str, float | None] = {"epoch": record.epoch}
    for split, m in record.splits.items():
        out |= split_scalars(split, m, classes)
        del out[metrics.name(split, "count", "/")]
    out |= {"train/accuracy": record.train_accuracy, "train/seconds": record.train_seconds}
    return {k: v for k, v in out.items() if v is not None} | (
        {"early_stop": 1} if record.early_stop else {}
    )


# ----------------------------------------------------------------------------- W&B


def define_metrics(run) -> None:
    """Charts against global_step (optimizer steps, the same on any world size), and summaries that rank runs by
    their best validation numbers, not their last ones."""
    run.define_metric("global_step", hidden=True)
    for section in ("train/*", "val/*", "test/*", "epoch"):
        run.define_metric(section, step_metric="global_step")
    run.define_metric("val/accuracy", step_metric="global_step", summary="max")
    run.define_metric("val/loss", step_metric="global_step", summary="min")


def dashboard_summary(summary: dict, record: EvalRecord | None = None) -> dict:
    """summary.json as a W&B summary: the final numbers under their charts' names (the record's, named by
    metrics.name), best/* for the best model, no local paths (the data source keeps its kind: idx, hf:...,
    torchvision:...), and not the last validation accuracy (its summary is the best, define_metric's max)."""
    out, skip = {}, {"val_accuracy", "epochs"}
    if record is not None:
        out = record.final("/") | {"epoch": record.epoch}
        skip |= set(record.final())
    for key, value in summary.items():
        if value is None or key in skip:
            continue
        if key == "best" and isinstance(value, dict):
            out.update({f"best/{k}": v for k, v in value.items() if k != "model" and v is not None})
        elif key == "data_source" and isinstance(value, str) and value.startswith("idx:"):
            out[key] = "idx"
        elif not (isinstance(value, str) and os.path.isabs(value)):
            out[key] = value
    return out


def best_of_history(metrics_path: Path) -> dict:
    """The global_step of the best validation accuracy (max) and loss (min), from metrics.jsonl (the whole run,
    resumes included). The values themselves are define_metric's: W&B resets a summary key that is also set by
    hand to its last value."""
    records = rundir.read_jsonl(metrics_path) if metrics_path.is_file() else []
    out = {}
    for metric, pick in (("accuracy", max), ("loss", min)):
        key = f"val_{metric}"
        scored = [r for r in records if isinstance(r.get(key), (int, float))]
        if scored:
            out[f"val/{metric}_best_step"] = pick(scored, key=lambda r: r[key])["global_step"]
    return out


def model_artifact(run_id: str, model_dir: Path, metadata: dict):
    """The model files of a folder (a run's final model or its best/) as the run's model artifact."""
    import wandb

    artifact = wandb.Artifact(f"model-{run_id}", type="model", metadata=metadata)
    artifact.add_file(str(model_dir / rundir.MODEL_FILE))
    artifact.add_file(str(model_dir / rundir.MODEL_META))
    return artifact


def job_type(run_dir: Path) -> str:
    """sweep: a point of a W&B sweep agent or of `mnist-dist sweep` (its folder holds sweep_point.json)."""
    sweep_point = (run_dir / rundir.SWEEP_POINT).is_file()
    return "sweep" if os.environ.get("WANDB_SWEEP_ID") or sweep_point else "train"


def default_group() -> str | None:
    """One group for everything one job ran: the SLURM job (an array's parent), else torchrun's run id."""
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    return slurm or (elastic if elastic and elastic != "none" else None)


class WandbTracker(Tracker):
    """One wandb run, main process only."""

    name = "wandb"
    predictions_wanted = SCAN_LIMIT
    broken = False

    def __init__(self, run, cfg: config.Config, run_dir: Path, classes: list[str]):
        super().__init__(run.id)
        self.run, self.log_model, self.run_dir = run, cfg.tracking.log_model, Path(run_dir)
        self.classes = classes
        self._guarded("define_metric", define_metrics, run)

    def _log(self, values: dict, step: int) -> None:
        self.run.log({"global_step": step, **values}, step=step)

    def _log_eval(self, record: EvalRecord, predictions: Predictions | None) -> None:
        import wandb

        step, values = record.global_step, eval_scalars(record, self.classes)
        rows = [
            [self.classes[i], self.classes[j], n]
            for i, row in enumerate(record.splits["test"].confusion)
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
        self.run.log({"global_step": step, **values}, step=step)

    def _predictions(self, p: Predictions) -> dict:
        """A grid of the first test images and a table of misclassified ones, with every class probability."""
        import torch
        import wandb

        names = self.classes
        confidence, preds = p.probs.max(1)
        grid = [
            wandb.Image(
                p.images[k].numpy(),
                caption=f"{names[preds[k]]} ({confidence[k]:.2f})"
                + ("" if preds[k] == p.labels[k] else f" - true {names[p.labels[k]]}"),
            )
            for k in range(min(SAMPLE_IMAGES, len(p.labels)))
        ]
        columns = ["index", "image", "true", "predicted", "confidence", "p_true"]
        table = wandb.Table(columns=[*columns, *[f"p_{c}" for c in names]])
        for k in torch.nonzero(preds != p.labels).flatten()[:MISCLASSIFIED_ROWS].tolist():
            true, probs = p.labels[k], p.probs[k]
            image = wandb.Image(p.images[k].numpy())
            table.add_data(
                k,
                image,
                names[true],
                names[preds[k]],
                float(confidence[k]),
                float(probs[true]),
                *probs.tolist(),
            )
        return {"test/samples": grid, "test/misclassified": table}

    def _finish(self, summary: dict | None, record: EvalRecord | None, preempted: bool) -> None:
        import wandb

        run, run_dir = self.run, self.run_dir
        if summary is not None:
            final = dashboard_summary(summary, record)
            run.summary.update({**final, **best_of_history(run_dir / rundir.METRICS)})
            pictures = {
                f"report/{name[:-4]}": wandb.Image(str(run_dir / name))
                for name in rundir.PICTURES
                if (run_dir / name).is_file()
            }
            if pictures:
                run.log(pictures, step=self.last_step)
            # One artifact name, two versions: the best model first, so that `latest` is the final one. When
            # both are the same weights, W&B keeps one version with all three aliases.
            for model_dir, aliases in (
                (run_dir / rundir.BEST, ["best"]),
                (run_dir, ["latest", "final"]),
            ):
                if self.log_model and (model_dir / rundir.MODEL_FILE).is_file():
                    run.log_artifact(model_artifact(run.id, model_dir, final), aliases=aliases)
        # W&B's contract for a run that will come back: mark_preempting(), then a non-zero exit code (the run shows
        # as preempted, not failed; the resume reopens it). Any other early stop (non-finite loss) is a failure.
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=0 if summary is not None else PREEMPTED_EXIT_CODE if preempted else 1)
        _say_if_offline(run, "saved")


def _say_if_offline(run, what: str) -> None:
    if run.settings.mode == "offline":
        where = run.settings.sync_dir
        _say(f"W&B run {run.id} {what} offline in {where}; upload it with: wandb sync {where}")


def _wandb_init(tc: config.TrackingConfig, init: dict, where: Path, then: str):
    """wandb.init with our arguments and tracking.init_kwargs on top (a name this wandb.init does not take is
    left out with a warning, not a failed init), offline into `where`/wandb where online cannot work. None, with
    one warning, when init fails."""
    import inspect

    import wandb

    known = inspect.signature(wandb.init).parameters
    if unknown := sorted(k for k in tc.init_kwargs if k not in known):
        _warn(f"tracking.init_kwargs: wandb.init takes no {', '.join(unknown)}; left out")
    init = {**init, "dir": str(where), **{k: v for k, v in tc.init_kwargs.items() if k in known}}
    if wandb_mode() != "offline" and init.get("mode") not in ("offline", "disabled"):
        if not _has_wandb_credentials():
            # Online without credentials would prompt for a key (or fail): offline into the run folder instead.
            init["mode"] = "offline"
            _say(
                "no W&B credentials (WANDB_API_KEY or ~/.netrc): W&B logs offline into the run folder"
            )
        elif why := _wandb_server_unreachable():
            init["mode"] = "offline"
            _say(f"W&B server {why}: W&B logs offline into the run folder")
    # wandb falls back to /tmp if dir does not exist
    (where / "wandb").mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(**init)
    except Exception as e:
        _warn_failed("wandb", "init", e, then)
        return None


def _identity(tc: config.TrackingConfig) -> dict:
    """wandb.init's arguments for where a run is filed and how it is named."""
    tags = list(tc.tags) or None
    group = tc.group or default_group()
    return {
        "project": tc.project,
        "entity": tc.entity,
        "name": tc.run_name,
        "tags": tags,
        "group": group,
    }


def _start_wandb(cfg: config.Config, run_dir: Path, run_id: str, launch: dict) -> Tracker:
    # Tables are staged as artifact files under WANDB_DATA_DIR (default ~/.local/share/wandb) until synced:
    # keep them with the run unless the user chose a place.
    os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb" / "data"))
    init = {
        **_identity(cfg.tracking),
        "id": run_id,
        "resume": "allow",
        "job_type": job_type(run_dir),
        "config": {**config.to_dict(cfg), "launch": launch},
    }
    run = _wandb_init(cfg.tracking, init, run_dir, "training goes on without experiment tracking")
    if run is None:
        return Tracker(run_id)
    _say_if_offline(run, "logs")
    return WandbTracker(run, cfg, run_dir, launch["classes"])


def model_artifact_ref(model_path: Path) -> str | None:
    """The W&B artifact (model-<training run id>:best|final) of a run folder's model or of its best/, from the
    run folder's W&B run id; None for a model without a run (a Hub download, a loose file, a checkpoint)."""
    model_dir = model_path if model_path.is_dir() else model_path.parent
    run_dir = rundir.of_model(model_dir)
    try:
        run_id = (run_dir / rundir.TRACKER_RUN_ID).read_text().strip()
    except OSError:
        return None
    best = model_dir.name == rundir.BEST and model_dir != run_dir
    return f"model-{run_id}:{'best' if best else 'final'}" if run_id else None


def log_evaluation(
    cfg: config.Config,
    model_path: Path,
    model_info: dict,
    result: SplitMetrics,
    split: str,
    hub_repo: str | None,
    world_size: int,
) -> None:
    """`mnist-dist eval` with tracking.backend=wandb: a W&B run of its own (job_type eval) with the result, that
    uses the model's artifact: online its lineage links the evaluation to the training run; offline wandb cannot
    use an artifact, so the run's config names it (model.artifact). Never fails the evaluation."""
    if cfg.tracking.backend != "wandb" or wandb_mode() == "disabled" or not _installed("wandb"):
        return
    ref, run_dir = model_artifact_ref(Path(model_path)), rundir.of_model(model_path)
    # beside the training run's own W&B folder; a model without a run folder: wandb's default, ./wandb
    writable = (run_dir / rundir.SUMMARY).is_file() and os.access(run_dir, os.W_OK)
    model = {"artifact": ref, "hub_repo": hub_repo} | {
        k: model_info[k] for k in ("name", "dataset")
    }
    data = {"name": cfg.data.name}
    run_config = {"model": model, "split": split, "data": data, "world_size": world_size}
    init = {**_identity(cfg.tracking), "job_type": "eval", "config": run_config}
    run = _wandb_init(
        cfg.tracking, init, run_dir if writable else Path.cwd(), "the evaluation is not tracked"
    )
    if run is None:
        return
    try:
        if ref and run.settings.mode != "offline":
            run.use_artifact(ref if "/" in ref else f"{run.project}/{ref}")
        run.log(split_scalars(split, result, model_info["classes"]))
        run.finish()
    except Exception as e:
        _warn_failed("wandb", "logging", e, "the evaluation is not tracked")
    _say_if_offline(run, "saved")


# ----------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker(Tracker):
    """Scalars into RUN_DIR/tensorboard/ (per-class accuracy as one scalar per class) and, at the end, the run's
    pictures."""

    name = "tensorboard"
    broken = False

    def __init__(self, writer, run_dir: Path, run_id: str | None, classes: list[str]):
        super().__init__(run_id)
        self.writer, self.run_dir, self.classes = writer, Path(run_dir), classes

    def _log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def _log_eval(self, record: EvalRecord, predictions: Predictions | None) -> None:
        self._log(eval_scalars(record, self.classes), record.global_step)

    def _finish(self, summary: dict | None, record: EvalRecord | None, preempted: bool) -> None:
        import numpy as np
        from PIL import Image

        for name in rundir.PICTURES if summary is not None else ():
            if (self.run_dir / name).is_file():
                with Image.open(self.run_dir / name) as img:
                    picture = np.asarray(img.convert("RGB"))
                self.writer.add_image(
                    f"report/{name[:-4]}", picture, self.last_step, dataformats="HWC"
                )
        self.writer.close()


def _start_tensorboard(cfg: config.Config, run_dir: Path, run_id: str, launch: dict) -> Tracker:
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        flat = config.flatten(cfg).items()
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat}
        writer.add_hparams(hparams, metric_dict={}, run_name=".")
    except Exception as e:
        _warn_failed("tensorboard", "init", e, "training goes on without experiment tracking")
        return Tracker(run_id)
    return TensorBoardTracker(writer, run_dir, run_id, launch["classes"])


# ----------------------------------------------------------------------------- start


def choose_run_id(run_dir: Path) -> str:
    """The run folder's run id, decided once: read from RUN_DIR/.tracker_run_id, or made in W&B's own format
    (8 base-36 characters) and written there. So a restart before the first checkpoint (torchrun's elastic agent,
    a requeue, the same command again) continues the same W&B run; a fresh run in an old folder finds the file
    set aside with the earlier run's files (rundir.set_aside) and gets a new one. Made here, before init, so that
    it survives init's failure."""
    path = run_dir / rundir.TRACKER_RUN_ID
    try:
        if saved := path.read_text().strip():
            return saved
    except OSError:
        pass
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic.write_text(path, run_id + "\n")
    return run_id


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def start(
    cfg: config.Config, run_dir: Path, resume_run_id: str | None = None, launch: dict | None = None
) -> Tracker:
    """The main process's tracker. The run id: the one a checkpoint stored (a resume continues its W&B run), else
    the one a W&B sweep agent gave (WANDB_RUN_ID), else the run folder's own (choose_run_id)."""
    backend, run_dir = cfg.tracking.backend, Path(run_dir)
    run_id = resume_run_id or os.environ.get("WANDB_RUN_ID") or choose_run_id(run_dir)
    if backend == "none":
        return Tracker(run_id)
    if backend == "wandb" and wandb_mode() == "disabled":
        _say("W&B is disabled (WANDB_MODE=disabled): no experiment tracking")
        return Tracker(run_id)
    if not _installed(backend):
        _warn(
            f"tracking.backend={backend} but the {backend} package is not installed; no experiment tracking"
        )
        return Tracker(run_id)
    # the run's facts (training names its classes); a named set's own classes without them
    launch = {"classes": sources.CLASSES.get(cfg.data.name, [])} | (launch or {})
    if backend == "wandb":
        return _start_wandb(cfg, run_dir, run_id, launch)
    return _start_tensorboard(cfg, run_dir, run_id, launch)
