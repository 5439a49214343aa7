"""Beyond one machine, for real: slurm/multi_node.sbatch on a 2-node SLURM cluster made on this machine (two
slurmd, each in its own UTS and mount namespace: its own hostname and /dev/shm; loopback only).

Proves cross-node DDP (world_size 2, one rank per node hostname, gloo because the nodes share no /dev/shm, the
same test metrics as one node with the same global batch); preemption across nodes (USR1 to the batch shell: both
ranks checkpoint at one step, the job requeues itself and ends bit-identical to an uninterrupted 2-node job); and
node loss (SIGKILL of the training on the second node: the whole job ends within a measured bound with one line
saying what happened, leaves no process and no /dev/shm file, and a resubmission resumes to the same result).
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from helpers import (
    ENDED,
    JOB_TIMEOUT_S,
    assert_same_run,
    needs_fashion,
    pids_mentioning,
    run_cli,
    submit,
    training_pids,
    usr1_and_wait_for_requeue,
    wait_until,
)
from slurm_cluster import LocalSlurm, missing_programs

NODES = ["node1", "node2"]
STEPS = 200
TRAIN = ["--config", "configs/train/debug.yaml", f"train.max_steps={STEPS}", "checkpoint.every_steps=10",
         "train.progress=false", "train.global_batch_size=64"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow, needs_fashion]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_programs(nodes=2)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("the 2-node cluster needs root (unshare --mount, tmpfs /dev/shm per node)")
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm2"), nodes=NODES, cpus_per_node=1)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
    assert not training_pids(), "a training process outlived the cluster"
    time.sleep(2)  # slurmstepd of the last job may take a moment
    left = pids_mentioning(str(slurm.conf))
    assert not left, f"processes of the 2-node cluster left: {left}"


def submit_two_nodes(cluster: LocalSlurm, tmp_path: Path, *args: str) -> str:
    """slurm/multi_node.sbatch of TRAIN (then `args`) on both nodes, one CPU rank each; returns the job id."""
    return submit(cluster, tmp_path, *TRAIN, *args, script="slurm/multi_node.sbatch",
                  options=["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"])


def shm_files(cluster: LocalSlurm) -> dict[str, list[str]]:
    """Each node's own /dev/shm, seen through its slurmd's root (its mount namespace)."""
    out = {}
    for node in NODES:
        pid = int((cluster.root / f"slurmd-{node}.pid").read_text())
        out[node] = os.listdir(f"/proc/{pid}/root/dev/shm")
    return out


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_nodes")
    job_id = submit_two_nodes(cluster, tmp, f"run.dir={tmp}/run")
    info = cluster.wait_for(job_id, ENDED, JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", Path(info["StdOut"]).read_text()[-5000:]
    return tmp / "run"


def test_cross_node_ddp_matches_one_node_with_the_same_global_batch(uninterrupted, tmp_path):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["hostnames"] == NODES
    assert summary["allreduce"] == "gloo"  # each node has its own /dev/shm: shared memory cannot work
    assert summary["global_batch_size"] == 64 and summary["per_device_batch_size"] == 32
    one = tmp_path / "one_node"
    run_cli(["train", *TRAIN, f"run.dir={one}"])
    single = json.loads((one / "summary.json").read_text())
    assert single["test_count"] == summary["test_count"] == 10000
    # Not equal: BatchNorm normalises over each process's 32 images rather than all 64, and the gradient sum is
    # reduced in another order. Measured: test loss within ~2% and accuracy within ~1 point; allowed 5% and 3.
    assert abs(single["test_loss"] - summary["test_loss"]) <= 0.05 * single["test_loss"], (single, summary)
    assert abs(single["test_accuracy"] - summary["test_accuracy"]) <= 0.03
    print(f"2 nodes vs 1 node, global batch 64: test loss {summary['test_loss']:.4f} vs {single['test_loss']:.4f}, "
          f"accuracy {summary['test_accuracy']:.4f} vs {single['test_accuracy']:.4f}")


def test_preemption_across_nodes_requeues_and_ends_bit_identical(cluster, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit_two_nodes(cluster, tmp_path, f"run.dir={run_dir}")
    step, _ = usr1_and_wait_for_requeue(cluster, job_id, run_dir)
    state_json = json.loads((run_dir / f"checkpoints/step_{step:08d}/state.json").read_text())
    assert state_json["world_size"] == 2 and 10 <= step < STEPS
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    info = cluster.wait_for(job_id, ENDED, JOB_TIMEOUT_S, "after release")
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "COMPLETED", log[-5000:]
    assert f"resumed from {run_dir}/checkpoints/step_{step:08d}" in log
    assert_same_run(uninterrupted, run_dir)


def test_losing_a_node_ends_the_job_cleanly_and_a_resubmission_resumes(cluster, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit_two_nodes(cluster, tmp_path, f"run.dir={run_dir}")
    wait_until(lambda: (run_dir / "checkpoints/step_00000020/state.json").is_file(), JOB_TIMEOUT_S, "checkpoints")
    victims = training_pids("node2")
    assert victims, "no training process on node2"
    t0 = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    info = cluster.wait_for(job_id, ENDED, 120, "after node2's training was killed")
    ended_s = time.monotonic() - t0
    log = Path(info["StdOut"]).read_text()
    print(f"node loss: the job ended {ended_s:.1f} s after SIGKILL on node2 ({info['JobState']})")
    assert info["JobState"] == "FAILED" and ended_s < 90, log[-5000:]
    assert re.search(r"mnist-dist train: error: (another rank is gone|rank 1 \(pid \d+\) is gone)", log), log[-5000:]
    wait_until(lambda: not training_pids(), 30, "no training process left")
    assert shm_files(cluster) == {n: [] for n in NODES}
    assert not (run_dir / "summary.json").exists()
    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1].name
    job_id = submit_two_nodes(cluster, tmp_path, f"run.dir={run_dir}")  # the same command again
    info = cluster.wait_for(job_id, ENDED, JOB_TIMEOUT_S)
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "COMPLETED" and f"resumed from {run_dir}/checkpoints/{last}" in log, log[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(summary["train_samples_per_rank"]) == STEPS * 64  # no sample repeated or skipped
    assert_same_run(uninterrupted, run_dir)
