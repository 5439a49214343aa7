"""`mnist-dist train`: the training loop. Reads top to bottom: set-up, resume, epochs of train_step, the end.

The Accelerator (built by runtime.make_accelerator) does the distribution: prepare, backward, no_sync and the
reductions; this module calls it and never talks to torch.distributed itself. Quantities are per-process unless
named global_*.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from mnist_dist import (
    artifact,
    atomic,
    checkpoint,
    config,
    data,
    eager,
    inference,
    lock,
    models,
    procs,
    provenance,
    run_report,
    rundir,
    runtime,
    stopping,
    tracking,
)
from mnist_dist.checkpoint import TrainState
from mnist_dist.errors import UserError
from mnist_dist.inference import Predictions

if TYPE_CHECKING:
    from accelerate import Accelerator


class NonFiniteLoss(UserError):
    pass


class Stop(enum.Enum):
    """Why train_one_epoch returned before the end of its epoch."""

    PREEMPTED = "preempted"  # a preemption signal reached some rank: checkpoint, exit 75, requeue
    MAX_STEPS = "max_steps"  # train.max_steps reached: evaluate and finish
    NON_FINITE = "non_finite"  # some rank saw a NaN/inf loss; the step was not applied


# ----------------------------------------------------------------------------- set-up


def make_optimizer(cfg: config.TrainConfig, params):
    """The fused kernel where this torch has one for the device: on a CPU the default is a per-tensor loop
    (AdamW ~4x slower per step, ~8% of a small CPU step), on a GPU fewer kernel launches (the step is host-bound,
    bench/README.md)."""
    params = list(params)
    cls: type[torch.optim.SGD | torch.optim.Adam | torch.optim.AdamW]
    kwargs: dict[str, Any]
    # eager: torch.optim's classes without their torch._dynamo import (~1.5 s of start-up), the same numbers.
    if cfg.optimizer == "sgd":
        cls, kwargs = eager.SGD, {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}
    else:
        cls, kwargs = (eager.Adam if cfg.optimizer == "adam" else eager.AdamW), {}
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # older torch: fused kernels for CUDA only, or none for SGD
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def make_scheduler(cfg: config.TrainConfig, optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=steps_per_epoch, gamma=cfg.step_gamma
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def make_loader(cfg: config.Config, split: data.Split, accelerator: Accelerator):
    train_cfg = cfg.train
    if cfg.data.loader == "device":
        return data.DeviceLoader(
            split,
            train_cfg.per_device_batch_size,
            train_cfg.grad_accum_steps,
            accelerator.process_index,
            accelerator.num_processes,
            train_cfg.seed,
            accelerator.device,
        )
    return data.TorchLoader(
        split,
        train_cfg.per_device_batch_size,
        train_cfg.grad_accum_steps,
        train_cfg.seed,
        cfg.data.num_workers,
        accelerator.prepare_data_loader,
    )


class LossWindow:
    """Training loss and accuracy since the last log: per-rank sums on the device (no host waits while
    training), folded into the global host totals of TrainState at log time and before a checkpoint, so a
    resumed run reports the same numbers as an uninterrupted one."""

    def __init__(self, device):
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, images

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums[0] += loss_sum.double()
        self.sums[1] += correct.double()
        self.sums[2] += n

    def fold(self, accelerator: Accelerator, state: TrainState) -> None:
        """Sync point: add every rank's pending sums to the state's global window."""
        loss_sum, correct, count = accelerator.reduce(self.sums.clone(), "sum").tolist()
        state.window_loss_sum += loss_sum
        state.window_correct += correct
        state.window_count += count
        self.sums.zero_()

    def drain(self, accelerator: Accelerator, state: TrainState) -> tuple[float | None, float]:
        """(global mean loss, images) since the last drain; updates the state's last_train_loss/accuracy."""
        self.fold(accelerator, state)
        images = state.window_count
        if images:
            state.last_train_loss = state.window_loss_sum / images
            state.last_train_accuracy = state.window_correct / images
        state.window_loss_sum = state.window_correct = state.window_count = 0.0
        return state.last_train_loss, images


@dataclasses.dataclass
class Loop:
    """What train() builds once and every step uses."""

    cfg: config.Config
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed), maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: data.DeviceLoader | data.TorchLoader
    mean: float  # the dataset's pixel statistics, for normalising on the device
    std: float
    flags: stopping.StopFlags
    window: LossWindow
    aug_gen: torch.Generator  # augmentation's own generator, seeded per step
    first_step_unix: float | None = (
        None  # when this process's first optimizer step ended (start-up, bench/run.py)
    )
    # data.fingerprint: saved in each checkpoint
    data_fingerprint: dict = dataclasses.field(default_factory=dict)


def build_loop(
    cfg: config.Config, accelerator: Accelerator, split: data.Split, flags: stopping.StopFlags
) -> tuple[Loop, int, str]:
    """The loop's parts prepared by Accelerate, the parameter count and which all-reduce averages gradients."""
    loader = make_loader(cfg, split, accelerator)
    # identical initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.train.seed)
    model = models.build(cfg.model.name, **cfg.model.kwargs)
    n_params = models.num_parameters(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.train, model.parameters())
    scheduler = make_scheduler(cfg.train, optimizer, len(loader))
    model, optimizer, scheduler = runtime.prepare(accelerator, model, optimizer, scheduler)
    allreduce = runtime.attach_cpu_allreduce(cfg.run, accelerator, model)
    if cfg.model.compile:
        # dynamic=False: one static graph per input shape (full batch, the epoch's shorter last batch, evaluation)
        # rather than a dynamic-shape recompile at the first epoch end. Each compile costs seconds of train_seconds.
        # an OptimizedModule: still a Module
        model = cast(torch.nn.Module, torch.compile(model, dynamic=False))
    mean, std = data.STATS[cfg.data.name]
    aug_gen = torch.Generator(
        device=accelerator.device if accelerator.device.type != "mps" else "cpu"
    )
    loop = Loop(
        cfg,
        accelerator,
        model,
        optimizer,
        scheduler,
        loader,
        mean,
        std,
        flags,
        LossWindow(accelerator.device),
        aug_gen,
    )
    return loop, n_params, allreduce


# ----------------------------------------------------------------------------- one step, one epoch


def train_step(loop: Loop, state: TrainState, micro_batches: list, scale: float) -> Stop | None:
    """One optimizer step on this rank's micro-batches. Returns NON_FINITE (the step was not applied) or
    PREEMPTED (it was) when the ranks agreed to stop, else None."""
    cfg, accelerator, model = loop.cfg, loop.accelerator, loop.model
    # Randomness depends only on (seed, global step, rank): a resumed run draws exactly the same numbers.
    rank = accelerator.process_index
    torch.manual_seed(data.torch_seed(cfg.train.seed * 1_000_003 + state.global_step * 97 + rank))
    if cfg.data.augment:
        loop.aug_gen.manual_seed(
            data.torch_seed(cfg.train.seed * 7919 + state.global_step * 31 + rank)
        )
    # Ranks only compare non-finite flags at guard steps: other steps skip the flag's device work.
    guard_step = (state.global_step + 1) % cfg.run.guard_every_steps == 0
    non_finite = (
        torch.zeros((), dtype=torch.bool, device=accelerator.device) if guard_step else None
    )
    for i, (xb, yb) in enumerate(micro_batches):
        x = data.normalize(xb.to(accelerator.device, non_blocking=True), loop.mean, loop.std)
        y = yb.to(accelerator.device, non_blocking=True)
        if cfg.data.augment:
            x = data.augment(x, cfg.data.augment_shift, loop.aug_gen)
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Gradients are all-reduced only on the last micro-batch of the step.
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            logits = model(x)
            loss_sum = F.cross_entropy(
                logits.float(), y, reduction="sum", label_smoothing=cfg.train.label_smoothing
            )
            # scale: the step's gradient is the mean over its global samples
            accelerator.backward(loss_sum * scale)
        loop.window.add(loss_sum.detach(), (logits.detach().argmax(1) == y).sum(), len(y))
        state.samples_seen += len(y)
        if guard_step:
            assert non_finite is not None  # made above at every guard step
            non_finite |= ~torch.isfinite(loss_sum.detach())
    # Ranks agree on stopping before the optimizer step, so a NaN never reaches the weights. Every rank takes
    # this branch at the same steps: it holds a collective and a host-device sync.
    preempt = False
    if guard_step:
        assert non_finite is not None
        preempt, bad = loop.flags.agree(accelerator, non_finite)
        if bad:
            loop.optimizer.zero_grad(set_to_none=True)
            return Stop.NON_FINITE
    if cfg.train.grad_clip:
        accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    state.step_in_epoch += 1
    return Stop.PREEMPTED if preempt else None


# A log file (stderr not a terminal: SLURM, nohup) gets a progress line at most this often. tqdm's own 0.1 s left
# a 3-minute run 1,180 carriage-return updates in its log.
PROGRESS_LOG_INTERVAL_S = 30.0


def progress_pacing() -> dict:
    """tqdm arguments: a terminal keeps the live bar; a file gets an update at most every PROGRESS_LOG_INTERVAL_S
    (maxinterval too: tqdm's monitor thread would otherwise force one every 10 s)."""
    if sys.stderr.isatty():
        return {}
    return {"mininterval": PROGRESS_LOG_INTERVAL_S, "maxinterval": PROGRESS_LOG_INTERVAL_S}


def train_one_epoch(loop: Loop, state: TrainState, logger: tracking.MetricLogger) -> Stop | None:
    """The rest of the current epoch (from state.step_in_epoch); at its end the state moves to the next epoch.
    Returns why it stopped early, or None."""
    from tqdm.auto import tqdm

    cfg, accelerator = loop.cfg, loop.accelerator
    steps_per_epoch = len(loop.loader)
    t_log = time.perf_counter()
    with tqdm(
        total=steps_per_epoch,
        initial=state.step_in_epoch,
        desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
        leave=False,
        disable=not (accelerator.is_main_process and cfg.train.progress),
        dynamic_ncols=True,
        **progress_pacing(),
    ) as bar:
        for micro_batches, scale in loop.loader.epoch(state.epoch, state.step_in_epoch):
            if cfg.train.max_steps and state.global_step >= cfg.train.max_steps:
                # a resume at (or lowered below) max_steps trains no further step
                return Stop.MAX_STEPS
            stop = train_step(loop, state, micro_batches, scale)
            if stop is Stop.NON_FINITE:
                return stop
            loop.first_step_unix = loop.first_step_unix or time.time()
            bar.update(1)
            if state.global_step % cfg.train.log_every_steps == 0:
                # Sync point: the global mean loss over every rank's samples since the last log.
                train_loss, images = loop.window.drain(accelerator, state)
                dt = time.perf_counter() - t_log
                logger.log_train(
                    {
                        "train_loss": train_loss,
                        "train_accuracy": state.last_train_accuracy,
                        "lr": loop.scheduler.get_last_lr()[0],
                        "images_per_s": images / dt if dt > 0 else float("nan"),
                        "epoch": state.epoch + state.step_in_epoch / steps_per_epoch,
                    },
                    step=state.global_step,
                )
                # shown with the next paced update
                bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
                t_log = time.perf_counter()
            if cfg.checkpoint.every_steps and state.global_step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(loop, state, logger.tracker.run_id)
            if stop is Stop.PREEMPTED:
                return stop
            if (
                max_steps_reached(cfg, state) and state.step_in_epoch < steps_per_epoch
            ):  # else: the epoch's end
                # the record's train loss covers the steps since the last log
                loop.window.drain(accelerator, state)
                return Stop.MAX_STEPS
        # the epoch's last train loss covers the steps since the last log
        loop.window.drain(loop.accelerator, state)
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    return None


def eval_record(
    loop: Loop, state: TrainState, splits: dict[str, data.Split | None], keep_probs: int
) -> tuple[dict, Predictions | None]:
    """One metrics.jsonl record: the training window's numbers and exact metrics on every split, plus the class
    probabilities of the first `keep_probs` test images (this rank's share) from the same forward pass."""
    steps_per_epoch = len(loop.loader)
    record = {
        "epoch": state.epoch
        if state.step_in_epoch == 0
        else state.epoch + state.step_in_epoch / steps_per_epoch,
        "global_step": state.global_step,
        "train_loss": state.last_train_loss,
        "train_accuracy": state.last_train_accuracy,
    }
    predictions = None
    for name, split in splits.items():
        if split is None:
            continue
        result, probs = inference.exact_metrics(
            loop.accelerator,
            loop.model,
            split,
            loop.mean,
            loop.std,
            loop.cfg.train.eval_batch_size,
            keep_probs if name == "test" else 0,
        )
        record.update({f"{name}_{k}": v for k, v in result.items()})
        if probs is not None:
            predictions = Predictions(split.images[: len(probs)], split.labels[: len(probs)], probs)
    record["train_seconds"] = state.train_seconds
    return record, predictions


def update_best(cfg: config.Config, state: TrainState, record: dict) -> bool:
    """Whether this evaluation is the best so far by checkpoint.best_metric (a validation metric); counts the
    evaluations since the best for early stopping. The record is the same on every rank (reduced metrics), so
    every rank decides the same without a collective."""
    metric = cfg.checkpoint.best_metric
    if record.get(metric) is None:
        return False
    if cfg.checkpoint.better(record[metric], state.best_value, cfg.train.early_stop_min_delta):
        state.best_value, state.best_epoch, state.best_step = (
            record[metric],
            record["epoch"],
            record["global_step"],
        )
        state.evals_since_best = 0
        return True
    state.evals_since_best += 1
    return False


def keep_best_and_count_patience(loop: Loop, state: TrainState, record: dict) -> None:
    """After an evaluation: a new best goes to run.dir/best/ (main process); patience spent sets stopped_early
    (saved in the next checkpoint, so a rerun does not train on) and marks the record."""
    cfg, accelerator = loop.cfg, loop.accelerator
    best_dir = Path(cfg.run.dir) / rundir.BEST
    if update_best(cfg, state, record) and accelerator.is_main_process:
        try:
            save_run_model(loop, best_dir)
        except (
            OSError
        ) as e:  # main process only: the next checkpoint, a collective, stops every rank if need be
            print(
                f"mnist-dist: warning: could not save the best model to {best_dir} ({e})",
                file=sys.stderr,
                flush=True,
            )
    if cfg.train.early_stop_patience and state.evals_since_best >= cfg.train.early_stop_patience:
        state.stopped_early = True
        record["early_stop"] = 1


def max_steps_reached(cfg: config.Config, state: TrainState) -> bool:
    return bool(cfg.train.max_steps) and state.global_step >= cfg.train.max_steps


def test_best_model(
    loop: Loop, state: TrainState, record: dict, test_split: data.Split
) -> dict | None:
    """The best model's test numbers beside the final one's (Lightning's test(ckpt_path="best")): the last record's
    when the best is the final model, else one more exact evaluation of run.dir/best/, read by every rank (the run
    folder is shared, as for checkpoints) into a copy of the model. The state is the same on every rank, so all
    take the same branch."""
    best_file = Path(loop.cfg.run.dir) / rundir.BEST / rundir.MODEL_FILE
    if state.best_step is None:
        return None
    if state.best_step == state.global_step:
        return {"test_accuracy": record["test_accuracy"], "test_loss": record["test_loss"]}
    if not best_file.is_file():  # its save failed (a warning said so)
        return None
    import copy

    from safetensors.torch import load_file

    # the final model is saved after this
    best_model = copy.deepcopy(eager.unwrap_model(loop.accelerator, loop.model))
    # Read on the CPU (safetensors refuses Accelerate's "cpu:0"); load_state_dict copies onto the model's device.
    best_model.load_state_dict(load_file(str(best_file)))
    result, _ = inference.exact_metrics(
        loop.accelerator,
        best_model,
        test_split,
        loop.mean,
        loop.std,
        loop.cfg.train.eval_batch_size,
    )
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"]}


def save_run_model(loop: Loop, folder: Path) -> None:
    """The model as a run folder holds it (model.safetensors + model.json): the final one and run.dir/best/."""
    cfg = loop.cfg
    model = eager.unwrap_model(loop.accelerator, loop.model)
    artifact.save_model(
        folder, model, cfg.model.name, cfg.model.kwargs, cfg.data.name, loop.mean, loop.std
    )


def samples_seen_per_rank(accelerator: Accelerator, state: TrainState) -> list[int]:
    """Every rank's own samples_seen (they differ by a few when a step's samples do not split evenly)."""
    return accelerator.gather(
        torch.tensor([state.samples_seen], device=accelerator.device)
    ).tolist()


def save_checkpoint(loop: Loop, state: TrainState, tracker_run_id: str | None) -> Path:
    """A collective: every rank calls it at the same step."""
    loop.window.fold(loop.accelerator, state)
    state_json = {
        **dataclasses.asdict(state),
        "samples_seen_per_rank": samples_seen_per_rank(loop.accelerator, state),
        "world_size": loop.accelerator.num_processes,
        "tracker_run_id": tracker_run_id,
        "config": config.to_dict(loop.cfg),
        "data": loop.data_fingerprint,
    }
    return checkpoint.save(
        loop.accelerator, Path(loop.cfg.run.dir), state_json, keep=loop.cfg.checkpoint.keep
    )


def resume(
    cfg: config.Config, accelerator: Accelerator, fingerprint: dict, source: str
) -> tuple[TrainState, Path | None, dict]:
    """(state, checkpoint, its state.json) for checkpoint.resume; the prepared objects are loaded in place.
    A fresh run gets (TrainState(), None, {}). With resume=auto a damaged newest checkpoint (a file missing,
    truncated, rewritten, or refused by load_state) is set aside in one line and the next older one is tried.
    A checkpoint trained with another config or on other data is refused before anything is loaded or written."""
    run_dir = Path(cfg.run.dir)
    set_aside = []
    for ckpt in checkpoint.resume_candidates(run_dir, cfg.checkpoint.resume):
        # a collective: every rank takes the same branch
        why = checkpoint.agreed_damage(accelerator, ckpt)
        if why is None:
            state_json = checkpoint.read_state_json(ckpt)
            check_resumable(cfg, accelerator, ckpt, state_json, fingerprint, source)
            # Model, optimizer and scheduler load whatever the world size (DDP keeps them equal on every rank); a
            # rank the checkpoint has no RNG file for is fine: every step reseeds from (seed, step, rank).
            why = checkpoint.load(accelerator, ckpt)  # a collective too
            if why is None:
                return (
                    TrainState.from_state_json(
                        state_json, accelerator.process_index, accelerator.num_processes
                    ),
                    ckpt,
                    state_json,
                )
        if cfg.checkpoint.resume != "auto":  # a folder the user named is not renamed
            raise checkpoint.CheckpointError(
                f"checkpoint.resume={ckpt} is damaged: {why}. Point checkpoint.resume "
                f"at another checkpoint, or use checkpoint.resume=auto or never"
            )
        if accelerator.is_main_process:
            kept = checkpoint.set_aside(ckpt)
            print(
                f"mnist-dist: checkpoint {ckpt.name} is damaged ({why}); set aside as {kept.name}, trying the "
                f"previous one",
                file=sys.stderr,
                flush=True,
            )
        accelerator.wait_for_everyone()
        set_aside.append(ckpt.name)
    if set_aside:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {run_dir / checkpoint.CKPT_DIR} is whole: {', '.join(set_aside)} set aside as "
            f"{checkpoint.DAMAGED_PREFIX}step_*. Run the same command again to start over (the earlier run's files "
            f"are then moved to {run_dir}/previous-*)"
        )
    return TrainState(), None, {}


def check_resumable(
    cfg: config.Config,
    accelerator: Accelerator,
    ckpt: Path,
    state_json: dict,
    fingerprint: dict,
    source: str,
) -> None:
    """Refuse (one line, the same on every rank) a checkpoint this run cannot continue: another global batch,
    another trajectory config, or other data (the data may move; the arrays may not change)."""
    saved_train = state_json.get("config", {}).get("train", {})
    saved_global = config.global_batch(
        saved_train.get("per_device_batch_size", 0),
        saved_train.get("grad_accum_steps", 1),
        state_json["world_size"],
    )
    # Same world, per_device_batch_size given: resume_conflicts lists a change. Otherwise the batch is derived here.
    derived = state_json["world_size"] != accelerator.num_processes or cfg.train.global_batch_size
    if derived and saved_global != cfg.train.global_batch(accelerator.num_processes):
        raise UserError(
            f"{ckpt} was written by {state_json['world_size']} processes with a global batch of "
            f"{saved_global}; with {accelerator.num_processes} this run's is "
            f"{cfg.train.global_batch(accelerator.num_processes)}: set train.global_batch_size="
            f"{saved_global} to resume on this number of processes, or start over with "
            f"checkpoint.resume=never"
        )
    conflicts = config.resume_conflicts(state_json.get("config", {}), cfg)
    if conflicts:
        hint = (
            f"; train.epochs can grow only with train.scheduler={'/'.join(config.LENGTH_FREE_SCHEDULERS)}, "
            f"since the {cfg.train.scheduler} schedule is shaped by the run's length"
            if any(c.startswith("train.epochs ") for c in conflicts)
            else ""
        )
        raise UserError(
            f"{ckpt} was trained with another config: {', '.join(conflicts)}{hint}. Resume "
            f"with the old values, or start over with checkpoint.resume=never or a new run.dir"
        )
    # checkpoints from before fingerprints have none: not checked
    saved = state_json.get("data") or {}
    for name in ("train", "val", "test") if saved else ():
        old, new = saved.get(name) or {}, fingerprint.get(name) or {}
        if old != new:
            raise UserError(
                f"{ckpt} was trained on other data: its {name} split had {old.get('size', 0)} images "
                f"(sha256 {old.get('sha256', '-')[:12]}), {source} gives {new.get('size', 0)} "
                f"(sha256 {new.get('sha256', '-')[:12]}). Resume with the data it was trained on "
                f"(data.dir may move), or start over with checkpoint.resume=never or a new run.dir"
            )


# ----------------------------------------------------------------------------- the run

# endings every rank reaches at the same step, together
RANKS_AGREE = (
    stopping.Preempted,
    NonFiniteLoss,
)


def train(cfg: config.Config) -> int:
    """A training run, and its one way out. What the run opens goes onto `teardown` where it is opened and is
    closed in reverse order, however the run ended: the tracker, the run folder's lock, the requeue of a preempted
    job, the process group, and last the caller's signal handlers (a notebook gets its own back)."""
    try:
        with contextlib.ExitStack() as teardown:
            # First: a signal during start-up is handled at the first step.
            flags = teardown.enter_context(stopping.StopFlags(cfg.run.preempt_signals))
            accelerator = runtime.make_accelerator(cfg)
            teardown.push(end_processes(cfg, accelerator))
            try:
                run_training(cfg, accelerator, flags, teardown)
            except Exception as e:
                if (line := as_one_line(e, cfg, accelerator.process_index)) is None:
                    raise
                raise line from None
            return 0
    except stopping.Preempted as stop:
        return stop.exit_code


def as_one_line(e: Exception, cfg: config.Config, rank: int) -> UserError | None:
    """Another rank's death or a full disk as the one-line error to end with; None for anything else."""
    if (lost := runtime.as_peer_lost(e, rank)) is not None:
        return lost  # the dead rank's own log says why
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return UserError(
            f"no space left on device for {e.filename or cfg.run.dir}; the checkpoints written so far "
            f"are intact: free some space, then run the same command to resume"
        )
    return None


def end_processes(cfg: config.Config, accelerator: Accelerator):
    """The last steps out, after the tracker has flushed and the lock is released: a preempted run asks SLURM to
    requeue it (the requeue ends this job) and keeps torchrun's agent from restarting it on a machine being taken
    away; then the process group is torn down, waiting for the other ranks when all of them end here together."""

    def close(exc_type, exc, tb) -> None:
        if isinstance(exc, stopping.Preempted) and not exc.interrupted:
            if cfg.run.requeue:
                stopping.requeue_slurm_job(accelerator)
            stopping.end_elastic_agent()
        runtime.end_distributed(accelerator, wait=exc is None or isinstance(exc, RANKS_AGREE))

    return close


def run_training(
    cfg: config.Config,
    accelerator: Accelerator,
    flags: stopping.StopFlags,
    teardown: contextlib.ExitStack,
) -> None:
    t_start = time.perf_counter()
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        # Under a W&B sweep agent each point trains into a folder of its own: RUN_DIR/<the agent's run id>.
        cfg = dataclasses.replace(
            cfg,
            run=dataclasses.replace(
                cfg.run, dir=str(Path(cfg.run.dir) / os.environ["WANDB_RUN_ID"])
            ),
        )
    run_dir = Path(cfg.run.dir)
    world = accelerator.num_processes
    # train.global_batch_size -> per-device
    cfg = dataclasses.replace(cfg, train=cfg.train.for_world(world))
    global_batch_size = cfg.train.global_batch(world)

    rundir.check_usable(run_dir)  # a bad run.dir is one line now, not after seconds of data loading
    if (
        accelerator.is_main_process
    ):  # one writer per folder: a second run into it stops here, having written nothing
        run_dir.mkdir(parents=True, exist_ok=True)
        teardown.callback(lock.RunLock.acquire(run_dir).release)
        # what a crash or a full disk left: it holds space a resume needs
        checkpoint.clean_partial(run_dir)

    # ------------------------------------------------------------------ data (downloads once per node)
    # A download or HF cache is written by the node's first rank while the others wait; local IDX files are read
    # by all at once (waiting cost a 2-process CPU start-up ~0.4 s).
    with (
        contextlib.nullcontext()
        if data.reads_idx_folder(cfg.data)
        else accelerator.local_main_process_first()
    ):
        datasets = data.load_datasets(cfg.data)
    eval_splits = {"val": datasets.val, "test": datasets.test}

    # ------------------------------------------------------------------ model, optimizer, schedule
    loop, n_params, allreduce = build_loop(cfg, accelerator, datasets.train, flags)
    loop.data_fingerprint = data.fingerprint(datasets)

    # ------------------------------------------------------------------ resume
    state, resume_from, resumed_state_json = resume(
        cfg, accelerator, loop.data_fingerprint, datasets.source
    )

    # ------------------------------------------------------------------ run folder, tracking
    if accelerator.is_main_process:
        if (
            resume_from is None
        ):  # a fresh run in an old folder: what an earlier run left is kept, not mixed in
            if (kept := rundir.set_aside(run_dir)) is not None:
                print(
                    f"mnist-dist: an earlier run's files in {run_dir} moved to {kept}", flush=True
                )
        else:  # drop the records the checkpoint does not cover
            rundir.truncate_jsonl(run_dir / rundir.METRICS, state.global_step)
        atomic.write_text(run_dir / rundir.CONFIG, config.dump(cfg))
    # None outside torchrun's elastic agent
    launch = {
        "world_size": world,
        "mixed_precision": accelerator.mixed_precision,
        "mixed_precision_why": runtime.mixed_precision_choice(
            cfg, accelerator.device.type == "cpu"
        )[1],
        "distributed_type": accelerator.distributed_type.value,
        "global_batch_size": global_batch_size,
        "elastic_restart_count": runtime.elastic_restart_count(),
    }
    tracker = tracking.start(
        cfg, run_dir, resumed_state_json.get("tracker_run_id"), launch, accelerator.is_main_process
    )

    def close_tracker(
        exc_type, exc, tb
    ) -> None:  # a finished run's tracker is finished with the summary, below
        if exc is not None:
            tracker.finish(None, preempted=isinstance(exc, stopping.Preempted))

    teardown.push(close_tracker)
    logger = tracking.MetricLogger(
        run_dir / rundir.METRICS if accelerator.is_main_process else None, tracker
    )
    # The first test images' class probabilities, kept from each evaluation for the report and W&B media.
    keep_probs = (
        max(run_report.NUM_SAMPLES, tracker.predictions_wanted)
        if accelerator.is_main_process
        else 0
    )
    facts = {
        **launch,
        "allreduce": allreduce,
        "data_source": datasets.source,
        "parameters": n_params,
    }
    accelerator.print(start_text(loop, datasets, facts, state.global_step, resume_from))

    # ------------------------------------------------------------------ the loop
    record = predictions = None
    t_train = time.perf_counter() - state.train_seconds
    # A run that ended (every epoch, an early stop, or max_steps, each checkpointed) trains no further step.
    while (
        state.epoch < cfg.train.epochs
        and not state.stopped_early
        and not max_steps_reached(cfg, state)
    ):
        stop = train_one_epoch(loop, state, logger)
        state.train_seconds = time.perf_counter() - t_train
        if stop is Stop.NON_FINITE:
            raise non_finite_loss(run_dir, state.global_step + 1)
        if stop is Stop.PREEMPTED:
            save_checkpoint(loop, state, tracker.run_id)
            preempted = stopping.Preempted(flags.signal_received, state.global_step)
            accelerator.print(preempted)
            raise preempted
        # Evaluate at every epoch end (and when stopped early by max_steps).
        record, predictions = eval_record(loop, state, eval_splits, keep_probs)
        keep_best_and_count_patience(loop, state, record)
        logger.log_eval(record, predictions)
        accelerator.print(epoch_text(record))
        # at max_steps too: a rerun of the ended run trains nothing
        save_checkpoint(loop, state, tracker.run_id)
        if stop is Stop.MAX_STEPS:
            break
        if state.stopped_early:
            accelerator.print(
                f"early stop: no {cfg.checkpoint.best_metric} improvement for "
                f"{state.evals_since_best} evaluations; best {state.best_value:.4f} at epoch "
                f"{state.best_epoch:g} (step {state.best_step}), kept in {run_dir / rundir.BEST}"
            )

    # ------------------------------------------------------------------ the end
    if (
        record is None
    ):  # resumed from a checkpoint written after the last epoch (or the early stop): nothing to train
        record, predictions = eval_record(loop, state, eval_splits, keep_probs)
    best_test = test_best_model(loop, state, record, datasets.test)  # collectives too
    # collectives: before the main-process block
    samples_per_rank = samples_seen_per_rank(accelerator, state)
    from accelerate.utils import gather_object

    hostnames = gather_object([socket.gethostname()]) if world > 1 else [socket.gethostname()]
    if accelerator.is_main_process:
        save_run_model(loop, run_dir)
        facts["wall_seconds"] = time.perf_counter() - t_start
        summary = build_summary(loop, state, record, best_test, facts, samples_per_rank, hostnames)
        atomic.write_text(run_dir / rundir.SUMMARY, json.dumps(summary, indent=2))
        # curves/confusion/samples PNGs + report.md
        run_report.write_after_training(run_dir, predictions)
        tracker.finish(summary)
    accelerator.print(
        f"done: test_accuracy {record['test_accuracy']:.4f} on {record['test_count']} images, "
        f"train {state.train_seconds:.1f}s, run folder {run_dir}"
    )


def start_text(
    loop: Loop, datasets: data.Datasets, facts: dict, global_step: int, resume_from: Path | None
) -> str:
    """The start-up lines: where and how the run trains (habit 4: the effective global batch size is among them)."""
    cfg, accelerator = loop.cfg, loop.accelerator
    elastic = facts["elastic_restart_count"]
    sizes = f"{len(datasets.train)}/{len(datasets.val or [])}/{len(datasets.test)}"
    lines = [
        f"mnist-dist: device={accelerator.device} distributed={facts['distributed_type']} "
        f"world_size={facts['world_size']} allreduce={facts['allreduce']} "
        f"mixed_precision={facts['mixed_precision']} ({facts['mixed_precision_why']})"
        + ("" if elastic is None else f" elastic_restart={elastic}"),
        f"  model={cfg.model.name} params={facts['parameters']:,} data={cfg.data.name} "
        f"source={facts['data_source']} loader={cfg.data.loader} train/val/test={sizes}",
        f"  per_device_batch_size={cfg.train.per_device_batch_size} grad_accum_steps={cfg.train.grad_accum_steps} "
        f"global_batch_size={facts['global_batch_size']} steps_per_epoch={len(loop.loader)} "
        f"epochs={cfg.train.epochs}",
        f"  run_dir={Path(cfg.run.dir)}",
    ]
    if resume_from:
        lines.append(f"  resumed from {resume_from} at global_step={global_step}")
    return "\n".join(lines)


def epoch_text(record: dict) -> str:
    """One evaluation as a line of the log."""
    train_loss = (
        record["train_loss"] if record["train_loss"] is None else round(record["train_loss"], 4)
    )
    val = f"val_acc {record['val_accuracy']:.4f} " if "val_accuracy" in record else ""
    return (
        f"epoch {record['epoch']:.2f} step {record['global_step']}: train_loss {train_loss} {val}"
        f"test_acc {record['test_accuracy']:.4f} test_loss {record['test_loss']:.4f} ({record['test_count']} images)"
    )


def non_finite_loss(run_dir: Path, global_step: int) -> NonFiniteLoss:
    complete = checkpoint.complete_checkpoints(run_dir)
    kept = (
        f"The last good checkpoint, {complete[-1]}, is kept"
        if complete
        else "No checkpoint was written before it"
    )
    return NonFiniteLoss(
        f"non-finite training loss at global_step {global_step}; stopped all ranks before the optimizer step. "
        f"{kept}; lower train.lr or set train.grad_clip"
    )


def build_summary(
    loop: Loop,
    state: TrainState,
    record: dict,
    best_test: dict | None,
    facts: dict,
    samples_per_rank: list[int],
    hostnames: list[str],
) -> dict:
    """summary.json: the final evaluation, what the loop knows beyond the state (`facts`: the launch record, the
    all-reduce, the data source, the parameter count, the wall time), where the time went, the best model's numbers."""
    cfg, accelerator, run_dir = loop.cfg, loop.accelerator, Path(loop.cfg.run.dir)
    best = None
    if state.best_value is not None:
        best = {
            "metric": cfg.checkpoint.best_metric,
            "value": state.best_value,
            "epoch": state.best_epoch,
            "global_step": state.best_step,
            "model": str(run_dir / rundir.BEST),
            **(best_test or {}),
        }
    return {
        "test_accuracy": record["test_accuracy"],
        "test_loss": record["test_loss"],
        "test_count": record["test_count"],
        "val_accuracy": record.get("val_accuracy"),
        "epochs": record["epoch"],
        "global_step": state.global_step,
        **facts,
        "per_device_batch_size": cfg.train.per_device_batch_size,
        "train_samples_per_rank": samples_per_rank,
        "hostnames": hostnames,  # per rank: which node each ran on
        "train_seconds": state.train_seconds,
        "first_step_unix": loop.first_step_unix,
        "startup_seconds": procs.since_exec(loop.first_step_unix),
        "device": str(accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "model": cfg.model.name,
        "git_revision": provenance.git_revision(),
        "torch_version": torch.__version__,
        "best": best,
        "early_stopped": state.stopped_early,
    }


# ----------------------------------------------------------------------------- CLI


class _KeysEpilog(argparse.RawDescriptionHelpFormatter):
    """Builds the config-key list (epilog = config.help_text) only when help is printed: not at every start-up."""

    def add_text(self, text):
        super().add_text(text() if callable(text) else text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _KeysEpilog
    parser.epilog = config.help_text  # type: ignore[assignment]  # a callable: _KeysEpilog calls it at --help
    parser.add_argument(
        "--config",
        metavar="YAML_OR_RECIPE",
        help="a YAML file, or a recipe by name (`mnist-dist recipes`; defaults < YAML < overrides)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="smoke test: 1 epoch, 5 steps, no progress bars"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the merged config and exit"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.epochs=3 data.name=fashion_mnist run.dir=runs/x",
    )


def run(args) -> int:
    overrides = list(args.overrides)
    if args.dry_run:
        overrides += ["train.epochs=1", "train.max_steps=5", "train.progress=false"]
    cfg = config.load(args.config, overrides)
    if args.print_config:
        print(config.dump(cfg), end="")
        return 0
    return train(cfg)
