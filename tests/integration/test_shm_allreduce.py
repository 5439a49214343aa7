"""The shared-memory all-reduce of CPU DDP: real processes in a gloo group get the exact mean, the same bits
on every rank, over calls of changing sizes and dtypes; ranks that cannot map the same file fail together in one
message; a rank that never arrives ends the wait with an error instead of a hang; and in the real training
entry point it trains bit-for-bit the weights that gloo's all-reduce trains, leaving nothing in /dev/shm, while
a folder the ranks cannot share means gloo (auto) or one line and exit 2 (shared_memory)."""
import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mnist_dist import shm_allreduce

from helpers import ddp2_launcher, run_cli, tiny_overrides

pytestmark = pytest.mark.skipif(not (shm_allreduce.supported() and Path(shm_allreduce.SHM_DIR).is_dir()),
                                reason="needs an x86-64 CPU and /dev/shm")

# (numel, dtype) per call; 1003 float64 is the largest (8024 bytes), the odd sizes cross slot alignment.
CALLS = [(1003, torch.float64), (7, torch.float32), (1000, torch.float32), (513, torch.bfloat16), (1, torch.float32)]


def rank_tensor(rank: int, call: int, numel: int, dtype) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(100 * call + rank)).to(dtype)


def worker(rank: int, tmp, scenario: str, shm_dirs: list):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=len(shm_dirs))
    shm_allreduce.SHM_DIR = shm_dirs[rank]  # a rank on "another host" looks in a folder rank 0 did not write to
    out = {}
    try:
        allreduce = shm_allreduce.SharedMemoryAllReduce(max_bytes=8024, timeout_s=1.0)
        if scenario == "mean":
            out["results"] = [allreduce.mean_(rank_tensor(rank, i, n, dtype)) for i, (n, dtype) in enumerate(CALLS)]
        elif scenario == "late" and rank == 0:
            allreduce.mean_(torch.ones(10))  # rank 1 never makes this call
    except (OSError, RuntimeError) as e:
        out["error"] = str(e)
    torch.save(out, tmp / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(tmp_path, scenario, shm_dirs=(shm_allreduce.SHM_DIR,) * 2, timeout_s=60):
    """Every rank's output, one rank per entry of shm_dirs; ranks still running after timeout_s (a hang) are
    killed and fail the test."""
    ctx = mp.spawn(worker, args=(tmp_path, scenario, list(shm_dirs)), nprocs=len(shm_dirs), join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"scenario {scenario!r} still running after {timeout_s} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(shm_dirs))]


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_exact_mean(tmp_path, world):
    """Two ranks take a shortcut (each adds the other's slot); three or more add the slots in rank order."""
    outs = run_ranks(tmp_path, "mean", (shm_allreduce.SHM_DIR,) * world)
    for i, (numel, dtype) in enumerate(CALLS):
        first = outs[0]["results"][i]
        assert first.dtype == dtype and first.shape == (numel,)
        for out in outs[1:]:
            assert torch.equal(out["results"][i], first), f"call {i}: the ranks disagree"
        expected = rank_tensor(0, i, numel, dtype)
        for r in range(1, world):
            expected = expected + rank_tensor(r, i, numel, dtype)
        assert torch.equal(first, expected / world), f"call {i}: not the mean"


@pytest.mark.parametrize("where", ["rank 1 on another host", "rank 0 cannot create the file"])
def test_ranks_that_cannot_share_memory_fail_together(tmp_path, where):
    elsewhere = tmp_path / "elsewhere"
    if where == "rank 1 on another host":  # its /dev/shm exists but holds nothing of rank 0's
        elsewhere.mkdir()
        dirs = (shm_allreduce.SHM_DIR, str(elsewhere))
    else:  # a missing folder: as unwritable as a read-only or full /dev/shm, for mkstemp
        dirs = (str(elsewhere), shm_allreduce.SHM_DIR)
    outs = run_ranks(tmp_path, "mean", dirs)
    for out in outs:
        assert "results" not in out
        assert "the ranks could not share a file in" in out["error"]


def test_a_rank_that_never_arrives_ends_the_wait(tmp_path):
    outs = run_ranks(tmp_path, "late")
    assert "waited 1 s for the gradients of rank(s) [1]" in outs[0]["error"]
    assert "error" not in outs[1]


@pytest.mark.slow
def test_training_with_it_gives_gloos_weights_bit_for_bit(tiny_idx, tmp_path):
    """Two ranks: gloo's hook sums a/2 + b/2, this one (a + b)/2, the same float for float."""
    def shm_files():
        return sorted(p.name for p in Path(shm_allreduce.SHM_DIR).glob("mnist-dist-allreduce-*"))
    before = shm_files()
    summaries = {}
    for port, choice in [(29621, "shared_memory"), (29622, "gloo")]:
        run_cli(["train", *tiny_overrides(tiny_idx, tmp_path / choice, "train.per_device_batch_size=25",
                                          f"run.cpu_allreduce={choice}")], launcher=ddp2_launcher(port))
        summaries[choice] = json.loads((tmp_path / choice / "summary.json").read_text())
        assert summaries[choice]["world_size"] == 2 and summaries[choice]["allreduce"] == choice
    shm, gloo = (load_file(tmp_path / choice / "model.safetensors") for choice in ("shared_memory", "gloo"))
    assert shm.keys() == gloo.keys()
    for name in shm:
        assert torch.equal(shm[name], gloo[name]), name
    assert summaries["shared_memory"]["test_loss"] == summaries["gloo"]["test_loss"]
    assert shm_files() == before, "the shared file outlived the run"


@pytest.mark.slow
def test_without_a_shared_folder_auto_takes_gloo_and_shared_memory_stops(tiny_idx, tmp_path):
    env = {"MNIST_DIST_SHM_DIR": str(tmp_path / "missing")}
    run_cli(["train", *tiny_overrides(tiny_idx, tmp_path / "auto", "train.per_device_batch_size=25")],
            launcher=ddp2_launcher(29623), env=env)
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["allreduce"] == "gloo"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, tmp_path / "insist", "run.cpu_allreduce=shared_memory")],
                   launcher=ddp2_launcher(29624), env=env, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "could not share a file in" in line]
    assert errors and all(line.startswith("mnist-dist train: error: run.cpu_allreduce=shared_memory: the ranks")
                          for line in errors), proc.stderr[-3000:]
    assert not (tmp_path / "insist" / "summary.json").exists()
