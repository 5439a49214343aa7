"""The progress bar: a log file (stderr not a terminal, as under SLURM) gets a bounded number of updates, each a
whole line (tail and grep read lines: carriage returns left it nothing useful), while a terminal keeps the live
bar. The same short run, through the real entry point, once with stderr to a file and once to a pseudo-terminal,
where each update starts with a carriage return."""
import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading

from helpers import ROOT, VENV_BIN

EPOCHS = 2


def _train(tiny_idx, run_dir, stderr) -> subprocess.Popen:
    # 1,000 training images in batches of 2: 500 steps an epoch, a second or two each.
    args = ["train", "--config", "debug", "data.source=idx", f"data.dir={tiny_idx}", "data.name=mnist",
            "data.val_size=200", "train.per_device_batch_size=2", f"train.epochs={EPOCHS}", "train.max_steps=0",
            "train.scheduler=none", "train.progress=true", f"run.dir={run_dir}"]
    return subprocess.Popen([str(VENV_BIN / "mnist-dist"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_log_file_gets_a_bounded_number_of_progress_updates_and_a_terminal_the_live_bar(tiny_idx, tmp_path):
    log = tmp_path / "stderr.log"
    with log.open("wb") as f:
        assert _train(tiny_idx, tmp_path / "file_run", f).wait(timeout=300) == 0, log.read_text()[-3000:]
    to_file = log.read_bytes().count(b"\r")
    assert to_file == 0, log.read_bytes()[-2000:]  # whole lines, no carriage returns
    updates = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
    # At most one update per 30 s: an epoch's bar opens and closes, plus at most one 30 s tick on a slow host.
    # tqdm's own 0.1 s wrote 128 here.
    assert 1 <= len(updates) <= 3 * EPOCHS and all("/500" in line for line in updates), log.read_text()[-2000:]

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a width
    out = bytearray()
    reader = threading.Thread(target=lambda: _drain(primary, out), daemon=True)
    reader.start()
    proc = _train(tiny_idx, tmp_path / "tty_run", secondary)
    os.close(secondary)
    assert proc.wait(timeout=300) == 0, out[-3000:]
    reader.join(timeout=10)
    to_terminal = out.count(b"\r")
    assert to_terminal > 2 * len(updates), (updates, to_terminal, bytes(out[-300:]))  # tqdm's 0.1 s there


def _drain(fd: int, out: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return
        if not chunk:
            return
        out += chunk
