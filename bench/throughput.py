"""Steady-state training throughput of the real loop (mnist_dist/train/loop.py, train_one_epoch), one process.

    python bench/throughput.py --config configs/train/fast_fashion.yaml [--steps 100] [key=value ...]

Builds the loop's parts with loop.build_loop, as loop.train() does (the null writer: nothing is written), runs `--warmup` optimizer steps
(start-up, cuDNN autotuning, torch.compile), then times `--steps` more with the device synchronised at both
ends. Prints one JSON line: {"images_per_s": ..., ...}. No evaluation, no checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnist_dist import config
from mnist_dist.data import sources
from mnist_dist.train import loop, runtime, stopping, writer
from mnist_dist.train.resume import TrainState


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps first")
    p.add_argument("--sync-debug", action="store_true",
                   help="CUDA: count the host-device syncs in the timed steps (torch.cuda.set_sync_debug_mode)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(args.config, [*args.overrides, "train.progress=false", f"run.dir={tmp}",
                                        "train.log_every_steps=1000000", "checkpoint.every_steps=0"])
        accelerator = runtime.make_accelerator(cfg)
        cfg = dataclasses.replace(cfg, train=cfg.train.for_world(accelerator.num_processes))
        datasets = sources.load_datasets(cfg.data)
        parts = loop.build_loop(cfg, accelerator, datasets, stopping.StopFlags([]), writer.NullWriter())
        if cfg.model.compile:
            # Warm up past the first epoch end, so the last batch's (smaller) graph is compiled before timing.
            args.warmup = max(args.warmup, len(parts.loader) + 1)
        state = TrainState()

        def run_until(total_steps: int) -> None:
            cfg.train.max_steps = total_steps  # train_one_epoch returns at it
            while state.global_step < total_steps:
                loop.train_one_epoch(parts, state)

        run_until(args.warmup)
        sync(accelerator.device)
        t0, step0 = time.perf_counter(), state.global_step
        syncs = None
        if args.sync_debug and accelerator.device.type == "cuda":
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                run_until(args.warmup + args.steps)
                torch.cuda.set_sync_debug_mode("default")
            syncs = {}
            for w in caught:  # where each sync came from: the first frame outside torch
                key = str(w.message).splitlines()[0][:80] + f" @ {Path(w.filename).name}:{w.lineno}"
                syncs[key] = syncs.get(key, 0) + 1
        else:
            run_until(args.warmup + args.steps)
        sync(accelerator.device)
        seconds = time.perf_counter() - t0
    world = accelerator.num_processes
    global_batch = cfg.train.global_batch(world)
    images = (state.global_step - step0) * global_batch
    if accelerator.is_main_process:
        print(json.dumps({"images_per_s": images / seconds, "seconds": seconds, "steps": state.global_step - step0,
                          "global_batch_size": global_batch, "world_size": world, "device": str(accelerator.device),
                          "torch_threads": torch.get_num_threads(), **({"syncs": syncs} if syncs is not None else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
