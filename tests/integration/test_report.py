"""Pictures and report.md come with every run, W&B or not.

A real single-process training run (`mnist-dist train`, tracking off, a slice of Fashion-MNIST) leaves
curves.png, confusion_matrix.png and samples.png as valid PNGs of sensible size and a report.md that names
the final test accuracy and git revision; `mnist-dist report RUN_DIR` rebuilds all four after they are
deleted, from metrics.jsonl, the saved model and the run's config; a missing folder is one error line.
"""
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import fashion_slice, run_cli

PICTURES = {"curves.png": (600, 300), "confusion_matrix.png": (500, 500), "samples.png": (600, 600)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    idx = fashion_slice(tmp / "idx")
    run_dir = tmp / "run"
    run_cli(["train", "--config", "configs/train/debug.yaml", f"run.dir={run_dir}", "train.progress=false",
             "tracking.backend=none", f"data.dir={idx}", "data.source=idx", "data.val_size=200",
             "train.max_steps=12", "train.log_every_steps=4"], timeout=300)
    return run_dir


def check_pictures(run_dir: Path):
    for name, (min_w, min_h) in PICTURES.items():
        with Image.open(run_dir / name) as img:
            img.verify()  # a complete, uncorrupted PNG
        with Image.open(run_dir / name) as img:
            assert img.format == "PNG"
            w, h = img.size
            assert min_w <= w <= 4000 and min_h <= h <= 4000, (name, img.size)
            # Not a blank canvas: a drawn figure has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, name
    summary = json.loads((run_dir / "summary.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert f"{summary['test_accuracy']:.4f}" in report
    assert summary["git_revision"] is None or summary["git_revision"] in report
    for name in PICTURES:
        assert f"]({name})" in report  # linked, relative to the run folder
    assert "```yaml" in report and "max_steps: 12" in report


def test_training_leaves_pictures_and_report(trained_run):
    check_pictures(trained_run)


def test_report_command_rebuilds_them(trained_run):
    for name in [*PICTURES, "report.md"]:
        (trained_run / name).unlink()
    run_cli(["report", str(trained_run)], timeout=300)
    check_pictures(trained_run)


def test_report_on_a_missing_folder_is_one_line(tmp_path, capsys):
    from mnist_dist.cli import main
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such run folder" in err
