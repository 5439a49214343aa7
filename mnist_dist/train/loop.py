"""The training run, top to bottom: set-up, resume, epochs of train_step with an evaluation at each end, the end.

The Accelerator (runtime.make_accelerator) does the distribution: prepare, backward, no_sync and the reductions;
this module calls it and never talks to torch.distributed itself. The main process's writes go through one
RunWriter (writer.py), the null one on other ranks, so the only rank-dependent code here is around collectives,
which every rank reaches at the same step. Quantities are per-process unless named global_*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from mnist_dist import config, metrics, models
from mnist_dist.data import loaders, sources
from mnist_dist.errors import UserError
from mnist_dist.metrics import EvalRecord, Predictions
from mnist_dist.run import checkpoint
from mnist_dist.train import runtime, stopping
from mnist_dist.train.resume import TrainState, resume
from mnist_dist.train.writer import NullWriter, open_writer

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


def make_optimizer(cfg: config.TrainConfig, params) -> torch.optim.Optimizer:
    """The fused kernel where this torch has one for the device: on a CPU the default is a per-tensor loop
    (AdamW ~4x slower per step, ~8% of a small CPU step), on a GPU fewer kernel launches (the step is host-bound,
    bench/README.md)."""
    params = list(params)
    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        cls = torch.optim.SGD
        kwargs |= {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # older torch: fused kernels for CUDA only, or none for SGD
        return cls(params, **kwargs)


def make_scheduler(cfg: config.TrainConfig, optimizer, steps_per_epoch: int):
    total, schedules = cfg.epochs * steps_per_epoch, torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        if total < 3:
            raise config.ConfigError(
                f"train.scheduler=onecycle needs at least 3 optimizer steps (a warm-up and an annealing), "
                f"this run has {total}: more data or epochs, a smaller batch, or train.scheduler=none"
            )
        # The warm-up must end after step 0: OneCycleLR divides by its length (0.25 of 4 steps is none).
        pct_start = 0.25 if total > 4 else 2 / total
        return schedules.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct_start
        )
    if cfg.scheduler == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "step":
        return schedules.StepLR(optimizer, step_size=steps_per_epoch, gamma=cfg.step_gamma)
    return schedules.LambdaLR(optimizer, lambda step: 1.0)


def make_loader(cfg: config.Config, split: sources.Split, accelerator: Accelerator):
    batch, accum, seed = cfg.train.per_device_batch_size, cfg.train.grad_accum_steps, cfg.train.seed
    if cfg.data.loader == "device":
        rank, world = accelerator.process_index, accelerator.num_processes
        return loaders.DeviceLoader(split, batch, accum, rank, world, seed, accelerator.device)
    workers, prepare = cfg.data.num_workers, accelerator.prepare_data_loader
    return loaders.TorchLoader(split, batch, accum, seed, workers, prepare)


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
        """A collective and a sync point: add every rank's pending sums to the state's global window."""
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
    """What the run builds once and every step uses."""

    cfg: config.Config
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed), maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: loaders.DeviceLoader | loaders.TorchLoader
    mean: float  # the dataset's pixel statistics, for normalising on the device
    std: float
    flags: stopping.StopFlags
    writer: NullWriter  # the main process's writes (RunWriter); the null one elsewhere
    parameters: int
    data_fingerprint: dict  # sources.fingerprint: saved in each checkpoint
    # when this process's first optimizer step ended (start-up, bench/run.py)
    first_step_unix: float | None = None
    window: LossWindow = dataclasses.field(init=False)
    aug_gen: torch.Generator = dataclasses.field(init=False)  # augmentation's own, seeded per step

    def __post_init__(self):
        device = self.accelerator.device
        self.window = LossWindow(device)
        self.aug_gen = torch.Generator(device=device if device.type != "mps" else "cpu")

    def plain_model(self) -> torch.nn.Module:
        """The model without DDP's wrapper or torch.compile's: what is saved and evaluated alone."""
        return self.accelerator.unwrap_model(self.model)


def build_loop(
    cfg: config.Config,
    accelerator: Accelerator,
    datasets: sources.Datasets,
    flags: stopping.StopFlags,
    writer: NullWriter,
) -> Loop:
    """The loop's parts, prepared by Accelerate."""
    loader = make_loader(cfg, datasets.train, accelerator)
    # identical initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.train.seed)
    model = models.build(cfg.model.name, len(datasets.classes), **cfg.model.kwargs)
    n_params = models.num_parameters(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.train, model.parameters())
    scheduler = make_scheduler(cfg.train, optimizer, len(loader))
    model, optimizer, scheduler = runtime.prepare(accelerator, model, optimizer, scheduler)
    if cfg.model.compile:
        # dynamic=False: one static graph per input shape (full batch, the epoch's shorter last batch, evaluation)
        # rather than a dynamic-shape recompile at the first epoch end. Each compile costs seconds of train_seconds.
        model = cast(torch.nn.Module, torch.compile(model, dynamic=False))
    mean, std = datasets.stats
    fingerprint = sources.fingerprint(datasets)
    return Loop(
        cfg,
        accelerator,
        model,
        optimizer,
        scheduler,
        loader,
        mean,
        std,
        flags,
        writer,
        n_params,
        fingerprint,
    )


# ----------------------------------------------------------------------------- one step, one epoch


def train_step(loop: Loop, state: TrainState, micro_batches: list, scale: float) -> Stop | None:
    """One optimizer step on this rank's micro-batches. Returns NON_FINITE (the step was not applied) or
    PREEMPTED (it was) when the ranks agreed to stop, else None."""
    cfg, accelerator, model = loop.cfg, loop.accelerator, loop.model
    # Randomness depends only on (seed, global step, rank): a resumed run draws exactly the same numbers.
    rank, seed, step = accelerator.process_index, cfg.train.seed, state.global_step
    torch.manual_seed(loaders.torch_seed(seed * 1_000_003 + step * 97 + rank))
    if cfg.data.augment:
        loop.aug_gen.manual_seed(loaders.torch_seed(seed * 7919 + step * 31 + rank))
    # Ranks only compare non-finite flags at guard steps: other steps skip the flag's device work.
    guard_step = (state.global_step + 1) % cfg.run.guard_every_steps == 0
    non_finite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    for i, (xb, yb) in enumerate(micro_batches):
        x = loaders.normalize(xb.to(accelerator.device, non_blocking=True), loop.mean, loop.std)
        y = yb.to(accelerator.device, non_blocking=True)
        if cfg.data.augment:
            x = loaders.augment(x, cfg.data.augment_shift, loop.aug_gen)
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
            non_finite |= ~torch.isfinite(loss_sum.detach())
    preempt = False
    if guard_step:
        # A collective and a host-device sync, at the same steps on every rank: the ranks agree on stopping
        # before the optimizer step, so a NaN never reaches the weights.
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


class LogLines:
    """tqdm's stream off a terminal: each update a whole line (a log file is read with tail and grep, which
    carriage returns defeat), the bar in ASCII, and the blank that ends a bar dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if line := text.replace("\r", "").strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_pacing() -> dict:
    """tqdm arguments: a terminal keeps the live bar; a file gets a line at most every PROGRESS_LOG_INTERVAL_S
    (maxinterval too: tqdm's monitor thread would otherwise force one every 10 s)."""
    if sys.stderr.isatty():
        return {}
    interval = PROGRESS_LOG_INTERVAL_S
    return {
        "mininterval": interval,
        "maxinterval": interval,
        "file": LogLines(sys.stderr),
        "ascii": True,
    }


def train_one_epoch(loop: Loop, state: TrainState) -> Stop | None:
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
            if max_steps_reached(cfg, state):
                # a resume at (or lowered below) max_steps trains no further step
                return Stop.MAX_STEPS
            stop = train_step(loop, state, micro_batches, scale)
            if stop is Stop.NON_FINITE:
                return stop
            loop.first_step_unix = loop.first_step_unix or time.time()
            bar.update(1)
            if state.global_step % cfg.train.log_every_steps == 0:
                # A collective and a sync point: the global mean loss over every rank's samples since the last log.
                train_loss, images = loop.window.drain(accelerator, state)
                dt = time.perf_counter() - t_log
                values = {
                    "loss": train_loss,
                    "accuracy": state.last_train_accuracy,
                    "lr": loop.scheduler.get_last_lr()[0],
                    "images_per_s": images / dt if dt > 0 else float("nan"),
                }
                epoch = state.epoch + state.step_in_epoch / steps_per_epoch
                loop.writer.log_train(values, epoch, state.global_step)
                # shown with the next update
                bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
                t_log = time.perf_counter()
            if cfg.checkpoint.every_steps and state.global_step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(loop, state)  # a collective
            if stop is Stop.PREEMPTED:
                return stop
            if max_steps_reached(cfg, state) and state.step_in_epoch < steps_per_epoch:
                # the record's train loss covers the steps since the last log (a collective)
                loop.window.drain(accelerator, state)
                return Stop.MAX_STEPS
        # the epoch's last train loss covers the steps since the last log (a collective)
        loop.window.drain(accelerator, state)
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    return None


def max_steps_reached(cfg: config.Config, state: TrainState) -> bool:
    return bool(cfg.train.max_steps) and state.global_step >= cfg.train.max_steps


# ----------------------------------------------------------------------------- evaluation, best model, checkpoint


def evaluate(
    loop: Loop, state: TrainState, splits: dict[str, sources.Split | None], keep_probs: int
) -> tuple[EvalRecord, Predictions | None]:
    """Collectives: exact metrics on every split, plus the class probabilities of the first `keep_probs` test
    images (this rank's share) from the same forward pass."""
    results, predictions = {}, None
    for name, split in splits.items():
        if split is None:
            continue
        keep = keep_probs if name == "test" else 0
        batch_size = loop.cfg.train.eval_batch_size
        results[name], probs = metrics.exact_metrics(
            loop.accelerator, loop.model, split, loop.mean, loop.std, batch_size, keep
        )
        if probs is not None:
            predictions = Predictions(split.images[: len(probs)], split.labels[: len(probs)], probs)
    epoch = (
        state.epoch + state.step_in_epoch / len(loop.loader) if state.step_in_epoch else state.epoch
    )
    record = EvalRecord(
        epoch,
        state.global_step,
        state.last_train_loss,
        state.last_train_accuracy,
        results,
        state.train_seconds,
    )
    return record, predictions


def keep_best_and_count_patience(loop: Loop, state: TrainState, record: EvalRecord) -> None:
    """After an evaluation: a new best by checkpoint.best_metric (a validation metric: the test set never
    chooses) goes to run.dir/best/; patience spent sets stopped_early (saved in the next checkpoint, so a rerun
    does not train on). The record is the same on every rank (reduced metrics): every rank decides the same."""
    cfg = loop.cfg
    value = record.flat().get(cfg.checkpoint.best_metric)
    if value is None:
        return
    if cfg.checkpoint.better(value, state.best_value, cfg.train.early_stop_min_delta):
        state.best_value, state.best_epoch, state.best_step = (
            value,
            record.epoch,
            record.global_step,
        )
        state.evals_since_best = 0
        loop.writer.save_best(loop.plain_model())
    else:
        state.evals_since_best += 1
    if cfg.train.early_stop_patience and state.evals_since_best >= cfg.train.early_stop_patience:
        state.stopped_early = record.early_stop = True


def early_stop_text(cfg: config.Config, state: TrainState) -> str:
    return (
        f"early stop: no {cfg.checkpoint.best_metric} improvement for {state.evals_since_best} "
        f"evaluations; best {state.best_value:.4f} at epoch {state.best_epoch:g} (step "
        f"{state.best_step}), kept in {Path(cfg.run.dir) / 'best'}"
    )


def test_best_model(
    loop: Loop, state: TrainState, record: EvalRecord, test_split: sources.Split
) -> dict | None:
    """Collectives: the best model's test numbers beside the final one's (Lightning's test(ckpt_path="best")).
    The last record's when the best is the final model, else one more exact evaluation of run.dir/best/, read by
    every rank (the run folder is shared, as for checkpoints) into a copy of the model. The state is the same on
    every rank, so all take the same branch."""
    best_file = Path(loop.cfg.run.dir) / "best" / "model.safetensors"
    if state.best_step is None:
        return None
    if state.best_step == state.global_step:
        test = record.splits["test"]
    elif best_file.is_file():  # else its save failed (a warning said so)
        import copy

        from safetensors.torch import load_file

        best_model = copy.deepcopy(loop.plain_model())  # the final model is saved after this
        # Read on the CPU (safetensors refuses Accelerate's "cpu:0"); load_state_dict copies onto the device.
        best_model.load_state_dict(load_file(str(best_file)))
        batch_size = loop.cfg.train.eval_batch_size
        test, _ = metrics.exact_metrics(
            loop.accelerator, best_model, test_split, loop.mean, loop.std, batch_size
        )
    else:
        return None
    return {"test_accuracy": test.accuracy, "test_loss": test.loss}


def save_checkpoint(loop: Loop, state: TrainState) -> Path:
    """A collective: every rank calls it at the same step."""
    accelerator = loop.accelerator
    loop.window.fold(accelerator, state)
    state_json = {
        "format": checkpoint.FORMAT,
        **dataclasses.asdict(state),
        "samples_seen_per_rank": samples_seen_per_rank(accelerator, state),
        "world_size": accelerator.num_processes,
        "tracker_run_id": loop.writer.run_id,
        "config": config.to_dict(loop.cfg),
        "data": loop.data_fingerprint,
    }
    run_dir, keep = Path(loop.cfg.run.dir), loop.cfg.checkpoint.keep
    return checkpoint.save(accelerator, run_dir, state_json, keep=keep)


def samples_seen_per_rank(accelerator: Accelerator, state: TrainState) -> list[int]:
    """A collective: every rank's own samples_seen (they differ by a few when a step's samples do not split
    evenly)."""
    mine = torch.tensor([state.samples_seen], device=accelerator.device)
    return accelerator.gather(mine).tolist()


# ----------------------------------------------------------------------------- the run

# endings every rank reaches at the same step, together
RANKS_AGREE = (stopping.Preempted, NonFiniteLoss)


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


def run_training(
    cfg: config.Config,
    accelerator: Accelerator,
    flags: stopping.StopFlags,
    teardown: contextlib.ExitStack,
) -> None:
    t_start = time.perf_counter()
    cfg = for_this_launch(cfg, accelerator.num_processes)
    # The run folder first (the main process's lock): a second run into it stops here, having read nothing.
    writer = open_writer(cfg, accelerator.is_main_process, teardown)

    # ------------------------------------------------------------------ data, model, optimizer, resume
    datasets = load_data(cfg, accelerator)
    loop = build_loop(cfg, accelerator, datasets, flags, writer)
    fingerprint, steps_per_epoch = loop.data_fingerprint, len(loop.loader)
    state, resumed_from, tracker_run_id = resume(
        cfg, accelerator, fingerprint, datasets.source, steps_per_epoch
    )
    facts = launch_facts(cfg, accelerator, datasets, loop.parameters)
    writer.start(state.global_step, resumed_from, tracker_run_id, facts)
    accelerator.print(start_text(loop, datasets, facts, state.global_step, resumed_from))

    # ------------------------------------------------------------------ the loop
    eval_splits = {"val": datasets.val, "test": datasets.test}
    record = predictions = None
    t_train = time.perf_counter() - state.train_seconds
    # A run that ended (every epoch, an early stop, or max_steps, each checkpointed) trains no further step.
    while not (
        state.epoch >= cfg.train.epochs or state.stopped_early or max_steps_reached(cfg, state)
    ):
        stop = train_one_epoch(loop, state)
        state.train_seconds = time.perf_counter() - t_train
        if stop is Stop.NON_FINITE:
            raise non_finite_loss(Path(cfg.run.dir), state.global_step + 1)
        if stop is Stop.PREEMPTED:
            save_checkpoint(loop, state)
            accelerator.print(
                preempted := stopping.Preempted(flags.signal_received, state.global_step)
            )
            raise preempted
        record, predictions = evaluate(loop, state, eval_splits, writer.predictions_wanted)
        keep_best_and_count_patience(loop, state, record)
        writer.log_eval(record, predictions)
        save_checkpoint(loop, state)  # at max_steps too: a rerun of the ended run trains nothing
        if state.stopped_early:
            accelerator.print(early_stop_text(cfg, state))
        if stop is Stop.MAX_STEPS:
            break

    # ------------------------------------------------------------------ the end
    if record is None:  # resumed from a checkpoint written after the last epoch: nothing to train
        record, predictions = evaluate(loop, state, eval_splits, writer.predictions_wanted)
    facts["wall_seconds"] = time.perf_counter() - t_start
    finish(loop, state, record, predictions, facts, datasets.test)


def finish(
    loop: Loop,
    state: TrainState,
    record: EvalRecord,
    predictions: Predictions | None,
    facts: dict,
    test_split: sources.Split,
) -> None:
    """Collectives first (the best model's test numbers, every rank's samples and host), then the main process
    writes the model, summary.json and the report, and closes the tracker."""
    accelerator, test = loop.accelerator, record.splits["test"]
    best_test = test_best_model(loop, state, record, test_split)
    per_rank = samples_seen_per_rank(accelerator, state)
    hostnames = runtime.hostnames(accelerator)
    best = None
    if state.best_value is not None:
        best = {
            "metric": loop.cfg.checkpoint.best_metric,
            "value": state.best_value,
            "epoch": state.best_epoch,
            "global_step": state.best_step,
            "model": str(Path(loop.cfg.run.dir) / "best"),
            **(best_test or {}),
        }
    summary = {
        **record.final(),
        "val_accuracy": record.splits["val"].accuracy if "val" in record.splits else None,
        "epochs": record.epoch,
        "global_step": state.global_step,
        **facts,
        "per_device_batch_size": loop.cfg.train.per_device_batch_size,
        "train_samples_per_rank": per_rank,
        "hostnames": hostnames,  # per rank: which node each ran on
        "first_step_unix": loop.first_step_unix,
        "startup_seconds": runtime.since_start(loop.first_step_unix),
        "device": str(accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "model": loop.cfg.model.name,
        "torch_version": torch.__version__,
        "best": best,
        "early_stopped": state.stopped_early,
    }
    loop.writer.finish(loop.plain_model(), summary, record, predictions)
    accelerator.print(
        f"done: test_accuracy {test.accuracy:.4f} on {test.count} images, "
        f"train {state.train_seconds:.1f}s, run folder {loop.cfg.run.dir}"
    )


def for_this_launch(cfg: config.Config, world: int) -> config.Config:
    """The config as this launch runs it: per_device_batch_size derived from train.global_batch_size for `world`
    processes, and under a W&B sweep agent, a run folder of its own per point: RUN_DIR/<the agent's run id>."""
    cfg = dataclasses.replace(cfg, train=cfg.train.for_world(world))
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        point_dir = str(Path(cfg.run.dir) / os.environ["WANDB_RUN_ID"])
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=point_dir))
    return cfg


def load_data(cfg: config.Config, accelerator: Accelerator) -> sources.Datasets:
    """The splits. A download or HF cache is written by the node's first rank while the others wait; local IDX
    files are read by all at once (waiting cost a 2-process CPU start-up ~0.4 s)."""
    local = sources.reads_idx_folder(cfg.data)
    with contextlib.nullcontext() if local else accelerator.local_main_process_first():
        return sources.load_datasets(cfg.data)


def launch_facts(
    cfg: config.Config, accelerator: Accelerator, datasets: sources.Datasets, parameters: int
) -> dict:
    """How this run was launched and what it trains: the start-up lines, the tracker's config, summary.json."""
    world, on_cpu = accelerator.num_processes, accelerator.device.type == "cpu"
    return {
        "world_size": world,
        "mixed_precision": accelerator.mixed_precision,
        "mixed_precision_why": runtime.mixed_precision_choice(cfg, on_cpu)[1],
        "distributed_type": accelerator.distributed_type.value,
        "global_batch_size": cfg.train.global_batch(world),
        "elastic_restart_count": runtime.elastic_restart_count(),  # None outside torchrun's agent
        "allreduce": runtime.allreduce_backend(accelerator),
        "data_source": datasets.source,
        "parameters": parameters,
        "classes": datasets.classes,  # what the model, its metrics and its files name
        "pixel_stats": list(datasets.stats),
    }


def start_text(
    loop: Loop, datasets: sources.Datasets, facts: dict, global_step: int, resumed: Path | None
) -> str:
    """The start-up lines: where and how the run trains (habit 4: the effective global batch size is among them)."""
    cfg, f = loop.cfg, facts
    elastic = f["elastic_restart_count"]
    sizes = f"{len(datasets.train)}/{len(datasets.val or [])}/{len(datasets.test)}"
    named = sources.is_named_set(cfg.data.name)
    classes = (
        "" if named else f" classes={len(datasets.classes)} ({', '.join(datasets.classes[:10])})"
    )
    lines = [
        f"mnist-dist: device={loop.accelerator.device} distributed={f['distributed_type']} "
        f"world_size={f['world_size']} allreduce={f['allreduce']} "
        f"mixed_precision={f['mixed_precision']} ({f['mixed_precision_why']})"
        + ("" if elastic is None else f" elastic_restart={elastic}"),
        f"  model={cfg.model.name} params={f['parameters']:,} data={cfg.data.name} "
        f"source={f['data_source']} loader={cfg.data.loader} train/val/test={sizes}{classes}",
        f"  per_device_batch_size={cfg.train.per_device_batch_size} "
        f"grad_accum_steps={cfg.train.grad_accum_steps} global_batch_size={f['global_batch_size']} "
        f"steps_per_epoch={len(loop.loader)} epochs={cfg.train.epochs}",
        f"  run_dir={Path(cfg.run.dir)}",
    ]
    if resumed:
        lines.append(f"  resumed from {resumed} at global_step={global_step}")
    return "\n".join(lines)


def non_finite_loss(run_dir: Path, global_step: int) -> NonFiniteLoss:
    complete = checkpoint.complete_checkpoints(run_dir)
    kept = (
        f"The last good checkpoint, {complete[-1]}, is kept"
        if complete
        else "No checkpoint was written before it"
    )
    return NonFiniteLoss(
        f"non-finite training loss at global_step {global_step}; stopped all ranks before the optimizer "
        f"step. {kept}; lower train.lr or set train.grad_clip"
    )


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
        if isinstance(exc, stopping.Preempted) and exc.by_scheduler:
            if cfg.run.requeue:
                stopping.requeue_slurm_job(accelerator)
            stopping.end_elastic_agent()
        runtime.end_distributed(accelerator, wait=exc is None or isinstance(exc, RANKS_AGREE))

    return close
