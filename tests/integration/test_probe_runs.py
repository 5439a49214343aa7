"""Round four's probe, through the real entry points: a Ctrl-C while the first command imports, a one-cycle run of
four steps, a full disk at the final save, outputs that cannot be written (a missing folder, a read-only mount),
an exported model evaluated in the precision of the number it is compared with, checkpoint files of one mode, a
killed launcher whose workers stop by themselves, and a SLURM job whose launcher reports the preemption as a
failure. Each ends in one line and a non-zero exit, or does what it says, and leaves nothing half written."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import (
    ROOT,
    VENV_BIN,
    ddp2_launcher,
    environment,
    gone,
    one_line_error,
    popen_train,
    run,
    run_cli,
    slow_overrides,
    tiny_overrides,
    tmpfs,
    wait_for_checkpoint,
    worker_pids,
)

FAULTS = str(ROOT / "tests" / "fault_injection")


def one_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- Ctrl-C in the first second


def wait_until_it_loads_torch(proc, timeout_s: float = 120.0) -> None:
    """Until the process has mapped libtorch, i.e. is inside `import torch`: a moment fixed by what the process
    does, not by the clock (a sleep of 0.3 s landed before `main` on a loaded machine, inside Python's own start)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the command ended before it imported torch"
        try:
            if any("libtorch" in m.path for m in psutil.Process(proc.pid).memory_maps()):
                return
        except psutil.Error:
            pass
        time.sleep(0.005)
    raise AssertionError(f"no libtorch in the process after {timeout_s} s")


@pytest.mark.parametrize("after_s", [0.0, 0.3])
def test_a_ctrl_c_while_the_command_imports_is_one_line_and_exit_130(tiny_idx, tmp_path, after_s):
    """The parser used to import the training module: a Ctrl-C in the first second was a 73-line traceback from
    inside `import torch`."""
    cmd = [str(VENV_BIN / "mnist-dist"), "train", *tiny_overrides(tiny_idx, tmp_path / "run")]
    # Ctrl-C as a terminal delivers it: a suite started in the background of a shell without job control (`.ci/run
    # &`) ignores SIGINT, and an ignored SIGINT stays ignored through exec (the command then trained to its end)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until_it_loads_torch(proc)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mnist-dist train: interrupted"), err


# ----------------------------------------------------------------------------- one-cycle on a tiny run


def test_one_cycle_trains_four_steps_and_refuses_two_in_one_line_leaving_no_folder(tiny_idx, tmp_path):
    """100 training images in batches of 64 for 2 epochs: 4 optimizer steps, where OneCycleLR divided by zero."""
    tiny = ["data.val_size=1100", "train.per_device_batch_size=64", "train.scheduler=onecycle"]
    run_dir = tmp_path / "four"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, *tiny, "train.epochs=2")])
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 4
    run_dir = tmp_path / "two"
    line = one_line(run_cli(["train", *tiny_overrides(tiny_idx, run_dir, *tiny, "train.epochs=1")], check=False))
    assert "train.scheduler=onecycle needs at least 3 optimizer steps" in line and "this run has 2" in line
    assert not run_dir.exists()  # the folder the run made for itself is gone with it


# ----------------------------------------------------------------------------- a full disk at the final save


def test_a_full_disk_at_the_final_save_is_one_line_and_keeps_the_checkpoints(tiny_idx, tmp_path):
    with tmpfs(tmp_path / "disk", "size=8m") as disk:
        run_dir = disk / "run"
        proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.epochs=1")],
                       env={"PYTHONPATH": FAULTS, "MNIST_DIST_FILL_DISK": "1"}, check=False)
        line = one_line(proc)
        assert f"no space left on device for {run_dir / 'model.safetensors'}" in line, line
        assert "the checkpoints written so far are intact" in line
        assert (run_dir / "checkpoints" / "step_00000020" / "manifest.json").is_file()
        assert not list(run_dir.glob(".model.safetensors.*"))  # no half-written model
        assert not (run_dir / "summary.json").exists()


# ----------------------------------------------------------------------------- outputs that cannot be written


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_idx):
    """One finished run (debug-sized), for the commands that read a run folder."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.epochs=1")])
    return run_dir


@pytest.fixture
def read_only_run(tmp_path, trained):
    """The trained run folder on a read-only mount (root ignores mode bits, so a chmod would prove nothing)."""
    with tmpfs(tmp_path / "ro", "size=16m") as mnt:
        shutil.copytree(trained, mnt / "run", ignore=shutil.ignore_patterns("checkpoints"))
        run(["mount", "-o", "remount,ro", str(mnt)])
        yield mnt / "run"


def test_outputs_that_cannot_be_written_are_one_line_each(capsys, tmp_path, trained, read_only_run, tiny_idx):
    data = f"data.dir={tiny_idx}"
    ro = read_only_run.parent
    picture = tmp_path / "a.png"
    from PIL import Image
    Image.new("L", (28, 28), 255).save(picture)
    # eval in a process of its own: Accelerate's state is one per process, and an earlier in-process run in another
    # precision would refuse the model's own.
    proc = run_cli(["eval", str(trained), "--png", str(tmp_path / "missing_dir" / "x.png"), data], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "No such file or directory" in proc.stderr and "missing_dir/x.png" in proc.stderr
    cases = [
        (["predict", str(trained), str(picture), "--show", str(ro / "shown")], str(ro / "shown")),
        (["export", str(trained), "--format", "onnx", "--out", str(ro / "m.onnx")], str(ro / "m.onnx")),
        (["export", str(trained), "--format", "torchscript", "--out", str(ro / "m.pt")], str(ro / "m.pt")),
        (["export", str(trained), "--format", "hub", str(ro / "hub")], str(ro / "hub")),
        (["export", str(read_only_run), "--format", "onnx"], str(read_only_run)),
        (["report", str(read_only_run)], str(read_only_run)),
        (["scripts", "--write", str(ro / "launch")], str(ro / "launch")),
    ]
    for argv, where in cases:
        err = one_line_error(capsys, argv, where)
        assert "Read-only file system" in err or "No such file or directory" in err, err
    assert sorted(p.name for p in ro.iterdir()) == ["run"]


# ----------------------------------------------------------------------------- evaluation's precision


def test_eval_of_an_exported_model_reproduces_the_number_its_card_shows(tiny_idx, tmp_path):
    """Trained in fp32 (as the quick start's launch YAML asks), exported without its config.yaml: eval ran in
    bf16 by `auto` on a CPU that has it and gave another number than the card."""
    run_dir, hub = tmp_path / "run", tmp_path / "hub"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.epochs=1", "train.mixed_precision=no")])
    run_cli(["export", str(run_dir), "--format", "hub", str(hub)])
    assert json.loads((hub / "config.json").read_text())["mixed_precision"] == "no"
    summary = json.loads((run_dir / "summary.json").read_text())
    out = run_cli(["eval", str(hub), "--json", f"data.dir={tiny_idx}", "data.source=idx"]).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["accuracy"] == summary["test_accuracy"]  # the loss: summed in batches of another size
    assert result["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert f"{summary['test_accuracy']:.4f}" in (hub / "README.md").read_text()


# ----------------------------------------------------------------------------- checkpoint files


def test_every_file_of_a_checkpoint_has_the_same_mode(trained):
    """safetensors made the model file 0600 while every other file was 0644."""
    files = [p for p in (trained / "checkpoints").rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


# ----------------------------------------------------------------------------- a launcher that is killed


@pytest.mark.slow
def test_workers_stop_with_a_checkpoint_when_their_launcher_is_killed(tiny_idx, tmp_path):
    """SIGKILL to `accelerate launch` left both workers training to the end, holding the run folder's lock."""
    run_dir = tmp_path / "run"
    proc = popen_train(slow_overrides(tiny_idx, run_dir, "train.epochs=20"), launcher=ddp2_launcher(29651))
    try:
        wait_for_checkpoint(run_dir, proc)
        workers = worker_pids(proc.pid)
        assert sorted(workers) == [0, 1], workers
        proc.kill()
        deadline = time.monotonic() + 60
        while not all(gone(pid) for pid in workers.values()):
            assert time.monotonic() < deadline, "the workers trained on without their launcher"
            time.sleep(0.1)
    finally:
        proc.kill()
        for pid in worker_pids(proc.pid).values():
            os.kill(pid, signal.SIGKILL)
    out = proc.stdout.read() if proc.stdout else ""
    assert "preempted by its launcher's end: checkpoint saved at global_step" in out, out[-3000:]
    assert not (run_dir / ".lock").exists()  # released: the same command resumes at once
    resumed = run_cli(["train", *slow_overrides(tiny_idx, run_dir, "train.epochs=20", "train.max_steps=1")],
                      launcher=ddp2_launcher(29652), check=False)
    assert "resumed from" in resumed.stdout, resumed.stdout[-2000:] + resumed.stderr[-2000:]


# ----------------------------------------------------------------------------- SLURM: the launcher's exit


@pytest.mark.slurm
@pytest.mark.slow
def test_a_preempted_job_that_is_not_requeued_ends_as_preempted_not_failed(slurm, tiny_idx, tmp_path):
    """`accelerate launch` exits 1 (torch's ChildFailedError) when its workers exit 75 after a preemption: the
    sbatch script reports 75, the preemption it is."""
    from helpers import ENDED, JOB_TIMEOUT_S, submit, wait_for_first_checkpoint

    run_dir = tmp_path / "run"
    job = submit(slurm, tmp_path, *slow_overrides(tiny_idx, run_dir, "train.epochs=20", "run.requeue=false"))
    wait_for_first_checkpoint(slurm, job, run_dir)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    info = slurm.wait_for(job, ENDED, JOB_TIMEOUT_S, "after USR1")
    log = open(info["StdOut"]).read()
    assert info["ExitCode"] == "75:0", f"{info}\n{log[-3000:]}"
    assert "ending as preempted (75)" in log and "preempted by SIGUSR1" in log, log[-3000:]



def test_a_changed_batch_is_refused_in_one_line_not_taken_for_a_damaged_checkpoint(tiny_idx, tmp_path):
    """The steps-per-epoch check of state.json ran before the config check: a checkpoint past epoch 0 resumed with
    another batch size was set aside as damaged ("no checkpoint is whole") instead of the one-line refusal."""
    run_dir = tmp_path / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.epochs=1")])  # ends at epoch 1, step 0, step 20
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.epochs=1", "train.per_device_batch_size=25")],
                   check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "was trained with another config: train.per_device_batch_size" in proc.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000020"]


def test_eval_of_a_model_evaluated_in_fp16_falls_back_to_fp32_on_a_cpu(trained, tiny_idx, tmp_path):
    """eval takes the precision model.json records; fp16 (a GPU run's) on a machine without a GPU was refused
    with a message about a flag the user never gave."""
    folder = tmp_path / "gpu_model"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoints", "best"))
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "mixed_precision": "fp16"}))
    proc = run_cli(["eval", str(folder), "--json", f"data.dir={tiny_idx}", "data.source=idx"])
    assert "note: the model's run evaluated in fp16 on a GPU; without one here, fp32" in proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1])["count"] > 0
