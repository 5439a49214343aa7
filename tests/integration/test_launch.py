"""Every launch does what it says. A launch that asks Accelerate for FSDP, DeepSpeed, Megatron-LM or tensor
parallelism is refused before any work, in one line (not silently turned into DDP, as Accelerate does on a CPU).
Distributed evaluation runs the same number of forward passes, on batches of the same shapes, on every rank when
the shares straddle a batch boundary, and its metrics stay exact (equal to one process's)."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mnist_dist import metrics, models
from mnist_dist.data import sources
from mnist_dist.train import runtime
from mnist_dist.errors import UserError

from helpers import ROOT, VENV_BIN, make_digits, popen, run, run_cli, tiny_overrides, worker_pids

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
    proc = run(cmd, timeout=300, check=False)
    assert proc.returncode != 0  # torchrun's own exit status for failed workers
    ours = [line for line in proc.stderr.splitlines() if line.startswith("mnist-dist")]
    assert len(ours) == 1 and ours[0].startswith(REFUSED + "FSDP"), proc.stderr  # rank 0 only, one line
    # The workers exit as a user error does (the agent may stop the second one before it gets there).
    assert "exitcode  : 2" in proc.stderr and "[rank" not in proc.stderr, proc.stderr  # no worker traceback
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
    """What metrics.exact_metrics asks of an Accelerator, over a real gloo process group."""

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
    result, _ = metrics.exact_metrics(GlooAccelerator(rank, world), model, sources.Split(images, labels),
                                   *sources.STATS["mnist"], batch_size)
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
    per_rank = -(-n // world)  # ceil division, twice
    assert len(batches[0]) == -(-per_rank // batch_size)
    # The metrics are exact: what one process computes over the whole split.
    torch.manual_seed(0)
    model = models.build("cnn_bn", width=4)
    images, labels = make_digits(n, seed=3)
    one, _ = metrics.exact_metrics(SingleAccelerator(), model, sources.Split(images, labels), *sources.STATS["mnist"],
                                  batch_size)
    for r in range(world):
        got = out[r][1]
        assert (got.count, got.confusion, got.accuracy) == (n, one.confusion, one.accuracy)
        assert got.loss == pytest.approx(one.loss, rel=1e-6)  # float32 per-batch sums, in other batches


class SingleAccelerator(GlooAccelerator):
    def __init__(self):
        super().__init__(0, 1)

    def reduce(self, tensor, reduction):
        return tensor


# ----------------------------------------------------------------------------- torchrun's elastic agent

FAULTS = str(ROOT / "tests" / "fault_injection")


def torchrun(port: int, run_dir, tiny_idx, *extra, env=None, background=False, restarts=1):
    """The issue's command: 2 workers, one restart allowed, torchrun's fault-tolerant c10d rendezvous."""
    cmd = [str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", "--max-restarts", str(restarts), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--monitor-interval", "0.2", str(ROOT / "train_accel.py"),
           *tiny_overrides(tiny_idx, run_dir, "train.per_device_batch_size=10", "checkpoint.every_steps=20",
                           "tracking.backend=none", *extra)]
    return popen(cmd, env) if background else run(cmd, env, timeout=400, check=False)


def read_weights(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "model.safetensors"))


def test_a_restart_of_the_same_elastic_job_takes_over_its_lock(tmp_path, monkeypatch):
    """Rank 0 of attempt 0 died on another host: attempt 1 of the same job takes the lock at once (it used to
    wait 120 s, and every refusal meanwhile used up a restart); another job, or the same attempt, is refused."""
    import time

    from mnist_dist.run import rundir
    from mnist_dist.run.lock import RunLock
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)

    def holder(job, attempt):
        path = tmp_path / rundir.LOCK
        path.write_text(json.dumps({"pid": 1, "host": "node-b", "since": "then", "elastic_job": job,
                                    "elastic_attempt": attempt}))
        os.utime(path, (time.time() - 5, time.time() - 5))  # fresh: refreshed 5 s ago

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    for job, attempt in (("job-8", 0), ("job-7", 1)):
        holder(job, attempt)
        with pytest.raises(UserError, match="in use by pid 1 on node-b"):
            RunLock.acquire(tmp_path)
    holder("job-7", 0)
    lock = RunLock.acquire(tmp_path)
    taken = json.loads((tmp_path / rundir.LOCK).read_text())
    assert (taken["pid"], taken["elastic_job"], taken["elastic_attempt"]) == (os.getpid(), "job-7", 1)
    lock.release()


@pytest.mark.slow
def test_elastic_restart_resumes_bit_identical(tiny_idx, tmp_path):
    """A fault in rank 1 at step 30, on the first attempt only: the agent restarts both workers once, they
    resume from step 20's checkpoint (on a fresh store namespace: before, they hung in init_process_group) and
    end with the weights of a run that never failed."""
    ref = torchrun(29632, tmp_path / "ref", tiny_idx)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "run"
    proc = torchrun(29633, run_dir, tiny_idx, env={"PYTHONPATH": FAULTS, "MNIST_DIST_INJECT_FAULT": "1:30:0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "injected fault on rank 1" in out
    assert out.count("elastic_restart=0") == 1 and out.count("elastic_restart=1") == 1, out[-5000:]  # one restart
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000020'} at global_step=20" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["elastic_restart_count"] == 1 and summary["world_size"] == 2
    a, b = read_weights(tmp_path / "ref"), read_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


@pytest.mark.slow
def test_two_elastic_restarts_each_on_store_keys_of_their_own_end_bit_identical(tiny_idx, tmp_path):
    """Faults in attempts 0 (step 30) and 1 (step 45): the second restart is the one that would find the first
    restart's keys in the agent's store if every attempt after the first shared one namespace (a first restart
    always starts clean). Both restarts resume and the run ends with the weights of one that never failed."""
    ref = torchrun(29636, tmp_path / "ref", tiny_idx)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "run"
    env = {"PYTHONPATH": FAULTS, "MNIST_DIST_INJECT_FAULT": "1:30:0,1:45:1"}
    proc = torchrun(29637, run_dir, tiny_idx, env=env, restarts=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert out.count("injected fault on rank 1") >= 2, out[-5000:]
    assert [out.count(f"elastic_restart={k}") for k in (0, 1, 2)] == [1, 1, 1], out[-5000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000040'} at global_step=40" in out
    assert json.loads((run_dir / "summary.json").read_text())["elastic_restart_count"] == 2
    a, b = read_weights(tmp_path / "ref"), read_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


@pytest.mark.slow
def test_elastic_restart_before_first_checkpoint_keeps_the_wandb_run(tiny_idx, tmp_path):
    """A fault before any checkpoint: the restart starts over, in the same run folder (the lock of the dead
    attempt is taken over), and continues the same W&B run (the id is the folder's, not the attempt's)."""
    run_dir = tmp_path / "run"
    env = {"PYTHONPATH": FAULTS, "MNIST_DIST_INJECT_FAULT": "1:5:0", "WANDB_MODE": "offline",
           "HOME": str(tmp_path / "home"), "WANDB_API_KEY": "x" * 40}
    proc = torchrun(29634, run_dir, tiny_idx, "tracking.backend=wandb", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert out.count("elastic_restart=1") == 1 and "resumed from" not in out
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs  # one per attempt...
    ids = {r.name.rsplit("-", 1)[1] for r in runs}
    assert ids == {(run_dir / ".tracker_run_id").read_text().strip()}, ids  # ...of one W&B run


@pytest.mark.slow
def test_preemption_under_torchrun_ends_the_agent(tiny_idx, tmp_path):
    """SIGUSR1 to one worker: both save a checkpoint and exit 75, and the agent ends instead of restarting them
    (it would otherwise spend its restart training on a machine being taken away)."""
    import time
    run_dir = tmp_path / "run"
    proc = torchrun(29635, run_dir, tiny_idx, "train.epochs=20", "checkpoint.every_steps=5", background=True)
    try:
        deadline = time.time() + 180
        while not (run_dir / "checkpoints").is_dir() or not any((run_dir / "checkpoints").glob("step_*")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint"
            time.sleep(0.1)
        workers = worker_pids(proc.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], 10)  # SIGUSR1
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "preempted by" in out and out.count("elastic_restart=0") == 1, out[-5000:]
    assert "elastic_restart=1" not in out, out[-5000:]  # never restarted
    assert "stopping torchrun's elastic agent" in out
    assert proc.returncode != 0
    assert not (run_dir / "summary.json").exists()  # not finished: resumable from its checkpoint


@pytest.mark.slow
def test_the_elastic_yaml_restarts_under_accelerate_launch(tiny_idx, tmp_path):
    """configs/accelerate/elastic.yaml (c10d rendezvous) with --max_restarts 1, as its comment says to launch it."""
    run_dir = tmp_path / "run"
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/elastic.yaml"),
           "--max_restarts", "1", "--main_process_port", "29636", str(ROOT / "train_accel.py"),
           *tiny_overrides(tiny_idx, run_dir, "train.per_device_batch_size=10", "checkpoint.every_steps=20",
                           "tracking.backend=none")]
    proc = run(cmd, {"PYTHONPATH": FAULTS, "MNIST_DIST_INJECT_FAULT": "1:30:0"}, timeout=400, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert out.count("elastic_restart=1") == 1 and "at global_step=20" in out, out[-5000:]
    assert json.loads((run_dir / "summary.json").read_text())["elastic_restart_count"] == 1
