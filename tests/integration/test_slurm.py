"""The sbatch scripts in slurm/, run for real under a one-node SLURM started here (slurmctld + slurmd on localhost).

Proves that slurm/cpu.sbatch runs 2-process CPU DDP to the end; that a job signalled the way SLURM signals it
before a time limit (USR1 to the batch shell) checkpoints, requeues itself, resumes and ends with exactly the
metrics of an uninterrupted run; that slurm/multi_node.sbatch passes that signal through srun to the training;
and (fast, no cluster: fake srun/scontrol/accelerate) that multi_node.sbatch builds the right launch command on
each node of a 2-node allocation, and that every script passes bash -n and shellcheck.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import ENDED, JOB_TIMEOUT_S, REPO, run, submit, usr1_and_wait_for_requeue
from slurm_cluster import LocalSlurm

# Long enough that the job is still training when signalled after its first checkpoint (step 10).
MAX_STEPS = 200
TRAIN_ARGS = ["--config", "configs/train/debug.yaml", f"train.max_steps={MAX_STEPS}", "checkpoint.every_steps=10",
              "train.progress=false"]


def signal_and_wait_for_requeue(slurm: LocalSlurm, job_id: str, run_dir: Path, log_path: Path) -> int:
    """usr1_and_wait_for_requeue for a cpu.sbatch / multi_node.sbatch job of TRAIN_ARGS; returns the step."""
    step, log = usr1_and_wait_for_requeue(slurm, job_id, run_dir)
    assert Path(log_path).read_text() == log
    assert 10 <= step < MAX_STEPS, f"the job was not signalled mid-run (step {step}); raise train.max_steps"
    state = json.loads((run_dir / f"checkpoints/step_{step:08d}/state.json").read_text())
    assert state["global_step"] == step and state["world_size"] == 2
    assert not (run_dir / "summary.json").exists()
    return step


def final_metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"summary": {k: summary[k] for k in ("test_accuracy", "test_loss", "global_step")},
            "metrics.jsonl": {k: last[k] for k in ("test_accuracy", "test_loss", "global_step")}}


@pytest.fixture(scope="session")
def uninterrupted(slurm, tmp_path_factory):
    """One job of TRAIN_ARGS run start to end: (job info, run folder)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    job_id = submit(slurm, tmp, *TRAIN_ARGS, f"run.dir={tmp}/run")
    info = slurm.wait_for(job_id, ENDED, JOB_TIMEOUT_S)
    return info, tmp / "run"


@pytest.mark.slurm
@pytest.mark.slow
def test_cpu_job_runs_two_process_ddp(uninterrupted):
    info, run_dir = uninterrupted
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "COMPLETED", log
    assert info["ExitCode"] == "0:0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["test_count"] == 10000
    assert summary["global_step"] == MAX_STEPS


@pytest.mark.slurm
@pytest.mark.slow
def test_signalled_job_checkpoints_requeues_and_resumes_to_the_same_result(slurm, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(slurm, tmp_path, *TRAIN_ARGS, f"run.dir={run_dir}")
    log_path = tmp_path / f"mnist-cpu-{job_id}.out"
    step = signal_and_wait_for_requeue(slurm, job_id, run_dir, log_path)

    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    info = slurm.wait_for(job_id, ENDED, JOB_TIMEOUT_S, "after release")
    log = log_path.read_text()
    assert info["JobState"] == "COMPLETED", log
    assert f"job {job_id} run 2 on" in log  # --open-mode=append: both runs in one log
    assert f"resumed from {run_dir}/checkpoints/step_{step:08d} at global_step={step}" in log

    _, reference_dir = uninterrupted
    same_config = [(d / "config.yaml").read_text().replace(str(d), "RUN_DIR") for d in (run_dir, reference_dir)]
    assert same_config[0] == same_config[1], "the two jobs ran different configs (was the tree edited meanwhile?)"
    assert final_metrics(run_dir) == final_metrics(reference_dir)


@pytest.mark.slurm
@pytest.mark.slow
def test_multi_node_script_passes_usr1_through_srun(slurm, tmp_path):
    """The same signal path as above with one more level: batch shell -> srun -> each node's shell -> training.

    One node here, its "GPUs" are CPU processes: SLURM_GPUS_ON_NODE is passed in since the node has no GPUs.
    """
    run_dir = tmp_path / "run"
    job_id = submit(slurm, tmp_path, *TRAIN_ARGS, "train.mixed_precision=no", f"run.dir={run_dir}",
                    script="slurm/multi_node.sbatch", options=["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"],
                    env={"SLURM_GPUS_ON_NODE": "2"})
    signal_and_wait_for_requeue(slurm, job_id, run_dir, tmp_path / f"mnist-multi-{job_id}.out")
    slurm.run("scancel", job_id)  # resuming is the test above


# ----------------------------------------------------------------------------- multi-node launch command

FAKE_SRUN = r"""#!/bin/bash
# Records its arguments, then runs the command after its options once per node, as srun would.
printf '%s\n' "$@" > "$RECORD/srun.args"
while [[ $1 == -* ]]; do shift; done
status=0
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" || status=$?
done
exit $status
"""
FAKE_SCONTROL = r"""#!/bin/bash
[[ "$1 $2 $3" == "show hostnames gpu-[07-08]" ]] && printf 'gpu-07\ngpu-08\n'
"""
FAKE_ACCELERATE = r"""#!/bin/bash
printf '%s\n' "$@" > "$RECORD/accelerate.node$SLURM_NODEID"
"""


def test_multi_node_script_builds_each_nodes_launch_command(tmp_path):
    """A 2-node allocation with 4 GPUs each, run by a fake srun that plays both nodes one after the other."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "accelerate": FAKE_ACCELERATE}.items():
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(PATH=f"{fake_bin}{os.pathsep}{env['PATH']}", RECORD=str(tmp_path), SLURM_SUBMIT_DIR=str(REPO),
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-[07-08]", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4")
    run(["bash", "slurm/multi_node.sbatch", "--config", "configs/train/debug.yaml", "train.epochs=3"], base_env=env,
        timeout=60)

    srun_args = (tmp_path / "srun.args").read_text()
    assert "--nodes=2" in srun_args and "--ntasks-per-node=1" in srun_args
    assert '--machine_rank "$SLURM_NODEID"' in srun_args  # left for each node's shell to expand
    for node in (0, 1):
        args = (tmp_path / f"accelerate.node{node}").read_text().splitlines()
        flags = dict(zip(args[1:args.index("train_accel.py"):2], args[2:args.index("train_accel.py"):2]))
        assert args[0] == "launch"
        assert flags == {"--config_file": "configs/accelerate/multi_node.yaml", "--num_machines": "2",
                         "--num_processes": "8", "--machine_rank": str(node), "--main_process_ip": "gpu-07",
                         "--main_process_port": str(20000 + 4242 % 10000), "--mixed_precision": "bf16"}
        # The default run folder is per job, so a requeued job finds its checkpoints.
        assert args[args.index("train_accel.py"):] == ["train_accel.py", "--config", "configs/train/debug.yaml",
                                                       "run.dir=runs/slurm-4242", "train.epochs=3"]


def test_single_node_script_starts_one_process_per_gpu(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "accelerate").write_text(FAKE_ACCELERATE)
    (fake_bin / "accelerate").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(PATH=f"{fake_bin}{os.pathsep}{env['PATH']}", RECORD=str(tmp_path), SLURM_SUBMIT_DIR=str(REPO),
               SLURM_JOB_ID="77", SLURM_NODEID="0", SLURM_GPUS_ON_NODE="4")
    run(["bash", "slurm/single_node.sbatch", "train.epochs=3", "run.dir=runs/mine"], base_env=env, timeout=60)
    args = (tmp_path / "accelerate.node0").read_text().splitlines()
    assert args == ["launch", "--config_file", "configs/accelerate/multi_gpu.yaml", "--num_processes", "4",
                    "--main_process_port", "20077", "train_accel.py", "train.epochs=3", "run.dir=runs/mine"]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "slurm").glob("*.s*")))
def test_scripts_pass_bash_n_and_shellcheck(script):
    run(["bash", "-n", f"slurm/{script}"])
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    run(["shellcheck", "-x", f"slurm/{script}"])
