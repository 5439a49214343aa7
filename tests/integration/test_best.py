"""The best model by a validation metric is kept in RUN_DIR/best/ next to the final one, with its epoch and step
in summary.json; early stopping ends the run after N evaluations without improvement, on every rank, and is
recorded in the summary and metrics.jsonl (which the tracker logs); both survive a resume between the best epoch
and the stop; eval, predict and export pick the best model with --best. The test set never chooses."""
import json

import pytest
from safetensors.torch import load_file

from mnist_dist import config
from mnist_dist.config import ConfigError

from helpers import run_cli, tiny_overrides


def args(idx, run_dir, *extra):
    # A constant learning rate on the toy set: validation accuracy stops improving after a few epochs.
    return tiny_overrides(idx, run_dir, "train.epochs=10", "train.scheduler=none", "train.lr=0.01",
                          "train.early_stop_patience=2", "train.early_stop_min_delta=0.004", *extra)


@pytest.fixture(scope="module")
def stopped(tiny_idx, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("best") / "run"
    out = run_cli(["train", *args(tiny_idx, run_dir)]).stdout
    return run_dir, out


def test_best_model_and_early_stop_by_validation(stopped):
    run_dir, out = stopped
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["early_stopped"] is True and summary["epochs"] < 10, summary
    assert "early stop: no val_accuracy improvement for 2 evaluations" in out
    assert records[-1]["early_stop"] == 1 and all("early_stop" not in r for r in records[:-1])
    # The best is chosen by validation accuracy, improvements of more than min_delta only, never by test.
    best, vals = summary["best"], [r["val_accuracy"] for r in records]
    k = next(i for i, r in enumerate(records) if r["global_step"] == best["global_step"])
    assert best["metric"] == "val_accuracy" and best["value"] == vals[k] and best["epoch"] == records[k]["epoch"]
    assert all(v <= best["value"] + 0.004 for v in vals) and len(records) - 1 - k == 2  # two evaluations after it
    assert (run_dir / "best" / "model.safetensors").is_file() and (run_dir / "model.safetensors").is_file()


def test_a_resume_between_the_best_epoch_and_the_stop_ends_the_same(tiny_idx, stopped, tmp_path):
    ref_dir, _ = stopped
    ref = json.loads((ref_dir / "summary.json").read_text())
    steps_per_epoch = 1000 // 50
    run_dir = tmp_path / "resumed"
    # Stop one evaluation after the best (the patience counter at 1), then resume to the end.
    run_cli(["train", *args(tiny_idx, run_dir, f"train.max_steps={ref['best']['global_step'] + steps_per_epoch}")])
    out = run_cli(["train", *args(tiny_idx, run_dir)]).stdout
    assert "resumed from" in out and "early stop" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["global_step"] == ref["best"]["global_step"] and summary["global_step"] == ref["global_step"]
    for name in ("model.safetensors", "best/model.safetensors"):
        a, b = load_file(str(ref_dir / name)), load_file(str(run_dir / name))
        assert all((a[k] == b[k]).all() for k in a), name


def test_eval_predict_export_pick_the_best_with_a_flag(stopped, tmp_path):
    run_dir, _ = stopped
    final = json.loads(run_cli(["eval", str(run_dir), "--json", "--split", "val"]).stdout)
    best = json.loads(run_cli(["eval", str(run_dir), "--best", "--json", "--split", "val"]).stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert best["accuracy"] == pytest.approx(summary["best"]["value"])
    assert final["accuracy"] == pytest.approx(
        json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["val_accuracy"])
    out = run_cli(["export", str(run_dir), "--best", "--format", "torchscript"]).stdout
    assert str(run_dir / "best" / "model.torchscript.pt") in out
    from PIL import Image
    picture = Image.new("L", (28, 28), 0)
    picture.paste(255, (6, 10, 22, 13))  # a bright bar, like the toy set's
    picture.save(tmp_path / "x.png")
    assert run_cli(["predict", str(run_dir), str(tmp_path / "x.png"), "--best"]).stdout.startswith(str(tmp_path))


def test_the_test_set_never_chooses_and_patience_needs_validation():
    with pytest.raises(ConfigError, match="checkpoint.best_metric"):
        config.load(None, ["checkpoint.best_metric=test_accuracy"])
    with pytest.raises(ConfigError, match="needs a validation metric"):
        config.load(None, ["train.early_stop_patience=2", "data.val_size=0"])
    assert config.CheckpointConfig(best_metric="val_loss").better(0.5, 0.6, 0.0)  # auto: lower loss is better
    assert not config.CheckpointConfig().better(0.9, 0.9, 0.0)  # equal is no improvement
