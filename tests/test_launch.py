"""Every launch does what it says. A launch that asks Accelerate for FSDP, DeepSpeed, Megatron-LM or tensor
parallelism is refused before any work, in one line (not silently turned into DDP, as Accelerate does on a CPU).
Distributed evaluation runs the same number of forward passes, on batches of the same shapes, on every rank when
the shares straddle a batch boundary, and its metrics stay exact (equal to one process's)."""
import os
import socket
import subprocess

import pytest
import torch
import torch.multiprocessing as mp

from mnist_dist import data, inference, models, runtime
from mnist_dist.errors import UserError

from conftest import ROOT, VENV_BIN, make_digits, run_cli, tiny_overrides

REFUSED = "mnist-dist train: error: the launch asked for "


@pytest.mark.parametrize("env, named", [
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "True"}, "DeepSpeed"),
    ({"ACCELERATE_USE_MEGATRON_LM": "1"}, "Megatron-LM"),
    ({"PARALLELISM_CONFIG_TP_SIZE": "2"}, "tp_size=2"),
])
def test_sharded_strategies_refused(env, named):
    with pytest.raises(UserError, match=f"asked for {named}.*configs/accelerate/multi_gpu.yaml"):
        runtime.refuse_sharded_launch(env)
    runtime.refuse_sharded_launch({"ACCELERATE_USE_FSDP": "false", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "2"})


def test_deepspeed_env_refused_before_any_work(tiny_idx, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir)], env={"ACCELERATE_USE_DEEPSPEED": "true"},
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(REFUSED + "DeepSpeed") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not run_dir.exists()  # no lock, no folder: nothing was done


@pytest.mark.slow
def test_accelerate_launch_use_fsdp_refused_in_one_line(tiny_idx, tmp_path):
    """The issue's command: on a CPU it used to run plain MULTI_CPU DDP and exit 0."""
    run_dir = tmp_path / "run"
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29631",
           "-m", "mnist_dist", "train", *tiny_overrides(tiny_idx, run_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0  # torchrun's own exit status for failed workers
    ours = [line for line in proc.stderr.splitlines() if line.startswith("mnist-dist")]
    assert len(ours) == 1 and ours[0].startswith(REFUSED + "FSDP"), proc.stderr  # rank 0 only, one line
    assert proc.stderr.count("exitcode  : 2") == 2, proc.stderr  # both workers exit as a user error does
    assert "Traceback" not in proc.stderr.split("Traceback (most recent call last):\n  File \"")[0]
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- evaluation's forward passes


class CountingModel(torch.nn.Module):
    """The model, recording the batch size of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.model(x)


class GlooAccelerator:
    """What inference.evaluate asks of an Accelerator, over a real gloo process group."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction):
        torch.distributed.all_reduce(tensor)
        return tensor


def _evaluate_on_rank(rank, world, port, n, batch_size, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    torch.manual_seed(0)
    model = CountingModel(models.build("cnn_bn", width=4))
    images, labels = make_digits(n, seed=3)
    result, _ = inference.evaluate(GlooAccelerator(rank, world), model, data.Split(images, labels),
                                   *data.STATS["mnist"], batch_size)
    out[rank] = (model.batches, result)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n, batch_size", [(6001, 1000), (3001, 1000), (1, 1000), (2001, 500)])
def test_eval_forwards_equal_on_every_rank(n, batch_size):
    world = 2
    out = mp.get_context("spawn").Manager().dict()
    mp.start_processes(_evaluate_on_rank, args=(world, free_port(), n, batch_size, out), nprocs=world,
                       start_method="spawn")
    batches = [out[r][0] for r in range(world)]
    assert batches[0] == batches[1], batches  # same number of forwards, same shapes
    assert len(batches[0]) == -(-(-(-n // world)) // batch_size)
    # The metrics are exact: what one process computes over the whole split.
    torch.manual_seed(0)
    model = models.build("cnn_bn", width=4)
    images, labels = make_digits(n, seed=3)
    one, _ = inference.evaluate(SingleAccelerator(), model, data.Split(images, labels), *data.STATS["mnist"],
                                  batch_size)
    for r in range(world):
        got = out[r][1]
        assert (got["count"], got["confusion"], got["accuracy"]) == (n, one["confusion"], one["accuracy"])
        assert got["loss"] == pytest.approx(one["loss"], rel=1e-6)  # float32 per-batch sums, in other batches


class SingleAccelerator(GlooAccelerator):
    def __init__(self):
        super().__init__(0, 1)

    def reduce(self, tensor, reduction):
        return tensor
