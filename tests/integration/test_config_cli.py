"""The config tree seen from the command line (the unit half is tests/unit/test_config.py): a bad config is one line
and writes nothing, --print-config shows the merged values, the largest seed trains, and a reader that leaves early
(`mnist-dist recipes | true`) gets no traceback."""
import subprocess

from mnist_dist import config

from helpers import VENV_BIN, run_cli


def test_cli_bad_config_is_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "train.per_device_batch_size=0", f"run.dir={run_dir}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "train.per_device_batch_size" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_cli_print_config_shows_merged_values():
    proc = run_cli(["train", "--config", "configs/train/debug.yaml", "--print-config", "train.epochs=9"])
    merged = config.from_dict(config.Config, __import__("yaml").safe_load(proc.stdout))
    assert merged.train.epochs == 9 and merged.data.name == "fashion_mnist"


def test_the_largest_seed_trains(tiny_idx, tmp_path):
    """train.seed=2^63-1 passed the config check and then died in torch.manual_seed (`Overflow when unpacking long
    long`): every seed derived from it is folded into torch's range, with augmentation on."""
    proc = run_cli(["train", "--config", "debug", "data.source=idx", f"data.dir={tiny_idx}", "data.name=mnist",
                    "data.val_size=200", "data.augment=true", f"train.seed={2**63 - 1}", "train.max_steps=2",
                    "train.progress=false", f"run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`mnist-dist recipes | true`: the pipe is closed before the listing is written (`true` exits at once, the
    command only after its start-up); the command stops quietly with exit 1, not a BrokenPipeError traceback."""
    command = f"set -o pipefail; {VENV_BIN / 'mnist-dist'} recipes | true"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (1, "")
