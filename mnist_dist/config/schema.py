"""The config tree: one dataclass per section, each field with its docstring and its policy (key(): choices,
range, whether a resume may change it) beside it. Types are checked as the tree is built (loading.from_dict),
ranges by each section's __post_init__; --help and docs/configuration.md are generated from the same fields
(reference). The world size is not part of the config: it comes from the launcher.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field

from mnist_dist.errors import UserError


class ConfigError(UserError, ValueError):
    """A mistake in the user's config; the CLI prints it as one line."""


INT64_LIMIT = 2**63
# Whether a resumed run may set a key to another value than its checkpoint's config (resume_conflicts).
MAY_CHANGE, MUST_MATCH = "may change", "must match"
# Schedules whose shape does not depend on the run's length: with these, train.epochs may grow on resume.
LENGTH_FREE_SCHEDULERS = ("none", "step")
BOUNDS = {
    "gt": (">", lambda v, b: v > b),
    "ge": (">=", lambda v, b: v >= b),
    "lt": ("<", lambda v, b: v < b),
    "le": ("at most", lambda v, b: v <= b),
}


def key(
    default,
    *choices: str,
    may_change: str = "",
    why: str = "",
    may_change_if=None,
    range_why: str = "",
    **bounds: float,
):
    """A config field with its policy as its metadata (one source for the checks, --help and the reference):
    - choices: the values it may take (loading.from_dict refuses others);
    - may_change: why a resume may set it to another value than its checkpoint's (else it must match: a key
      shapes the run's numbers unless it says otherwise); may_change_if(cfg) lets a must-match key change anyway
      when it holds for the resuming config, `why` saying when; `why` alone says why a key must match;
    - bounds (gt, ge, lt, le): its range, checked by _check_range from the section's __post_init__, and
      range_why: the reason for it, said in the error.
    A list or dict default is copied for each config."""
    assert set(bounds) <= set(BOUNDS), bounds
    metadata = {
        "choices": choices,
        "resume": MAY_CHANGE if may_change else MUST_MATCH,
        "why": may_change or why,
        "may_change_if": may_change_if,
        "range": bounds,
        "range_why": range_why,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def range_text(bounds: dict) -> str:
    """`> 0`, `>= 0, at most 256`, `in [0, 1)`: a range as the error messages and the reference write it."""
    if set(bounds) == {"ge", "lt"}:
        return f"in [{bounds['ge']}, {bounds['lt']})"
    return ", ".join(f"{BOUNDS[k][0]} {v}" for k, v in bounds.items())


def _check_range(section: str, obj) -> None:
    """The ranges in a section's field metadata, run from its __post_init__: `section.key must be > 0, got 0`."""
    for f in dataclasses.fields(obj):
        bounds, value = f.metadata.get("range") or {}, getattr(obj, f.name)
        crossed = {k: b for k, b in bounds.items() if not BOUNDS[k][1](value, b)}
        if crossed:
            # an interval reads better whole
            shown = bounds if set(bounds) == {"ge", "lt"} else crossed
            # A bound of 0 needs no reason; `at most 256 (processes per rank)` does.
            reason = f.metadata.get("range_why") if any(crossed.values()) else ""
            why = f" ({reason})" if reason else ""
            raise ConfigError(f"{section}.{f.name} must be {range_text(shown)}{why}, got {value}")


MAX_WORKERS = 256  # DataLoader worker processes per rank: more would only exhaust the host
# a year; gloo and NCCL hold timeouts in int64 nanoseconds (< 292 years)
MAX_TIMEOUT_S = 365 * 86400
# Why a key may change on resume, said once for the keys that share the reason.
MOVED_DATA = "where the data are read from: they may move; the checkpoint's data fingerprint refuses other arrays"
HOW_COMPUTED = "the memory layout and kernels of the same model, not which model"
CHECKPOINTED = "how the run is checkpointed, not what it computes"
WATCHED = "how the run is watched, not what it computes"
LAUNCHED = "how the run is launched, guarded and stopped, not what it computes"
BEST_TERMS = "the best score and the early-stop patience count a checkpoint holds are in its terms"


@dataclass
class DataConfig:
    name: str = key("mnist")
    """Which dataset: mnist, fashion_mnist, imagefolder (your own images in data.dir: train/<class>/..., test/<class>/...) or hf:OWNER/NAME (a Hugging Face dataset with an image column and a ClassLabel column). The classes, and for the last two the pixel statistics, come from the data."""
    source: str = key("auto", "auto", "hf", "torchvision", "idx", may_change=MOVED_DATA)
    """Where to read it from. auto: idx (if data.dir is set or a known local folder exists), then hf, then torchvision."""
    dir: str | None = key(None, may_change=MOVED_DATA)
    """A folder with the four IDX files (gzipped or not), for offline clusters; also torchvision's download root; for data.name=imagefolder, the folder of images."""
    hf_path: str | None = key(None, may_change=MOVED_DATA)
    """Hugging Face dataset id or local folder for mnist and fashion_mnist; default ylecun/mnist or zalando-datasets/fashion_mnist."""
    image_column: str = key("image")
    """The image column of an hf: dataset."""
    label_column: str = key("label")
    """The label column of an hf: dataset: a ClassLabel, whose names are the classes."""
    val_size: int = key(5000, ge=0)
    """Images carved from the training set (fixed seed) for validation; 0 disables validation."""
    loader: str = key("device", "device", "dataloader")
    """device: each split is one uint8 tensor on the accelerator, batched there. dataloader: torch DataLoader via Accelerate."""
    num_workers: int = key(
        0,
        ge=0,
        le=MAX_WORKERS,
        range_why="processes per rank",
        may_change="how the data are read, not which",
    )
    """DataLoader workers per process (data.loader=dataloader only)."""
    augment: bool = key(True)
    """Random translation by up to augment_shift pixels plus a small rotation/scale, batched on the device; never flips."""
    augment_shift: int = key(2, ge=0, le=14, range_why="half the image")
    """Maximum translation in pixels when augment is on."""

    def __post_init__(self):
        _check_range("data", self)
        named = ("mnist", "fashion_mnist")
        if self.name not in (*named, "imagefolder") and not (
            self.name.startswith("hf:") and len(self.name) > 3
        ):
            raise ConfigError(
                f"data.name: invalid value {self.name!r}; choose one of mnist, fashion_mnist, imagefolder, "
                "hf:OWNER/NAME"
            )
        if self.name not in named and self.source != "auto":
            raise ConfigError(
                f"data.source={self.source} is for mnist and fashion_mnist; data.name={self.name} is read by "
                "HF datasets (leave data.source=auto)"
            )
        if self.name == "imagefolder" and not self.dir:
            raise ConfigError(
                "data.name=imagefolder needs data.dir: a folder with train/<class>/ and test/<class>/ images"
            )


@dataclass
class ModelConfig:
    name: str = key("cnn_fast")
    """A name from mnist_dist.models.MODELS."""
    kwargs: dict = key({})
    """Keyword arguments for the model's constructor (e.g. {width: 48})."""
    channels_last: bool = key(True, may_change=HOW_COMPUTED)
    """Use channels_last memory format (convolutions: +33% images/s on a 2-core CPU with oneDNN, faster on GPUs)."""
    compile: bool = key(False, may_change=HOW_COMPUTED)
    """torch.compile the model (static shapes). Compiling costs tens of seconds, counted in train_seconds, plus
    a recompile per new input shape (epoch's last batch, evaluation): leave it off for runs of a few seconds."""

    def __post_init__(self):
        from mnist_dist import models  # torch: only a config that is built pays for it

        if (problem := models.check(self.name, self.kwargs)) is not None:
            raise ConfigError(f"model.{problem}")


@dataclass
class TrainConfig:
    epochs: int = key(
        16,
        gt=0,
        may_change_if=lambda cfg: cfg.train.scheduler in LENGTH_FREE_SCHEDULERS,
        why="with train.scheduler=none or step, whose shape does not depend on the run's length",
    )
    """Passes over the training split."""
    per_device_batch_size: int = key(
        128,
        gt=0,
        may_change_if=lambda cfg: bool(cfg.train.global_batch_size),
        why="when train.global_batch_size is set: it is then derived from that and the world size",
    )
    """Images per process per optimizer micro-step; global batch = this x world size x grad_accum_steps."""
    global_batch_size: int = key(
        0, ge=0, may_change="0 or the same number: train() checks the effective global batch itself"
    )
    """Images per optimizer step over all processes; when set (> 0), per_device_batch_size is derived from it and
    the world size, and a run can resume on another number of processes. 0: per_device_batch_size decides."""
    lr: float = key(0.005, gt=0)
    """Peak learning rate."""
    optimizer: str = key("adamw", "sgd", "adam", "adamw")
    """sgd (with Nesterov momentum when momentum > 0), adam, or adamw (decoupled weight decay); fused kernels where torch has them."""
    momentum: float = key(0.9, ge=0, lt=1)
    """SGD momentum (sgd only)."""
    weight_decay: float = key(0.0005, ge=0)
    """L2 penalty (adam, sgd) or decoupled decay (adamw)."""
    scheduler: str = key("onecycle", "none", "step", "cosine", "onecycle")
    """Learning-rate schedule, stepped once per optimizer step."""
    step_gamma: float = key(0.7, gt=0, le=1, range_why="a rate that never grows nor turns negative")
    """Multiplier per epoch for scheduler=step."""
    label_smoothing: float = key(0.1, ge=0, lt=1)
    """Cross-entropy label smoothing in [0, 1)."""
    grad_accum_steps: int = key(1, gt=0)
    """Micro-batches per optimizer step."""
    grad_clip: float = key(0.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables."""
    mixed_precision: str = key("auto", "auto", "no", "bf16", "fp16")
    """auto: bf16 or fp16 where the launch asks for it (accelerate launch --mixed_precision or its YAML); else bf16
    autocast on a CPU with native bf16 (avx512_bf16, AMX) and no (fp32) elsewhere. A launch's `no` is also
    accelerate's default, so it does not count: say no here for fp32. The start-up line and summary.json say which
    ran and why."""
    device: str = key(
        "auto", "auto", "cpu", "cuda", "mps", may_change="where the run computes, not what"
    )
    """auto picks CUDA, then MPS, then CPU; naming one that is missing is an error."""
    seed: int = key(0, ge=0)
    """Initial weights, data order and augmentation all follow from it: the same seed, the same run (0 <= seed < 2^63)."""
    eval_batch_size: int = key(
        256, gt=0, may_change="evaluation only: the same sums in other chunks"
    )
    """Images per process per evaluation forward pass."""
    log_every_steps: int = key(50, gt=0, may_change="how often the loss is watched, not what it is")
    """How often the (globally reduced) training loss is computed and logged: a host-device sync point."""
    max_steps: int = key(0, ge=0, may_change="where the run stops, not the way there")
    """Stop after this many optimizer steps in total (0: no limit). For smoke tests."""
    early_stop_patience: int = key(0, ge=0)
    """Stop after this many evaluations (epoch ends) in a row without an improvement of checkpoint.best_metric
    (0: never stop early). Needs a validation split."""
    early_stop_min_delta: float = key(0.0, ge=0)
    """The least change of checkpoint.best_metric that counts as an improvement (for the best model too)."""
    progress: bool = key(True, may_change="display only")
    """tqdm progress bars (main process only): live on a terminal; into a log file (stderr not a terminal, e.g.
    SLURM) at most one update every 30 s."""

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step over all processes."""
        return global_batch(self.per_device_batch_size, self.grad_accum_steps, world_size)

    def for_world(self, world_size: int) -> TrainConfig:
        """This config with per_device_batch_size derived from global_batch_size for `world_size` processes."""
        if not self.global_batch_size:
            return self
        per_step = world_size * self.grad_accum_steps
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} does not split over {world_size} "
                f"process(es) x {self.grad_accum_steps} accumulation step(s); use a multiple of {per_step}"
            )
        return dataclasses.replace(self, per_device_batch_size=self.global_batch_size // per_step)

    def __post_init__(self):
        _check_range("train", self)


@dataclass
class CheckpointConfig:
    every_steps: int = key(0, ge=0, may_change=CHECKPOINTED)
    """Save the full training state every this many optimizer steps (0: only at epoch ends)."""
    keep: int = key(
        2, ge=2, range_why="so a complete checkpoint always survives", may_change=CHECKPOINTED
    )
    """How many complete checkpoints to keep (at least 2)."""
    resume: str = key("auto", may_change="which checkpoint to continue from")
    """auto: latest complete checkpoint in run.dir, else fresh; never; or a checkpoint path."""
    best_metric: str = key("val_accuracy", "val_accuracy", "val_loss", "none", why=BEST_TERMS)
    """Keep the best model by this validation metric in run.dir/best/ (and stop early by it): the test set never
    chooses. Off without a validation split (data.val_size=0)."""
    best_mode: str = key("auto", "auto", "max", "min", why=BEST_TERMS)
    """Whether larger or smaller is better; auto: max for accuracy, min for loss."""

    def better(self, value: float, best: float | None, min_delta: float) -> bool:
        """value beats best by more than min_delta in this metric's direction."""
        auto_max = self.best_mode == "auto" and not self.best_metric.endswith("loss")
        larger = self.best_mode == "max" or auto_max
        return best is None or (value - best if larger else best - value) > min_delta

    def __post_init__(self):
        _check_range("checkpoint", self)


@dataclass
class TrackingConfig:
    backend: str = key("none", "wandb", "tensorboard", "none", may_change=WATCHED)
    """Where metrics, pictures and models go: W&B, TensorBoard (run.dir/tensorboard/), or nowhere but the run folder."""
    project: str = key("mnist-dist", may_change=WATCHED)
    """W&B project."""
    entity: str | None = key(None, may_change=WATCHED)
    """W&B entity (user or team); default: the one wandb is logged in as."""
    run_name: str | None = key(None, may_change=WATCHED)
    """W&B run name; default: W&B's own."""
    tags: list = key([], may_change=WATCHED)
    """W&B tags, e.g. [baseline, cpu]."""
    group: str | None = key(None, may_change=WATCHED)
    """W&B group; defaults to the SLURM job id (an array's parent), else torchrun's run id; `mnist-dist sweep`
    sets it to the sweep folder's name."""
    log_model: bool = key(False, may_change=WATCHED)
    """Upload the final model (aliases latest, final) and the best one (alias best) as W&B artifacts at the end."""
    init_kwargs: dict = key({}, may_change=WATCHED)
    """More wandb.init arguments, merged over ours, e.g. {notes: baseline, job_type: ablation, settings:
    {console: off}}. Not id, resume, dir or config: the run folder and its resume own those."""

    def __post_init__(self):
        if owned := sorted(set(self.init_kwargs) & {"id", "resume", "dir", "config"}):
            raise ConfigError(
                f"tracking.init_kwargs may not set {', '.join(owned)}: the run folder decides them "
                f"(a resume continues the run's own W&B id)"
            )


@dataclass
class RunConfig:
    dir: str = key("runs/default", may_change=LAUNCHED)
    """The run folder: config, metrics, checkpoints, model, pictures."""
    preempt_signals: list = key(["SIGUSR1", "SIGTERM"], may_change=LAUNCHED)
    """Signals that make every rank checkpoint at the next step boundary and exit (then requeue under SLURM)."""
    requeue: bool = key(True, may_change=LAUNCHED)
    """After a preemption checkpoint under SLURM, requeue the job with scontrol."""
    guard_every_steps: int = key(1, gt=0, may_change=LAUNCHED)
    """How often ranks agree on stopping (preemption signal, non-finite loss): a host-device sync point.
    Raise it on GPUs for speed; a NaN is then caught only at these steps."""
    dist_timeout_s: int = key(180, gt=0, le=MAX_TIMEOUT_S, range_why="a year", may_change=LAUNCHED)
    """Process-group timeout: how long ranks wait in a collective for a rank that died or hangs."""

    def __post_init__(self):
        _check_range("run", self)
        if not self.dir.strip():
            raise ConfigError(
                "run.dir must not be empty: name the run folder, e.g. run.dir=runs/first"
            )
        for name in self.preempt_signals:
            if not isinstance(name, str) or not hasattr(signal, name):
                raise ConfigError(
                    f"run.preempt_signals: unknown signal {name!r} (e.g. SIGUSR1, SIGTERM)"
                )
            if name in ("SIGKILL", "SIGSTOP"):
                raise ConfigError(
                    f"run.preempt_signals: {name} cannot be caught, so it cannot trigger a checkpoint; "
                    f"use SIGUSR1 or SIGTERM"
                )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        no_val = self.data.val_size == 0 or self.checkpoint.best_metric == "none"
        if self.train.early_stop_patience and no_val:
            raise ConfigError(
                "train.early_stop_patience needs a validation metric to watch: data.val_size > 0 and "
                "checkpoint.best_metric=val_accuracy or val_loss (the test set never decides)"
            )


def global_batch(per_device_batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    """Images per optimizer step over all processes: the one formula, for this run's config and a checkpoint's."""
    return per_device_batch_size * grad_accum_steps * world_size
