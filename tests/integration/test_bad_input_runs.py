"""Bad input that needs a real run (the rest is tests/unit/test_bad_input.py): a bad run.dir (a file, /proc, a
read-only mount) is one line before any data is read, and a resume after a kill while metrics.jsonl was being
appended drops the half line and keeps every record before it; `accelerate launch --mixed_precision fp16` on a CPU
is refused like the config key."""
import json
import time
from pathlib import Path

import pytest

from helpers import one_line_error, read_jsonl, run_cli, tiny_overrides, tmpfs

# ----------------------------------------------------------------------------- run.dir, before any data is read


@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only filesystem (root ignores mode bits, so a chmod would prove nothing)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        yield mnt


@pytest.mark.parametrize("where", ["file", "proc", "read_only"])
def test_bad_run_dir_is_one_line_before_the_data(capsys, tmp_path, request, where):
    if where == "file":
        run_dir = tmp_path / "a_file"
        run_dir.write_text("x")
    elif where == "proc":
        run_dir = Path("/proc/x")
    else:
        run_dir = request.getfixturevalue("read_only_mount") / "run"
    t0 = time.time()
    # data.dir points at nothing: had the data been read first, the error would be about the data.
    err = one_line_error(capsys, ["train", f"run.dir={run_dir}", "data.source=idx", f"data.dir={tmp_path / 'none'}"],
                         "run.dir", str(run_dir))
    assert "data.dir" not in err
    assert time.time() - t0 < 5
    assert not run_dir.is_dir()


# ----------------------------------------------------------------------------- metrics.jsonl


def test_resume_after_a_kill_while_appending_metrics(tiny_idx, tmp_path):
    """The half-written last line is dropped, the lines before it are kept byte for byte, and the resumed run
    appends its own records (steps 21-30: one evaluation, at max_steps) with no global_step twice."""
    run_dir = tmp_path / "r"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.max_steps=20", "checkpoint.every_steps=10")])
    metrics = run_dir / "metrics.jsonl"
    before = metrics.read_text()
    assert [r["global_step"] for r in read_jsonl(metrics)] == [20]  # the end of epoch 1 (20 steps)
    with metrics.open("a") as f:
        f.write('{"epoch": 1.0, "global_st')  # killed mid-append
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.max_steps=30")], check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000020'}" in proc.stdout
    after = metrics.read_text()
    assert after.startswith(before)  # the records before the cut, unchanged
    appended = [json.loads(line) for line in after[len(before):].splitlines()]  # the cut line is gone: all parse
    assert [(r["epoch"], r["global_step"]) for r in appended] == [(1.5, 30)]
    steps = [r["global_step"] for r in read_jsonl(metrics)]
    assert steps == [20, 30] and len(set(steps)) == len(steps)


# ----------------------------------------------------------------------------- the launcher's fp16 on a CPU


@pytest.mark.slow
def test_launcher_fp16_on_a_cpu_is_refused_like_the_config_key(tiny_idx, tmp_path):
    from helpers import VENV_BIN
    run_dir = tmp_path / "fp16"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.mixed_precision=auto")], check=False,
                   launcher=[str(VENV_BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1",
                             "--mixed_precision", "fp16"])
    # The training process exits 2 with one line; a 1-process `accelerate launch` then exits 1 with its own
    # CalledProcessError traceback, which names no file of ours.
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "mnist-dist train: error: accelerate launch --mixed_precision fp16 needs a GPU" in proc.stderr
    assert "mnist_dist/" not in proc.stderr and "returned non-zero exit status 2" in proc.stderr
    assert not (run_dir / "summary.json").exists()
