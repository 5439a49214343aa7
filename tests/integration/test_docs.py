"""The docs cannot drift: docs/configuration.md is exactly what `python -m mnist_dist.config --reference` prints
from the config dataclasses (the same rows as `train --help`), and the MkDocs site builds in strict mode (every
page in the nav exists, every relative link between pages resolves)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_dist import config

ROOT = Path(__file__).resolve().parents[2]

REGENERATE = "python -m mnist_dist.config --reference > docs/configuration.md"


def test_the_committed_config_reference_is_the_generated_one():
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_dist.config", "--reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert proc.stdout == committed, f"docs/configuration.md is stale: regenerate it with `{REGENERATE}`"


def test_the_reference_and_help_show_every_key_with_the_same_policy(capsys):
    from mnist_dist.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_out, page = capsys.readouterr().out, config.reference()
    rows = config.describe()
    assert [r["key"] for r in rows] == list(config.flatten(config.Config()))  # every key, once, in field order
    for row in rows:
        assert f"\n### `{row['key']}`\n" in page, row["key"]
        assert f"on resume: {row['resume_why']}" in page, row["key"]
        assert f"\n  {row['key']} = {row['default_text']}   ({row['type']}" in help_out, row["key"]
    # The README's hand-written list had drifted from the code: data.dir may change, best_metric does not.
    assert "### `data.dir`\n\n`str or null` · default `null` · on resume: may change" in page
    assert (
        "### `checkpoint.best_metric`\n\n`str` · default `val_accuracy` · one of `val_accuracy`, `val_loss`, "
        "`none` · on resume: must match (" in page
    )
    assert "### `train.label_smoothing`\n\n`float` · default `0.1` · range in [0, 1) · " in page


def test_the_reference_command_refuses_other_arguments():
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_dist.config"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "usage: python -m mnist_dist.config --reference" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is in the dev extras")
def test_the_docs_build_in_strict_mode(tmp_path):
    """A page missing from docs/, or a link to one, fails the build (.ci/run runs the same command)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in (
        "index",
        "running",
        "configuration",
        "data",
        "resuming",
        "slurm",
        "tracking",
        "sweeps",
        "predict-export",
        "benchmarks",
    ):
        assert (tmp_path / "site" / ("" if page == "index" else page) / "index.html").is_file(), page
