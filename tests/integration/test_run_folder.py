"""The run folder is a contract: one run writes it at a time (a lock that a killed run does not leave blocking
forever, and that works across hosts), and a resume honours keys that do not change the trajectory but refuses,
in one line listing each old and new value, the keys that do, before anything in the folder is rewritten. Every
file and folder is written whole or not at all: a writer that fails leaves the old content and no temporary."""
import json
import os
import shutil
import socket
import threading
import time

import pytest
import yaml

from mnist_dist import config
from mnist_dist.run import atomic, checkpoint, rundir
from mnist_dist.errors import UserError
from mnist_dist.run.lock import RunLock

from helpers import popen_train, run_cli, slow_overrides, tiny_overrides, wait_for_checkpoint

# ----------------------------------------------------------------------------- the lock


def test_a_second_run_into_a_busy_folder_stops_at_once_and_a_killed_run_does_not_block(tiny_idx, tmp_path):
    run_dir = tmp_path / "busy"
    first = popen_train(slow_overrides(tiny_idx, run_dir, "train.seed=1"))
    try:
        wait_for_checkpoint(run_dir, first)
        t0 = time.time()
        second = run_cli(["train", *slow_overrides(tiny_idx, run_dir, "train.seed=2")], check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"in use by pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert time.time() - t0 < 30
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == 1  # nothing mixed
    finally:
        first.kill()  # SIGKILL: the lock stays behind
        first.wait()
    assert (run_dir / rundir.LOCK).exists()
    out = run_cli(["train", *slow_overrides(tiny_idx, run_dir, "train.seed=1")]).stdout
    assert f"taking over {run_dir / rundir.LOCK}: pid {first.pid} on this host has ended" in out
    assert "resumed from" in out and not (run_dir / rundir.LOCK).exists()  # released at the end


def write_lock(run_dir, age_s: float, **holder):
    path = run_dir / rundir.LOCK
    path.write_text(json.dumps({"pid": 1, "host": "node-b", "since": "then", **holder}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_lock_from_another_host_blocks_while_it_is_fresh_and_is_taken_over_when_stale(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    write_lock(tmp_path, age_s=5, slurm_job="77")
    with pytest.raises(UserError, match=r"in use by pid 1 on node-b \(since then, SLURM job 77\)"):
        RunLock.acquire(tmp_path)
    write_lock(tmp_path, age_s=RunLock.STALE_S + 10)  # its node died: nobody refreshes it
    RunLock.acquire(tmp_path).release()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued onto another node
    write_lock(tmp_path, age_s=5, slurm_job="77")
    lock = RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / rundir.LOCK).exists()


def test_the_lock_is_refreshed_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "HEARTBEAT_S", 0.05)
    lock = RunLock.acquire(tmp_path)
    os.utime(tmp_path / rundir.LOCK, (0, 0))
    time.sleep(0.3)
    assert time.time() - (tmp_path / rundir.LOCK).stat().st_mtime < 5
    lock.release()


def make_damaged_lock(run_dir, kind: str, age_s: float):
    """A .lock that names no holder, as a crash, a full disk or another tool leaves one."""
    path = run_dir / rundir.LOCK
    if kind == "dir":
        path.mkdir()
    elif kind == "dir_with_files":
        path.mkdir()
        (path / "notes.txt").write_text("not ours")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_loop":
        os.symlink(path.name, path)
    else:
        path.write_text({"garbage": "\x00garbage\n", "list": "[1,2,3]", "empty": "", "no_pid": '{"host": "x"}'}[kind])
    os.utime(path, (time.time() - age_s,) * 2, follow_symlinks=False)
    return path


DAMAGED = {"garbage": "not a lock record: '\\x00garbage", "list": "not a lock record: '[1,2,3]'", "empty": "empty",
           "no_pid": "not a lock record", "dir": "a directory, not a file",
           "dir_with_files": "a directory, not a file", "fifo": "a FIFO, not a file",
           "symlink_loop": "a symlink, not a file"}


def acquire_within(run_dir, seconds: float = 10):
    """RunLock.acquire in a thread: (lock or the exception), failing the test if it blocks (a FIFO read would)."""
    result = []

    def attempt():
        try:
            result.append(RunLock.acquire(run_dir))
        except Exception as e:  # handed back to the test
            result.append(e)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"RunLock.acquire blocked for {seconds} s"
    return result[0]


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_lock_is_reported_as_damaged_never_as_a_holder(tmp_path, kind, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    make_damaged_lock(tmp_path, kind, age_s=3)  # young: a run may be creating or refreshing it
    refused = acquire_within(tmp_path)
    assert isinstance(refused, UserError), refused
    message = str(refused)
    assert f"{tmp_path / rundir.LOCK} is damaged ({DAMAGED[kind]}" in message and "last changed 3 s ago" in message
    assert "in use by" not in message and "None" not in message and "\n" not in message
    path = tmp_path / rundir.LOCK  # the advice, followed: delete it
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    RunLock.acquire(tmp_path).release()


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_an_old_damaged_lock_of_any_file_type_is_taken_over(tmp_path, kind, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    make_damaged_lock(tmp_path, kind, age_s=RunLock.STALE_S + 10)  # as old as a stale lock of a dead host
    lock = acquire_within(tmp_path)
    assert isinstance(lock, RunLock), lock
    out = capsys.readouterr().out
    assert f"taking over {tmp_path / rundir.LOCK}: damaged ({DAMAGED[kind]}" in out
    assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not os.path.lexists(tmp_path / rundir.LOCK) and not (tmp_path / (rundir.LOCK + ".takeover")).exists()
    if kind == "dir_with_files":  # someone's files are moved aside, not deleted
        (aside,) = tmp_path.glob(".lock.damaged-*")
        assert (aside / "notes.txt").read_text() == "not ours" and f"moved to {aside}" in out


def test_a_damaged_lock_is_taken_over_once_three_refreshes_are_missed(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert RunLock.DAMAGED_S == 3 * RunLock.HEARTBEAT_S
    make_damaged_lock(tmp_path, "empty", age_s=RunLock.DAMAGED_S - 5)
    with pytest.raises(UserError, match="is damaged"):
        RunLock.acquire(tmp_path)
    os.utime(tmp_path / rundir.LOCK, (time.time() - RunLock.DAMAGED_S - 5,) * 2)
    RunLock.acquire(tmp_path).release()


def test_a_fifo_lock_is_one_line_from_the_real_cli_and_does_not_hang(tiny_idx, tmp_path):
    run_dir = tmp_path / "fifo"
    run_dir.mkdir()
    make_damaged_lock(run_dir, "fifo", age_s=0)
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir)], check=False, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "is damaged (a FIFO, not a file" in proc.stderr


# ----------------------------------------------------------------------------- what a resume may change


@pytest.fixture(scope="module")
def stopped_run(tiny_idx, tmp_path_factory):
    """A run stopped by train.max_steps after a periodic checkpoint: the folder a resume starts from."""
    run_dir = tmp_path_factory.mktemp("contract") / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")])
    return run_dir


@pytest.mark.parametrize("changes, listed", [
    (["train.lr=0.02"], ["train.lr 0.01 -> 0.02"]),
    (["data.name=fashion_mnist"], ["data.name 'mnist' -> 'fashion_mnist'"]),
    (["model.kwargs={width: 8}"], ["model.kwargs {'width': 4} -> {'width': 8}"]),
    (["train.per_device_batch_size=25", "train.seed=3"], ["train.per_device_batch_size 50 -> 25", "train.seed 0 -> 3"]),
    (["train.epochs=4"], ["train.epochs 2 -> 4", "onecycle schedule is shaped by the run's length"]),
])
def test_a_resume_that_would_change_the_trajectory_is_refused_in_one_line(tiny_idx, stopped_run, changes, listed):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    proc = run_cli(["train", *tiny_overrides(tiny_idx, stopped_run, *changes)], check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for words in listed:
        assert words in proc.stderr
    assert "pickle" not in proc.stderr
    after = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    assert after == before  # config.yaml, metrics.jsonl untouched; no lock left


def test_a_resume_honours_the_keys_that_may_change(tiny_idx, tmp_path):
    run_dir = tmp_path / "r"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")])
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.log_every_steps=3", "checkpoint.every_steps=7",
                                            "train.eval_batch_size=64", "run.guard_every_steps=2")]).stdout
    assert "resumed from" in out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["log_every_steps"] == 3 and saved["checkpoint"]["every_steps"] == 7
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 40  # 2 epochs of 20 steps


def test_more_epochs_continue_a_length_free_schedule(tiny_idx, tmp_path):
    run_dir = tmp_path / "longer"
    args = ["train.scheduler=none", "train.epochs=1"]
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, *args)])
    first = json.loads((run_dir / "summary.json").read_text())["global_step"]
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.scheduler=none", "train.epochs=3")]).stdout
    assert "resumed from" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 3 * first and summary["epochs"] == 3


def test_resume_conflicts_lists_only_trajectory_keys():
    old = config.Config()
    new = config.load(None, ["train.lr=0.1", "tracking.backend=wandb", "run.dir=elsewhere", "data.dir=/x",
                             "train.progress=false"])
    assert config.resume_conflicts(config.to_dict(old), new) == ["train.lr 0.005 -> 0.1"]


def test_a_takeover_in_progress_is_left_alone_and_release_keeps_a_lock_that_is_not_ours(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    write_lock(tmp_path, age_s=RunLock.STALE_S + 10)
    (tmp_path / (rundir.LOCK + ".takeover")).write_text("")  # another run is taking it over right now
    with pytest.raises(UserError, match="in use"):
        RunLock.acquire(tmp_path)
    (tmp_path / (rundir.LOCK + ".takeover")).unlink()
    lock = RunLock.acquire(tmp_path)
    write_lock(tmp_path, age_s=0)  # taken from us meanwhile
    lock.release()
    assert json.loads((tmp_path / rundir.LOCK).read_text())["host"] == "node-b"


def test_a_fresh_start_in_an_old_folder_sets_the_earlier_run_aside(tiny_idx, tmp_path):
    run_dir = tmp_path / "old"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=30")])
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10",
                                            "checkpoint.resume=never")]).stdout
    previous = list(run_dir.glob("previous-*"))
    assert len(previous) == 1 and f"moved to {previous[0]}" in out
    assert [c.name for c in checkpoint.complete_checkpoints(previous[0])] == ["step_00000025", "step_00000030"]
    # The new run's checkpoints are not pruned in favour of the old run's higher steps.
    assert [c.name for c in checkpoint.complete_checkpoints(run_dir)] == ["step_00000005", "step_00000010"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_resume_at_max_steps_trains_no_further_step(tiny_idx, tmp_path):
    run_dir = tmp_path / "at_max"
    args = tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")
    run_cli(["train", *args])
    first = (run_dir / "model.safetensors").read_bytes()
    out = run_cli(["train", *args]).stdout
    assert "resumed from" in out and "global_step=10" in out
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 10
    assert (run_dir / "model.safetensors").read_bytes() == first


# ----------------------------------------------------------------------------- whole-file writes


def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, existed):
    target = tmp_path / "model.safetensors"
    if existed:
        target.write_bytes(b"the old model")

    def half_then_full_disk(path, content):
        with path.open("wb") as f:
            f.write(content[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "write_bytes", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_bytes(target, b"the new model")
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):  # a writer that needs a file name, stopped by Ctrl-C
        with atomic.replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == (["model.safetensors"] if existed else [])
    if existed:
        assert target.read_bytes() == b"the old model"


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "digits"
    with pytest.raises(RuntimeError):
        with atomic.replacing_folder(out) as tmp:
            (tmp / "train-images-idx3-ubyte").write_bytes(b"half")
            raise RuntimeError("a bad CSV row")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()  # an empty folder is replaced
    with atomic.replacing_folder(out) as tmp:
        (tmp / "train-images-idx3-ubyte").write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["digits"] and (out.stat().st_mode & 0o777) == 0o755
    assert [p.name for p in out.iterdir()] == ["train-images-idx3-ubyte"]
