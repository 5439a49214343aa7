"""The training loop: Accelerator, train_one_epoch, evaluate. Reads top to bottom.

Only this file talks to the Accelerator. Quantities are per-process unless named global_*.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import time
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_dist import checkpoint, config, data, metrics, models, report, shm_allreduce, tracking
from mnist_dist.errors import PREEMPTED_EXIT_CODE, UserError

# Fault injection for the tests: "RANK:STEP" makes that rank raise at that global step.
INJECT_FAULT = os.environ.get("MNIST_DIST_INJECT_FAULT")


class NonFiniteLoss(UserError):
    pass


# ----------------------------------------------------------------------------- set-up


def make_accelerator(cfg: config.Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver), "
                        "or use train.device=auto")
    if want == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device=mps but MPS is not available on this machine; use train.device=auto")
    # Without CUDA or MPS, cpu=True is what makes a multi-process launch real DDP over gloo; a plain
    # Accelerator() would run N independent single-process copies.
    cpu = want == "cpu" or (want == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available())
    mp = None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision
    if mp == "fp16" and cpu:
        raise UserError("train.mixed_precision=fp16 needs a GPU; on CPU use bf16 or no")
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        # We step the scheduler once per optimizer step ourselves (Accelerate would step it world_size times).
        step_scheduler_with_optimizer=False,
        log_with=tracking.log_with(cfg.tracking),
        project_dir=cfg.run.dir,
        # A rank that dies takes the launcher down with it; this bounds how long the others wait otherwise.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.run.dist_timeout_s)),
                         # No per-step broadcast of BN running stats (a collective per forward, ~6% of a CPU DDP
                         # step): only evaluation reads them, and evaluate() gives every rank rank 0's first.
                         # Gradients that are views into DDP's buckets: no copy in and out of them per step.
                         DistributedDataParallelKwargs(broadcast_buffers=False, gradient_as_bucket_view=True)],
    )


def end_distributed(accelerator) -> None:
    """Every rank arrives before any tears the process group down: a rank that destroys it while another still
    works (writing files, requeueing) can abort with gloo's 'terminate called without an active exception'."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def make_optimizer(cfg: config.TrainConfig, params):
    """The fused kernel where this torch has one for the device: on a CPU the default is a per-tensor loop
    (AdamW ~4x slower per step, ~8% of a small CPU step), on a GPU fewer kernel launches (the step is host-bound,
    bench/README.md)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}
    else:
        cls, kwargs = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW), {}
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # older torch: fused kernels for CUDA only, or none for SGD
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def make_scheduler(cfg: config.TrainConfig, optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=cfg.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def make_loader(cfg: config.Config, split: data.Split, accelerator):
    tc = cfg.train
    if cfg.data.loader == "device":
        return data.DeviceLoader(split, tc.per_device_batch_size, tc.grad_accum_steps, accelerator.process_index,
                                 accelerator.num_processes, tc.seed, accelerator.device)
    return data.DataLoaderLoader(split, tc.per_device_batch_size, tc.grad_accum_steps, tc.seed,
                                 cfg.data.num_workers, accelerator.prepare_data_loader)


def make_model_and_optimizer(cfg: config.Config, accelerator, steps_per_epoch: int):
    """(model, optimizer, scheduler) prepared by Accelerate, and the parameter count."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = models.build(cfg.model.name, **cfg.model.kwargs)
    n_params = models.num_parameters(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.train, model.parameters())
    scheduler = make_scheduler(cfg.train, optimizer, steps_per_epoch)
    with warnings.catch_warnings():
        # torch 2.14 renames DDP's broadcast_buffers to forward_sync_buffers, which Accelerate cannot pass yet.
        # What we ask for (no buffer broadcast per forward) is the same under both names; the warning, twice per
        # rank on every DDP run, would only alarm.
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    allreduce = attach_cpu_allreduce(cfg.run, accelerator, model)
    if cfg.model.compile:
        # dynamic=False: one static graph per input shape (full batch, the epoch's shorter last batch, evaluation)
        # rather than a dynamic-shape recompile at the first epoch end. Each compile costs seconds of train_seconds.
        model = torch.compile(model, dynamic=False)
    return model, optimizer, scheduler, n_params, allreduce


def attach_cpu_allreduce(rc: config.RunConfig, accelerator, model) -> str:
    """Gives multi-process CPU DDP the shared-memory all-reduce where asked or possible; returns which all-reduce
    averages the gradients ("none" in a single process, "nccl"/"gloo"/... from the process group otherwise)."""
    from accelerate.utils import DistributedType
    if accelerator.num_processes == 1:
        return "none"
    if accelerator.distributed_type != DistributedType.MULTI_CPU or rc.cpu_allreduce == "gloo":
        return torch.distributed.get_backend()
    if not shm_allreduce.supported():
        if rc.cpu_allreduce == "shared_memory":
            raise UserError(f"run.cpu_allreduce=shared_memory needs an x86-64 CPU, this is {platform.machine()}: "
                            f"use run.cpu_allreduce=auto")
        return "gloo"
    max_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    try:
        allreduce = shm_allreduce.SharedMemoryAllReduce(max_bytes, timeout_s=rc.dist_timeout_s)
    except OSError as e:  # every rank gets the same verdict: the check inside is a collective
        if rc.cpu_allreduce == "shared_memory":
            raise UserError(f"run.cpu_allreduce=shared_memory: {e}; use run.cpu_allreduce=auto") from None
        return "gloo"
    model.register_comm_hook(None, allreduce.hook)
    return "shared_memory"


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


class StopFlags:
    """Preemption signals set a local flag; ranks agree on it (and on non-finite losses) at step boundaries."""

    def __init__(self, signal_names):
        self.signal_received = None
        for name in signal_names:
            signal.signal(getattr(signal, name), self._handler)

    def _handler(self, signum, frame):
        self.signal_received = signal.Signals(signum).name

    def agree(self, accelerator, non_finite: torch.Tensor) -> tuple[bool, bool]:
        """(preempt, non_finite) as agreed by every rank. A host-device sync point."""
        local = torch.stack([torch.tensor(float(self.signal_received is not None), device=non_finite.device),
                             non_finite.float()])
        if accelerator.num_processes > 1:
            local = accelerator.reduce(local, reduction="sum")
        preempt, bad = local.tolist()
        return preempt > 0, bad > 0


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(accelerator, model, split: data.Split, mean: float, std: float, batch_size: int) -> dict:
    """Exact loss/accuracy/confusion over `split`: each rank takes a contiguous share, then sums are reduced."""
    model.eval()
    if accelerator.num_processes > 1:  # BN running stats as rank 0 has them (and saves them)
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)
    shard = data.eval_shard(len(split), accelerator.process_index, accelerator.num_processes)
    images, labels = split.images[shard], split.labels[shard]
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(10, 10, device=device, dtype=torch.long)
    for i in range(0, len(labels), batch_size):
        x = data.normalize(images[i:i + batch_size].to(device, non_blocking=True), mean, std)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += metrics.confusion_matrix(logits.argmax(1), y)
    # Sums and counts, not means, cross the process boundary: the result is exact for any world size.
    loss_sum, confusion = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(confusion, "sum")
    model.train()
    return metrics.summarize(loss_sum.item(), confusion.cpu())


# ----------------------------------------------------------------------------- training


def train_one_epoch(accelerator, model, optimizer, scheduler, loader, epoch: int, start_step: int, state: dict,
                    window, cfg: config.Config, flags: StopFlags, tracker, mean: float, std: float):
    """One pass over this rank's share of the training data.
    Returns "done", "preempted", "stopped" (train.max_steps) or "non_finite"."""
    from tqdm.auto import tqdm
    tc = cfg.train
    aug_gen = torch.Generator(device=accelerator.device if accelerator.device.type != "mps" else "cpu")
    t_log = time.perf_counter()
    with tqdm(total=len(loader), initial=start_step, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
              disable=not (accelerator.is_main_process and tc.progress), dynamic_ncols=True) as bar:
        for step_in_epoch, (micro_batches, scale) in enumerate(loader.epoch(epoch, start_step), start=start_step):
            # Randomness depends only on (seed, global step, rank): a resumed run draws exactly the same numbers.
            torch.manual_seed(tc.seed * 1_000_003 + state["global_step"] * 97 + accelerator.process_index)
            if cfg.data.augment:
                aug_gen.manual_seed(tc.seed * 7919 + state["global_step"] * 31 + accelerator.process_index)
            # Ranks only compare non-finite flags at guard steps: other steps skip the flag's device work.
            guard_step = (state["global_step"] + 1) % cfg.run.guard_every_steps == 0
            non_finite = torch.zeros((), dtype=torch.bool, device=accelerator.device) if guard_step else None
            if INJECT_FAULT == f"{accelerator.process_index}:{state['global_step']}":
                raise RuntimeError(f"injected fault on rank {accelerator.process_index} (MNIST_DIST_INJECT_FAULT)")
            for i, (xb, yb) in enumerate(micro_batches):
                x = data.normalize(xb.to(accelerator.device, non_blocking=True), mean, std)
                y = yb.to(accelerator.device, non_blocking=True)
                if cfg.data.augment:
                    x = data.augment(x, cfg.data.augment_shift, aug_gen)
                if cfg.model.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # Gradients are all-reduced only on the last micro-batch of the step.
                sync = i == len(micro_batches) - 1
                with (accelerator.no_sync(model) if not sync else contextlib.nullcontext()):
                    logits = model(x)
                    per_sample_sum = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=tc.label_smoothing)
                    accelerator.backward(per_sample_sum * scale)
                window.add(per_sample_sum.detach(), (logits.detach().argmax(1) == y).sum(), len(y))
                state["samples_seen"] += len(y)  # this rank's, over the whole run
                if guard_step:
                    non_finite |= ~torch.isfinite(per_sample_sum.detach())
            # Ranks agree on stopping before the optimizer step, so a NaN never reaches the weights.
            # Every rank must take this branch at the same steps (it may hold a collective).
            preempt, bad = (False, False)
            if guard_step:
                preempt, bad = flags.agree(accelerator, non_finite)
            if bad:
                optimizer.zero_grad(set_to_none=True)
                return "non_finite"
            if tc.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["step_in_epoch"] = step_in_epoch + 1
            bar.update(1)

            if state["global_step"] % tc.log_every_steps == 0:
                # Sync point: the global mean loss over every rank's samples since the last log.
                train_loss, images = window.drain(accelerator, state)
                dt = time.perf_counter() - t_log
                record = {"train_loss": train_loss, "train_accuracy": state["last_train_accuracy"],
                          "lr": scheduler.get_last_lr()[0],
                          "images_per_s": images / dt if dt > 0 else float("nan"),
                          "epoch": epoch + (step_in_epoch + 1) / len(loader)}
                tracker.log(record, step=state["global_step"])
                bar.set_postfix(loss=f"{train_loss:.4f}")
                t_log = time.perf_counter()
            if cfg.checkpoint.every_steps and state["global_step"] % cfg.checkpoint.every_steps == 0:
                save_checkpoint(accelerator, cfg, state, tracker, window)
            if preempt:
                return "preempted"
            if tc.max_steps and state["global_step"] >= tc.max_steps:
                return "stopped"
        window.drain(accelerator, state)  # the epoch's last train loss covers the steps since the last log
    return "done"


class LossWindow:
    """Training loss and accuracy since the last log: per-rank sums on the device (no host waits while
    training), folded into global host totals in `state` at log time and before a checkpoint, so a resumed
    run reports the same numbers as an uninterrupted one."""

    KEYS = ("window_loss_sum", "window_correct", "window_count")

    def __init__(self, device):
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, images

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums[0] += loss_sum.double()
        self.sums[1] += correct.double()
        self.sums[2] += n

    def fold(self, accelerator, state: dict) -> None:
        """Sync point: add every rank's pending sums to state's global window."""
        for key, total in zip(self.KEYS, accelerator.reduce(self.sums.clone(), "sum").tolist()):
            state[key] += total
        self.sums.zero_()

    def drain(self, accelerator, state: dict) -> tuple[float | None, float]:
        """(global mean loss, images) since the last drain; updates state's last_train_loss/accuracy."""
        self.fold(accelerator, state)
        images = state["window_count"]
        if images:
            state["last_train_loss"] = state["window_loss_sum"] / images
            state["last_train_accuracy"] = state["window_correct"] / images
        for key in self.KEYS:
            state[key] = 0.0
        return state["last_train_loss"], images


def fresh_state() -> dict:
    """The loop's progress: what a checkpoint's state.json holds besides the config (per-process counts are
    rank 0's)."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "last_train_loss": None, "train_seconds": 0.0,
            "last_train_accuracy": None, "samples_seen": 0, **{k: 0.0 for k in LossWindow.KEYS}}


def samples_seen_per_rank(accelerator, state: dict) -> list[int]:
    """Every rank's own samples_seen (they differ by a few when a step's samples do not split evenly)."""
    return accelerator.gather(torch.tensor([state["samples_seen"]], device=accelerator.device)).tolist()


def save_checkpoint(accelerator, cfg, state: dict, tracker, window: LossWindow) -> Path:
    window.fold(accelerator, state)
    meta = {**state, "samples_seen_per_rank": samples_seen_per_rank(accelerator, state),
            "world_size": accelerator.num_processes, "tracker_run_id": tracker.run_id, "config": config.to_dict(cfg)}
    return checkpoint.save_checkpoint(accelerator, Path(cfg.run.dir), meta, keep=cfg.checkpoint.keep)


def requeue_slurm_job(accelerator) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if not job or not accelerator.is_main_process:
        return
    # An array task is requeued by its own id (ARRAYJOB_TASK), not the array's.
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        accelerator.print(f"requeue of SLURM job {job} failed ({e}); resubmit with the same run.dir to resume")
        return
    accelerator.print(f"requeue of SLURM job {job}: " + ("ok" if result.returncode == 0 else result.stderr.strip()))


def train(cfg: config.Config) -> int:
    t_start = time.perf_counter()
    flags = StopFlags(cfg.run.preempt_signals)  # first: a signal during start-up is handled at the first step
    accelerator = make_accelerator(cfg)
    run_dir = Path(cfg.run.dir)
    tc = cfg.train
    world = accelerator.num_processes
    global_batch_size = tc.per_device_batch_size * world * tc.grad_accum_steps

    # ------------------------------------------------------------------ data (downloads once per node)
    # A download or HF cache is written by the node's first rank while the others wait; local IDX files are read
    # by all at once (waiting cost a 2-process CPU start-up ~0.4 s).
    with contextlib.nullcontext() if data.reads_idx_folder(cfg.data) else accelerator.local_main_process_first():
        datasets = data.load_datasets(cfg.data)
    mean, std = data.STATS[cfg.data.name]
    loader = make_loader(cfg, datasets.train, accelerator)
    eval_splits = {"val": datasets.val, "test": datasets.test}

    # ------------------------------------------------------------------ model, optimizer, schedule
    model, optimizer, scheduler, n_params, allreduce = make_model_and_optimizer(cfg, accelerator, len(loader))

    # ------------------------------------------------------------------ resume
    state = fresh_state()
    resume_from = checkpoint.find_resume(run_dir, cfg.checkpoint.resume)
    resumed_meta = None
    if resume_from is not None:
        resumed_meta = checkpoint.read_meta(resume_from)
        if resumed_meta["world_size"] != world:
            raise UserError(f"{resume_from} was written by {resumed_meta['world_size']} processes, this run has "
                            f"{world}: resume with the same number of processes, or set checkpoint.resume=never "
                            f"and a new run.dir")
        checkpoint.load_checkpoint(accelerator, resume_from)
        state.update({k: resumed_meta[k] for k in state if k in resumed_meta})
        if "samples_seen_per_rank" in resumed_meta:  # state.json's samples_seen is rank 0's
            state["samples_seen"] = resumed_meta["samples_seen_per_rank"][accelerator.process_index]

    # ------------------------------------------------------------------ run folder, tracking, summary
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(run_dir / "config.yaml", config.dump(cfg))
    tracker = tracking.start(accelerator, cfg, run_dir, resumed_meta.get("tracker_run_id") if resumed_meta else None)
    accelerator.print(
        f"mnist-dist: device={accelerator.device} distributed={accelerator.distributed_type.value} "
        f"world_size={world} allreduce={allreduce} mixed_precision={accelerator.mixed_precision}\n"
        f"  model={cfg.model.name} params={n_params:,} data={cfg.data.name} source={datasets.source} "
        f"loader={cfg.data.loader} train/val/test={len(datasets.train)}/{len(datasets.val or [])}/{len(datasets.test)}\n"
        f"  per_device_batch_size={tc.per_device_batch_size} grad_accum_steps={tc.grad_accum_steps} "
        f"global_batch_size={global_batch_size} steps_per_epoch={len(loader)} epochs={tc.epochs}\n"
        f"  run_dir={run_dir}" + (f"\n  resumed from {resume_from} at global_step={state['global_step']}" if resume_from else ""))
    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        # A fresh run in an old folder starts a fresh log; a resumed one drops records the checkpoint does not cover.
        checkpoint.truncate_jsonl(metrics_path, state["global_step"] if resume_from else -1)

    # ------------------------------------------------------------------ the loop
    window = LossWindow(accelerator.device)
    outcome, record = "done", None

    def evaluate_record(state, steps_per_epoch) -> dict:
        record = {"epoch": state["epoch"] if state["step_in_epoch"] == 0 else
                  state["epoch"] + state["step_in_epoch"] / steps_per_epoch,
                  "global_step": state["global_step"], "train_loss": state["last_train_loss"],
                  "train_accuracy": state["last_train_accuracy"]}
        for name, split in eval_splits.items():
            if split is not None:
                result = evaluate(accelerator, model, split, mean, std, tc.eval_batch_size)
                record.update({f"{name}_{k}": v for k, v in result.items()})
        record["train_seconds"] = state["train_seconds"]
        return record
    t_train = time.perf_counter() - state["train_seconds"]
    while state["epoch"] < tc.epochs:
        epoch = state["epoch"]
        outcome = train_one_epoch(accelerator, model, optimizer, scheduler, loader, epoch, state["step_in_epoch"],
                                  state, window, cfg, flags, tracker, mean, std)
        state["train_seconds"] = time.perf_counter() - t_train
        if outcome == "non_finite":
            break
        if outcome == "preempted":
            save_checkpoint(accelerator, cfg, state, tracker, window)
            break
        if outcome == "done":
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        # Evaluate at every epoch end (and when stopped early by max_steps).
        record = evaluate_record(state, len(loader))
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        tracker.log_eval(record, step=state["global_step"], model=accelerator.unwrap_model(model), test=datasets.test)
        accelerator.print(f"epoch {record['epoch']:.2f} step {state['global_step']}: train_loss "
                          f"{record['train_loss'] if record['train_loss'] is None else round(record['train_loss'], 4)} "
                          + (f"val_acc {record['val_accuracy']:.4f} " if "val_accuracy" in record else "")
                          + f"test_acc {record['test_accuracy']:.4f} test_loss {record['test_loss']:.4f} "
                          f"({record['test_count']} images)")
        if outcome == "stopped":
            break
        save_checkpoint(accelerator, cfg, state, tracker, window)

    # ------------------------------------------------------------------ endings
    if outcome == "non_finite":
        tracker.finish(None)
        raise NonFiniteLoss(f"non-finite training loss at global_step {state['global_step'] + 1}; stopped all ranks "
                            f"before the optimizer step. The last good checkpoint in {run_dir / 'checkpoints'} is "
                            f"kept; lower train.lr or set train.grad_clip")
    if outcome == "preempted":
        accelerator.print(f"preempted by {flags.signal_received or 'a signal on another rank'}: checkpoint saved at "
                          f"global_step {state['global_step']}")
        tracker.finish(None, preempted=True)
        if cfg.run.requeue:
            requeue_slurm_job(accelerator)
        end_distributed(accelerator)
        return PREEMPTED_EXIT_CODE

    if record is None:  # resumed from a checkpoint written after the last epoch: nothing left to train
        record = evaluate_record(state, len(loader))
    samples_per_rank = samples_seen_per_rank(accelerator, state)
    summary = None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        checkpoint.save_model(run_dir, unwrapped, cfg.model.name, cfg.model.kwargs, cfg.data.name, mean, std)
        summary = {
            "test_accuracy": record["test_accuracy"], "test_loss": record["test_loss"], "test_count": record["test_count"],
            "val_accuracy": record.get("val_accuracy"), "epochs": record["epoch"], "global_step": state["global_step"],
            "world_size": world, "per_device_batch_size": tc.per_device_batch_size,
            "global_batch_size": global_batch_size, "train_samples_per_rank": samples_per_rank,
            "train_seconds": state["train_seconds"],
            "wall_seconds": time.perf_counter() - t_start, "device": str(accelerator.device),
            "torch_threads": torch.get_num_threads(),
            "distributed_type": accelerator.distributed_type.value, "allreduce": allreduce,
            "mixed_precision": accelerator.mixed_precision,
            "data_source": datasets.source, "model": cfg.model.name, "parameters": n_params,
            "git_revision": git_revision(), "torch_version": torch.__version__,
        }
        checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        report.write_after_training(run_dir, unwrapped, datasets.test)  # curves/confusion/samples PNGs + report.md
    tracker.finish(summary, run_dir=run_dir, model=accelerator.unwrap_model(model), datasets=datasets)
    end_distributed(accelerator)
    accelerator.print(f"done: test_accuracy {record['test_accuracy']:.4f} on {record['test_count']} images, "
                      f"train {state['train_seconds']:.1f}s, run folder {run_dir}")
    return 0


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="a recipe from configs/train/ (defaults < YAML < overrides)")
    parser.add_argument("--dry-run", action="store_true", help="smoke test: 1 epoch, 5 steps, no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=3 data.name=fashion_mnist run.dir=runs/x")


def run(args) -> int:
    overrides = list(args.overrides)
    if args.dry_run:
        overrides += ["train.epochs=1", "train.max_steps=5", "train.progress=false"]
    cfg = config.load(args.config, overrides)
    if args.print_config:
        print(config.dump(cfg), end="")
        return 0
    return train(cfg)
