"""One typed config tree: defaults < YAML file < dotted `a.b=value` overrides.

Unknown keys, wrong types and impossible values raise ConfigError before any work starts: types are checked
while building (from_dict), ranges by each section's __post_init__. Each field's policy (choices, range, whether
a resume may change it) stands in its own metadata (rules()); --help and docs/configuration.md are generated from it.
The world size is not part of the config: it comes from the launcher.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import signal
import textwrap
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mnist_dist.errors import UserError


class ConfigError(UserError, ValueError):
    """A mistake in the user's config; the CLI prints it as one line."""


INT64_LIMIT = 2**63


# Whether a resumed run may set a key to another value than its checkpoint's config (resume_conflicts).
MAY_CHANGE, MUST_MATCH = "may change", "must match"
# Schedules whose shape does not depend on the run's length: with these, train.epochs may grow on resume.
LENGTH_FREE_SCHEDULERS = ("none", "step")


def rules(
    *choices: str,
    resume: str = MUST_MATCH,
    why: str = "",
    may_change_if=None,
    gt=None,
    ge=None,
    lt=None,
    le=None,
    range_why: str = "",
) -> dict:
    """A field's policy, written beside the field as its metadata (one source for the checks, --help and
    docs/configuration.md):
    - choices: the values it may take (from_dict refuses others);
    - resume: MUST_MATCH (the default: a key shapes the run's numbers unless it says otherwise) or MAY_CHANGE,
      with why; may_change_if(cfg) lets a must-match key change anyway when it holds for the resuming config;
    - gt, ge, lt, le: its range, checked by _check_range from the section's __post_init__, and range_why: the
      reason for it, said in the error."""
    assert resume in (MAY_CHANGE, MUST_MATCH), resume
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return {
        "choices": choices,
        "resume": resume,
        "why": why,
        "may_change_if": may_change_if,
        "range": bounds,
        "range_why": range_why,
    }


BOUNDS = {
    "gt": (">", lambda v, b: v > b),
    "ge": (">=", lambda v, b: v >= b),
    "lt": ("<", lambda v, b: v < b),
    "le": ("at most", lambda v, b: v <= b),
}


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
            why = (
                f" ({f.metadata['range_why']})"
                if f.metadata.get("range_why") and any(crossed.values())
                else ""
            )
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
    name: str = field(default="mnist", metadata=rules("mnist", "fashion_mnist"))
    """Which dataset: MNIST or its drop-in sibling Fashion-MNIST."""
    source: str = field(
        default="auto",
        metadata=rules("auto", "hf", "torchvision", "idx", resume=MAY_CHANGE, why=MOVED_DATA),
    )
    """Where to read it from. auto: idx (if data.dir is set or a known local folder exists), then hf, then torchvision."""
    dir: str | None = field(default=None, metadata=rules(resume=MAY_CHANGE, why=MOVED_DATA))
    """A folder with the four IDX files (gzipped or not), for offline clusters; also torchvision's download root."""
    hf_path: str | None = field(default=None, metadata=rules(resume=MAY_CHANGE, why=MOVED_DATA))
    """Hugging Face dataset id or local folder; default ylecun/mnist or zalando-datasets/fashion_mnist."""
    val_size: int = field(default=5000, metadata=rules(ge=0))
    """Images carved from the training set (fixed seed) for validation; 0 disables validation."""
    loader: str = field(default="device", metadata=rules("device", "dataloader"))
    """device: each split is one uint8 tensor on the accelerator, batched there. dataloader: torch DataLoader via Accelerate."""
    num_workers: int = field(
        default=0,
        metadata=rules(
            ge=0,
            le=MAX_WORKERS,
            range_why="processes per rank",
            resume=MAY_CHANGE,
            why="how the data are read, not which",
        ),
    )
    """DataLoader workers per process (data.loader=dataloader only)."""
    augment: bool = True
    """Random translation by up to augment_shift pixels plus a small rotation/scale, batched on the device; never flips."""
    augment_shift: int = field(default=2, metadata=rules(ge=0))
    """Maximum translation in pixels when augment is on."""
    cache: bool = field(
        default=True, metadata=rules(resume=MAY_CHANGE, why="the same bytes, decoded again or not")
    )
    """Keep gzipped IDX files decompressed in $MNIST_DIST_CACHE (default ~/.cache/mnist-dist): later runs skip the
    ~0.4 s decode. Keyed on each file's path, size, mtime, ctime and inode; every read checks the entry's length (against
    its header and the source's gzip trailer) and CRC-32 (a corrupt entry is refused and rebuilt)."""

    def __post_init__(self):
        _check_range("data", self)


@dataclass
class ModelConfig:
    name: str = "cnn_fast"
    """A name from mnist_dist.models.MODELS."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the model's constructor (e.g. {width: 48})."""
    channels_last: bool = field(default=True, metadata=rules(resume=MAY_CHANGE, why=HOW_COMPUTED))
    """Use channels_last memory format (convolutions: +33% images/s on a 2-core CPU with oneDNN, faster on GPUs)."""
    compile: bool = field(default=False, metadata=rules(resume=MAY_CHANGE, why=HOW_COMPUTED))
    """torch.compile the model (static shapes). Compiling costs tens of seconds, counted in train_seconds, plus
    a recompile per new input shape (epoch's last batch, evaluation): leave it off for runs of a few seconds."""

    def __post_init__(self):
        # models imports torch: only a config that is built pays for it
        from mnist_dist.models import (
            MODELS,
        )

        if self.name not in MODELS:
            raise ConfigError(
                f"model.name: unknown model {self.name!r}; choose one of {', '.join(sorted(MODELS))}"
            )
        try:
            inspect.signature(MODELS[self.name]).bind(**self.kwargs)
        except TypeError as e:
            params = ", ".join(inspect.signature(MODELS[self.name]).parameters) or "none"
            raise ConfigError(
                f"model.kwargs {self.kwargs} do not fit {self.name} ({e}); its arguments: {params}"
            ) from None
        # Values the signature admits but the layers do not (width -1, dropout 2.0): build it once, on the meta
        # device (no memory, no init work) and without touching the global RNG the run seeds later.
        import torch

        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                MODELS[self.name](**self.kwargs)
        except Exception as e:
            raise ConfigError(
                f"model.kwargs {self.kwargs} cannot build {self.name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''})"
            ) from None


@dataclass
class TrainConfig:
    epochs: int = field(
        default=16,
        metadata=rules(
            gt=0,
            may_change_if=lambda cfg: cfg.train.scheduler in LENGTH_FREE_SCHEDULERS,
            why="with train.scheduler=none or step, whose shape does not depend on the run's length",
        ),
    )
    """Passes over the training split."""
    per_device_batch_size: int = field(
        default=128,
        metadata=rules(
            gt=0,
            may_change_if=lambda cfg: bool(cfg.train.global_batch_size),
            why="when train.global_batch_size is set: it is then derived from that and the world size",
        ),
    )
    """Images per process per optimizer micro-step; global batch = this x world size x grad_accum_steps."""
    global_batch_size: int = field(
        default=0,
        metadata=rules(
            ge=0,
            resume=MAY_CHANGE,
            why="0 or the same number: train() checks the effective global batch itself",
        ),
    )
    """Images per optimizer step over all processes; when set (> 0), per_device_batch_size is derived from it and
    the world size, and a run can resume on another number of processes. 0: per_device_batch_size decides."""
    lr: float = field(default=0.005, metadata=rules(gt=0))
    """Peak learning rate."""
    optimizer: str = field(default="adamw", metadata=rules("sgd", "adam", "adamw"))
    """sgd (with Nesterov momentum when momentum > 0), adam, or adamw (decoupled weight decay); fused kernels where torch has them."""
    momentum: float = field(default=0.9, metadata=rules(ge=0))
    """SGD momentum (sgd only)."""
    weight_decay: float = field(default=0.0005, metadata=rules(ge=0))
    """L2 penalty (adam, sgd) or decoupled decay (adamw)."""
    scheduler: str = field(default="onecycle", metadata=rules("none", "step", "cosine", "onecycle"))
    """Learning-rate schedule, stepped once per optimizer step."""
    step_gamma: float = 0.7
    """Multiplier per epoch for scheduler=step."""
    label_smoothing: float = field(default=0.1, metadata=rules(ge=0, lt=1))
    """Cross-entropy label smoothing in [0, 1)."""
    grad_accum_steps: int = field(default=1, metadata=rules(gt=0))
    """Micro-batches per optimizer step."""
    grad_clip: float = field(default=0.0, metadata=rules(ge=0))
    """Clip the global gradient norm to this value; 0 disables."""
    mixed_precision: str = field(default="auto", metadata=rules("auto", "no", "bf16", "fp16"))
    """auto: what the launch says (accelerate launch --mixed_precision or its YAML); without one, bf16 autocast on
    a CPU with native bf16 (avx512_bf16, AMX) and no (fp32) elsewhere. The start-up line and summary.json say
    which ran and why."""
    device: str = field(
        default="auto",
        metadata=rules(
            "auto", "cpu", "cuda", "mps", resume=MAY_CHANGE, why="where the run computes, not what"
        ),
    )
    """auto picks CUDA, then MPS, then CPU; naming one that is missing is an error."""
    seed: int = field(default=0, metadata=rules(ge=0))
    """Initial weights, data order and augmentation all follow from it: the same seed, the same run (0 <= seed < 2^63)."""
    eval_batch_size: int = field(
        default=256,
        metadata=rules(
            gt=0, resume=MAY_CHANGE, why="evaluation only: the same sums in other chunks"
        ),
    )
    """Images per process per evaluation forward pass."""
    log_every_steps: int = field(
        default=50,
        metadata=rules(
            gt=0, resume=MAY_CHANGE, why="how often the loss is watched, not what it is"
        ),
    )
    """How often the (globally reduced) training loss is computed and logged: a host-device sync point."""
    max_steps: int = field(
        default=0,
        metadata=rules(ge=0, resume=MAY_CHANGE, why="where the run stops, not the way there"),
    )
    """Stop after this many optimizer steps in total (0: no limit). For smoke tests."""
    early_stop_patience: int = field(default=0, metadata=rules(ge=0))
    """Stop after this many evaluations (epoch ends) in a row without an improvement of checkpoint.best_metric
    (0: never stop early). Needs a validation split."""
    early_stop_min_delta: float = field(default=0.0, metadata=rules(ge=0))
    """The least change of checkpoint.best_metric that counts as an improvement (for the best model too)."""
    progress: bool = field(default=True, metadata=rules(resume=MAY_CHANGE, why="display only"))
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
    every_steps: int = field(default=0, metadata=rules(ge=0, resume=MAY_CHANGE, why=CHECKPOINTED))
    """Save the full training state every this many optimizer steps (0: only at epoch ends)."""
    keep: int = field(
        default=2,
        metadata=rules(
            ge=2,
            range_why="so a complete checkpoint always survives",
            resume=MAY_CHANGE,
            why=CHECKPOINTED,
        ),
    )
    """How many complete checkpoints to keep (at least 2)."""
    resume: str = field(
        default="auto", metadata=rules(resume=MAY_CHANGE, why="which checkpoint to continue from")
    )
    """auto: latest complete checkpoint in run.dir, else fresh; never; or a checkpoint path."""
    best_metric: str = field(
        default="val_accuracy", metadata=rules("val_accuracy", "val_loss", "none", why=BEST_TERMS)
    )
    """Keep the best model by this validation metric in run.dir/best/ (and stop early by it): the test set never
    chooses. Off without a validation split (data.val_size=0)."""
    best_mode: str = field(default="auto", metadata=rules("auto", "max", "min", why=BEST_TERMS))
    """Whether larger or smaller is better; auto: max for accuracy, min for loss."""

    def better(self, value: float, best: float | None, min_delta: float) -> bool:
        """value beats best by more than min_delta in this metric's direction."""
        larger = self.best_mode == "max" or (
            self.best_mode == "auto" and not self.best_metric.endswith("loss")
        )
        return best is None or (value - best if larger else best - value) > min_delta

    def __post_init__(self):
        _check_range("checkpoint", self)


@dataclass
class TrackingConfig:
    backend: str = field(
        default="none",
        metadata=rules("wandb", "tensorboard", "none", resume=MAY_CHANGE, why=WATCHED),
    )
    """Where metrics, pictures and models go: W&B, TensorBoard (run.dir/tensorboard/), or nowhere but the run folder."""
    project: str = field(default="mnist-dist", metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """W&B project."""
    entity: str | None = field(default=None, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """W&B entity (user or team); default: the one wandb is logged in as."""
    run_name: str | None = field(default=None, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """W&B run name; default: W&B's own."""
    tags: list = field(default_factory=list, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """W&B tags, e.g. [baseline, cpu]."""
    group: str | None = field(default=None, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """W&B group; defaults to the SLURM job id (an array's parent), else torchrun's run id; `mnist-dist sweep`
    sets it to the sweep folder's name."""
    log_model: bool = field(default=False, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """Upload the final model (aliases latest, final) and the best one (alias best) as W&B artifacts at the end."""
    init_kwargs: dict = field(default_factory=dict, metadata=rules(resume=MAY_CHANGE, why=WATCHED))
    """More wandb.init arguments, merged over ours, e.g. {notes: baseline, job_type: ablation, settings:
    {console: off}}. Not id, resume, dir or config: the run folder and its resume own those."""

    def __post_init__(self):
        owned = sorted(set(self.init_kwargs) & {"id", "resume", "dir", "config"})
        if owned:
            raise ConfigError(
                f"tracking.init_kwargs may not set {', '.join(owned)}: the run folder decides them "
                f"(a resume continues the run's own W&B id)"
            )


@dataclass
class RunConfig:
    dir: str = field(default="runs/default", metadata=rules(resume=MAY_CHANGE, why=LAUNCHED))
    """The run folder: config, metrics, checkpoints, model, pictures."""
    preempt_signals: list = field(
        default_factory=lambda: ["SIGUSR1", "SIGTERM"],
        metadata=rules(resume=MAY_CHANGE, why=LAUNCHED),
    )
    """Signals that make every rank checkpoint at the next step boundary and exit (then requeue under SLURM)."""
    requeue: bool = field(default=True, metadata=rules(resume=MAY_CHANGE, why=LAUNCHED))
    """After a preemption checkpoint under SLURM, requeue the job with scontrol."""
    guard_every_steps: int = field(default=1, metadata=rules(gt=0, resume=MAY_CHANGE, why=LAUNCHED))
    """How often ranks agree on stopping (preemption signal, non-finite loss): a host-device sync point.
    Raise it on GPUs for speed; a NaN is then caught only at these steps."""
    dist_timeout_s: int = field(
        default=180,
        metadata=rules(gt=0, le=MAX_TIMEOUT_S, range_why="a year", resume=MAY_CHANGE, why=LAUNCHED),
    )
    """Process-group timeout: how long ranks wait in a collective for a rank that died or hangs."""
    cpu_allreduce: str = field(
        default="auto",
        metadata=rules("auto", "shared_memory", "gloo", resume=MAY_CHANGE, why=LAUNCHED),
    )
    """How multi-process CPU DDP averages gradients. shared_memory: through a file in /dev/shm (or
    $MNIST_DIST_SHM_DIR) that all ranks map: one x86-64 host (mnist_dist/shm_allreduce.py). gloo: the process
    group's all-reduce over TCP. auto: shared_memory where it works, else gloo. Ignored on GPUs and in a single
    process."""

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
        if self.train.early_stop_patience and (
            self.data.val_size == 0 or self.checkpoint.best_metric == "none"
        ):
            raise ConfigError(
                "train.early_stop_patience needs a validation metric to watch: data.val_size > 0 and "
                "checkpoint.best_metric=val_accuracy or val_loss (the test set never decides)"
            )


# ----------------------------------------------------------------------------- views


def global_batch(per_device_batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    """Images per optimizer step over all processes: the one formula, for this run's config and a checkpoint's."""
    return per_device_batch_size * grad_accum_steps * world_size


def flatten(tree: Config | dict, prefix: str = "") -> dict:
    """{"train.lr": 0.003, "model.kwargs": {...}, ...} from a Config or its dict (as saved in a checkpoint): one
    entry per field; a dict-valued field (model.kwargs, tracking.init_kwargs) is one value, not more keys."""
    tree = to_dict(tree) if dataclasses.is_dataclass(tree) else tree
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not prefix:  # only the top level holds sections
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def field_metadata() -> dict:
    """{"train.lr": that field's metadata (see rules()), ...} for every key."""
    sections = typing.get_type_hints(Config)
    return {
        f"{s.name}.{f.name}": f.metadata
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(sections[s.name])
    }


def may_change_on_resume(key: str, cfg: Config) -> bool:
    """The policy in the key's own metadata: MAY_CHANGE, or MUST_MATCH unless its may_change_if holds for cfg."""
    rule = field_metadata()[key]
    if rule.get("resume", MUST_MATCH) == MAY_CHANGE:
        return True
    return bool(rule.get("may_change_if") and rule["may_change_if"](cfg))


def resume_conflicts(saved: dict, cfg: Config) -> list[str]:
    """'key old -> new' for every key that differs between a checkpoint's config and this one although its
    metadata says it must match on resume (it shapes the run's numbers)."""
    old, new = flatten(saved), flatten(cfg)
    return [
        f"{key} {old[key]!r} -> {value!r}"
        for key, value in new.items()
        if key in old and old[key] != value and not may_change_on_resume(key, cfg)
    ]


# ----------------------------------------------------------------------------- building from dicts


def _coerce(key: str, value, tp, rules):
    """Check (and gently convert) one leaf value against its annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if value is None and tp in (dict, list):  # `model.kwargs=null` clears a recipe's kwargs
        return tp()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if (
            not -INT64_LIMIT <= value < INT64_LIMIT
        ):  # torch, numpy and safetensors metadata hold int64
            raise ConfigError(f"{key} must be below 2^63 in size, got {value}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    elif tp is str:
        if not isinstance(value, str):
            # YAML turns `no` into False; mixed_precision=no is common enough to accept.
            if value is False and "no" in rules.get("choices", ()):
                value = "no"
            else:
                raise ConfigError(f"{key} must be a string, got {value!r}")
    elif tp in (list, dict) or typing.get_origin(tp) in (list, dict):
        base = typing.get_origin(tp) or tp
        if not isinstance(value, base):
            raise ConfigError(f"{key} must be a {base.__name__}, got {value!r}")
    choices = rules.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: invalid value {value!r}; choose one of {', '.join(choices)}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        if name not in fields:
            close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} Valid keys here: {', '.join(fields)} "
                f"(all keys: mnist-dist train --help)"
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, key + ".")
        else:
            kwargs[name] = _coerce(key, value, tp, fields[name].metadata)
    return cls(**kwargs)  # each section's __post_init__ checks its own values


def merge(base: dict, override: dict) -> dict:
    """Nested dicts merge key by key; any other value, and an empty dict (`model.kwargs={}` clears), replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = (
            merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
        )
    return out


def parse_override(text: str) -> dict:
    """`train.lr=0.01` -> {"train": {"lr": 0.01}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
            f"quote it for the shell, e.g. '{key}={{width: 8}}'"
        ) from None
    if isinstance(value, str) or value is None:
        value = raw if raw not in ("null", "~") else None
    parts = key.strip().split(".")
    out: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """path: a YAML file, or the name of a recipe (`fast_fashion`, see `mnist-dist recipes`)."""
    data: dict = {}
    if path is not None:
        path = recipe_path(str(path))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: must be a mapping of sections (data, model, train, checkpoint, tracking, "
                f"run), got {type(data).__name__} {str(data)[:60]!r}"
            )
    sections = typing.get_type_hints(Config)
    for text in overrides:
        override = parse_override(text)
        ((key, value),) = override.items()
        if key in sections and not (isinstance(value, dict) and value):
            # `train=`, `data={}`: merged, it would silently put a whole recipe section back to its defaults.
            example = dataclasses.fields(sections[key])[0].name
            raise ConfigError(
                f"override {text!r}: {key} is a whole section, and this would put every {key} key back "
                f"to its default; set its keys one by one (e.g. {key}.{example}=...), or leave out "
                f"--config to start from the defaults"
            )
        data = merge(data, override)
    return from_dict(Config, data)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- recipes and self-description


def recipe_dirs() -> list[Path]:
    """Where recipes live: inside the installed package (the wheel ships configs/ as mnist_dist/configs), or the
    checkout's configs/ beside the package (a development install)."""
    here = Path(__file__).resolve().parent
    return [
        d for d in (here / "configs" / "train", here.parent / "configs" / "train") if d.is_dir()
    ]


def recipes() -> dict[str, Path]:
    found = {}
    for folder in reversed(recipe_dirs()):
        found.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return dict(sorted(found.items()))


def recipe_summary(path: Path) -> str:
    """The recipe's first comment line."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def recipe_path(name: str) -> Path:
    """A YAML file, or a recipe by name (`debug`, `fast_fashion.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    known = recipes()
    if path.stem in known and len(path.parts) == 1:
        return known[path.stem]
    close = difflib.get_close_matches(path.stem, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"config file not found: {name} ({hint}recipes: {', '.join(known) or 'none installed'})"
    )


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a config dataclass, read from its source (one place only)."""
    class_def = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(class_def, ast.ClassDef)
    body = class_def.body
    return {
        node.target.id: " ".join(doc.value.value.split())
        for node, doc in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(a.__name__ for a in args) + (
            " or null" if type(None) in typing.get_args(tp) else ""
        )
    return getattr(tp, "__name__", str(tp))


def resume_text(rule, why: bool = True) -> str:
    """`must match`, `may change (why)`, `must match; may change with ...`: a key's resume policy in words."""
    policy = rule.get("resume", MUST_MATCH)
    if rule.get("may_change_if"):
        return f"{policy}; may change {rule['why']}"
    return f"{policy} ({rule['why']})" if why and rule.get("why") else policy


def describe() -> list[dict]:
    """Every config key: its type, default, choices, range, resume policy and docstring, generated from the
    dataclasses (their field docstrings and rules()): what `train --help` and docs/configuration.md show."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            choices = f.metadata.get("choices")
            if (section.name, f.name) == ("model", "name"):
                from mnist_dist.models import MODELS

                choices = tuple(sorted(MODELS))
            rows.append(
                {
                    "key": f"{section.name}.{f.name}",
                    "type": _type_name(hints[f.name]),
                    "default": default,
                    "default_text": yaml.safe_dump(default, default_flow_style=True)
                    .strip()
                    .removesuffix("...")
                    .strip(),
                    "choices": choices,
                    "range": range_text(f.metadata.get("range") or {}),
                    "resume": f.metadata.get("resume", MUST_MATCH),
                    "resume_text": resume_text(f.metadata, why=False),
                    "resume_why": resume_text(f.metadata),
                    "doc": docs.get(f.name, ""),
                }
            )
    return rows


def all_keys() -> list[str]:
    return [row["key"] for row in describe()]


def help_text(width: int = 100) -> str:
    """The config keys, for `mnist-dist train --help`."""
    lines = ["config keys (defaults < --config YAML or recipe < key=value overrides):"]
    for row in describe():
        choices = f": {' | '.join(row['choices'])}" if row["choices"] else ""
        lines.append(f"  {row['key']} = {row['default_text']}   ({row['type']}{choices})")
        policy = "; ".join(
            ([f"range {row['range']}"] if row["range"] else [])
            + [f"on resume: {row['resume_text']}"]
        )
        lines += textwrap.wrap(
            f"{row['doc']} [{policy}]",
            width,
            initial_indent="      ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def reference() -> str:
    """docs/configuration.md: every key as `train --help` lists it (describe()), as a Markdown page."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from mnist_dist/config.py by `python -m mnist_dist.config --reference > "
        "docs/configuration.md`: edit the field docstrings and rules() there, not this page "
        "(tests/integration/test_docs.py checks it). -->",
        "",
        "Every config key, with its type, default, allowed values, range, what a resume may do with it, and the "
        "docstring written under its field in `mnist_dist/config.py`; `mnist-dist train --help` prints the "
        "same rows. Values merge as defaults < `--config` YAML or recipe < `key=value` overrides.",
        "",
        "**On resume:** a key that *must match* shapes the run's numbers, so a resume that changes it is "
        "refused in one line naming the old and new value; one that *may change* is honoured, and the run "
        "folder's `config.yaml` records the new value (see [Resuming](resuming.md)).",
        "",
    ]
    rows = describe()
    out += [
        "## What a resume may change",
        "",
        "May change: "
        + ", ".join(f"`{r['key']}`" for r in rows if r["resume"] == MAY_CHANGE)
        + ".",
        "",
        "Must match, with a condition under which it may change: "
        + "; ".join(
            f"`{r['key']}` ({r['resume_why'].split('; ', 1)[1]})"
            for r in rows
            if ";" in r["resume_text"]
        )
        + ".",
        "",
        "Every other key must match.",
        "",
    ]
    section = None
    for row in rows:
        if row["key"].split(".")[0] != section:
            section = row["key"].split(".")[0]
            out += [f"## {section}", ""]
        facts = [f"`{row['type']}`", f"default `{row['default_text']}`"]
        if row["choices"]:
            facts.append("one of " + ", ".join(f"`{c}`" for c in row["choices"]))
        if row["range"]:
            facts.append(f"range {row['range']}")
        facts.append(f"on resume: {row['resume_why']}")
        out += [f"### `{row['key']}`", "", " · ".join(facts), ""] + (
            [row["doc"], ""] if row["doc"] else []
        )
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # python -m mnist_dist.config --reference > docs/configuration.md
    import sys

    # the package's module, not a second copy of this one as __main__
    from mnist_dist.config import (
        reference,
    )

    if sys.argv[1:] != ["--reference"]:
        sys.exit("usage: python -m mnist_dist.config --reference > docs/configuration.md")
    sys.stdout.write(reference())
