"""Checkpoints that fail: a save interrupted partway (an exception, or SIGKILL during the write or between the
commit's renames) never leaves a folder under the final step_N name and never loses a committed step_N; a
damaged newest checkpoint (a file missing, truncated, rewritten) is reported in one line naming the file, set
aside as damaged-step_N, and the run resumes from the previous one; when none is whole, the advice given works."""
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mnist_dist.run import checkpoint
from mnist_dist.run.checkpoint import CheckpointError

from helpers import ddp2_launcher, run, run_cli, tiny_overrides


class OneProcess:
    """The few Accelerator members checkpoint.save uses, for one process; save_state is the test's double."""
    is_main_process = True
    device = torch.device("cpu")

    def __init__(self, save_state):
        self.save_state = save_state

    def wait_for_everyone(self):
        pass

    def reduce(self, tensor, reduction):
        return tensor


def write_files(folder: str, tag: str = "a"):
    for name in ("model.safetensors", "optimizer.bin"):
        (Path(folder) / name).write_text(f"{tag} {name}")


def committed(run_dir: Path, step: int) -> Path:
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    assert ckpt.is_dir() and checkpoint.damage(ckpt) is None
    return ckpt


def test_a_save_that_fails_partway_keeps_the_committed_step_and_leaves_no_partial_one(tmp_path):
    checkpoint.save(OneProcess(write_files), tmp_path, {"global_step": 7, "try": 1}, keep=5)
    first = committed(tmp_path, 7)

    def writes_one_file_then_fails(folder):
        (Path(folder) / "model.safetensors").write_text("half of the second try")
        raise OSError(28, "No space left on device")

    for step in (7, 8):  # a rewrite of the committed step, and a new step
        with pytest.raises(CheckpointError, match=f"cannot write checkpoint step_{step:08d}"):
            checkpoint.save(OneProcess(writes_one_file_then_fails), tmp_path,
                                       {"global_step": step, "try": 2}, keep=5)
    assert not (tmp_path / "checkpoints" / "step_00000008").exists()
    assert checkpoint.read_state_json(committed(tmp_path, 7))["try"] == 1
    assert (first / "model.safetensors").read_text() == "a model.safetensors"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000007"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from mnist_dist.run import checkpoint

    run_dir, when, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 3))
    if when == "during_write":  # the real save_state writes its files, then the process dies before the commit
        real = accelerator.save_state
        def save_state(folder):
            real(folder)
            os.kill(os.getpid(), signal.SIGKILL)
        accelerator.save_state = save_state
    else:  # between_renames: the old step_N is out of the way, the new one not yet in place
        real_replace = os.replace
        def replace(src, dst):
            if Path(src).name.startswith(".tmp-"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        checkpoint.os.replace = replace
    with torch.no_grad():
        model.weight.fill_(2.0)
    checkpoint.save(accelerator, run_dir, {"global_step": step, "try": 2}, keep=5)
    print("not killed")
""")


@pytest.mark.parametrize("when, step", [("during_write", 7), ("during_write", 8), ("between_renames", 7)])
def test_a_kill_during_a_save_never_leaves_a_partial_step_folder(tmp_path, when, step):
    """SIGKILL (no clean-up runs) while a checkpoint is written, or between the two renames of a rewrite."""
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 3))
    with torch.no_grad():
        model.weight.fill_(1.0)
    checkpoint.save(accelerator, tmp_path, {"global_step": 7, "try": 1}, keep=5)
    proc = run([sys.executable, "-c", KILLER, str(tmp_path), when, str(step)], timeout=120, check=False)
    assert proc.returncode == -9, proc.stdout + proc.stderr[-3000:]
    root = tmp_path / "checkpoints"
    assert not (root / "step_00000008").exists()
    checkpoint.clean_partial(tmp_path)  # what the next run does first
    assert sorted(p.name for p in root.iterdir()) == ["step_00000007"]
    ckpt = committed(tmp_path, 7)
    assert checkpoint.read_state_json(ckpt)["try"] == 1
    accelerator.load_state(str(ckpt))
    assert torch.equal(model.weight, torch.ones(3, 4))


# ----------------------------------------------------------------------------- a damaged newest checkpoint


@pytest.fixture(scope="module")
def three_checkpoints(tiny_idx, tmp_path_factory):
    """Checkpoints at steps 5, 10 and 15; the run stopped at max_steps=15."""
    run_dir = tmp_path_factory.mktemp("three") / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=15",
                                      "checkpoint.keep=3")])
    assert [c.name for c in checkpoint.complete_checkpoints(run_dir)] == [f"step_{s:08d}" for s in (5, 10, 15)]
    return run_dir


def flip_a_byte(path: Path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


DAMAGES = {
    "model.safetensors missing": ("model.safetensors", lambda p: p.unlink(), "model.safetensors: missing"),
    "optimizer.bin truncated": ("optimizer.bin", lambda p: p.write_bytes(p.read_bytes()[:100]),
                                "optimizer.bin: 100 bytes"),
    "a byte flipped in model.safetensors": ("model.safetensors", flip_a_byte,
                                            "model.safetensors: its content changed"),
    "state.json unreadable": ("state.json", lambda p: p.write_text('{"global_step": 1'), "state.json: unreadable"),
    "scheduler.bin emptied": ("scheduler.bin", lambda p: p.write_bytes(b""), "scheduler.bin: 0 bytes"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(tiny_idx, three_checkpoints,
                                                                               tmp_path, damage):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, run_dir)
    name, spoil, said = DAMAGES[damage]
    spoil(run_dir / "checkpoints" / "step_00000015" / name)
    args = tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=15", "checkpoint.keep=3")
    proc = run_cli(["train", *args], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "damaged" in line]
    assert len(lines) == 1 and said in lines[0] and "set aside as damaged-step_00000015" in lines[0], proc.stderr
    assert "pytorch_model.bin" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000010'} at global_step=10" in proc.stdout
    assert (run_dir / "checkpoints" / "damaged-step_00000015" / "state.json").exists()  # kept, never deleted
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 15
    assert checkpoint.damage(run_dir / "checkpoints" / "step_00000015") is None  # written again, whole


def test_when_no_checkpoint_is_whole_the_advice_to_start_over_works(tiny_idx, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=5")
    run_cli(["train", *args])
    (checkpoint.complete_checkpoints(run_dir)[-1] / "model.safetensors").unlink()
    proc = run_cli(["train", *args], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("mnist-dist train: error: no checkpoint in") and "Run the same command again" in error
    out = run_cli(["train", *args]).stdout  # following it
    assert "resumed" not in out and "moved to" in out
    previous = next(run_dir.glob("previous-*"))
    assert (previous / "checkpoints" / "damaged-step_00000005").is_dir()
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 5


def test_a_damaged_checkpoint_named_by_path_is_refused_not_renamed(tiny_idx, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=5")])
    ckpt = checkpoint.complete_checkpoints(run_dir)[-1]
    os.truncate(ckpt / "model.safetensors", 10)
    proc = run_cli(["train", *tiny_overrides(tiny_idx, tmp_path / "other", f"checkpoint.resume={ckpt}")], check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{ckpt / 'model.safetensors'}: 10 bytes" in proc.stderr and "checkpoint.resume=auto" in proc.stderr
    assert ckpt.is_dir()


@pytest.mark.slow
def test_two_processes_set_aside_a_checkpoint_missing_one_ranks_file_together(tiny_idx, tmp_path):
    """Rank 1's RNG file gone from the newest of a 2-process run's checkpoints: both ranks fall back to the
    previous one (the ranks agree on the damage, a collective) and the run ends as it should."""
    run_dir = tmp_path / "two"
    args = tiny_overrides(tiny_idx, run_dir, "train.per_device_batch_size=25", "checkpoint.every_steps=5",
                          "train.max_steps=15", "checkpoint.keep=3")
    run_cli(["train", *args], launcher=ddp2_launcher(29641))
    (run_dir / "checkpoints" / "step_00000015" / "random_states_1.pkl").unlink()
    proc = run_cli(["train", *args], launcher=ddp2_launcher(29642))
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "is damaged" in line]
    assert len(said) == 1 and "random_states_1.pkl: missing" in said[0], proc.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000010'} at global_step=10" in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 15
