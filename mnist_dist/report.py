"""`mnist-dist report RUN_DIR`: the pictures and report.md of a run folder, with or without W&B.

Everything is rebuilt from files the run left: metrics.jsonl (curves, confusion matrix), the saved model
(model.safetensors + model.json) and the run's config.yaml data section (test images for samples.png),
summary.json (final numbers, git revision). Training calls write_after_training() on the main process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mnist_dist import checkpoint, data, plots
from mnist_dist.errors import UserError

CURVES, CONFUSION, SAMPLES, REPORT = "curves.png", "confusion_matrix.png", "samples.png", "report.md"
NUM_SAMPLES = 48  # the first test images, always the same ones, so runs can be compared picture to picture


# ----------------------------------------------------------------------------- predictions


@torch.no_grad()
def predict(model: torch.nn.Module, images_u8: torch.Tensor, mean: float, std: float,
            batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities [N, 10] (float32, CPU) for uint8 images, on the model's device, in eval mode.

    Runs on one process with a plain (unwrapped) module: no collective, so other ranks are never involved.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = [torch.softmax(model(data.normalize(images_u8[i:i + batch_size].to(device), mean, std)).float(), 1).cpu()
             for i in range(0, len(images_u8), batch_size)]
    model.train(was_training)
    return torch.cat(probs) if probs else torch.zeros(0, 10)


# ----------------------------------------------------------------------------- building the folder


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _model_meta(run_dir: Path) -> dict | None:
    path = run_dir / checkpoint.MODEL_META
    return json.loads(path.read_text()) if path.is_file() else None


def _test_split(run_dir: Path) -> data.Split:
    """The test split named by the run's own config.yaml."""
    from mnist_dist.evaluate import load_run_config
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: missing; it says which data the run used")
    return data.load_test(load_run_config(run_dir, []).data)


def build(run_dir: str | Path, model: torch.nn.Module | None = None, test: data.Split | None = None) -> list[str]:
    """Write curves.png, confusion_matrix.png, samples.png and report.md into run_dir.

    model/test default to the run's saved model and its config's test split. Returns one line per picture
    that could not be made (missing file, data unavailable); the others are still written.
    """
    run_dir = Path(run_dir)
    problems = []
    records = _read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    meta = _model_meta(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    dataset = (meta or {}).get("dataset") or _config_data_name(run_dir)
    classes = checkpoint.CLASSES.get(dataset, [str(i) for i in range(10)])
    title = f"{run_dir.name}: {summary.get('model') or (meta or {}).get('name', '')} on {dataset}"

    if records:
        plots.curves(records, run_dir / CURVES, title=title)
        last = records[-1]
        if "test_confusion" in last:
            plots.confusion_matrix(last["test_confusion"], classes, run_dir / CONFUSION,
                                   title=f"test, epoch {last['epoch']:.3g}")
    else:
        problems.append(f"{run_dir / 'metrics.jsonl'}: missing or empty; no {CURVES} or {CONFUSION}")

    try:
        if model is None:
            model, meta = checkpoint.load_model(run_dir)
        if test is None:
            test = _test_split(run_dir)
        mean, std = (meta["mean"], meta["std"]) if meta else data.STATS[dataset]
        images, labels = test.images[:NUM_SAMPLES], test.labels[:NUM_SAMPLES]
        probs = predict(model, images, mean, std)
        confidence, preds = probs.max(1)
        wrong = int((preds != labels).sum())
        plots.samples(images, labels, preds, confidence, classes, run_dir / SAMPLES,
                      title=f"first {len(labels)} test images: predicted (confidence); {wrong} wrong, in red")
    except UserError as e:
        problems.append(f"no {SAMPLES}: {e}")

    write_markdown(run_dir, records, summary, classes)
    return problems


def _config_data_name(run_dir: Path) -> str:
    import yaml
    try:
        return ((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("data") or {}).get("name", "mnist")
    except OSError:
        return "mnist"


def _epochs(value) -> str | None:
    return None if value is None else f"{round(value, 3):g}"


def _fmt(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(run_dir: Path, records: list[dict], summary: dict, classes: list[str]) -> Path:
    """report.md: final numbers, the pictures, per-class accuracy, the config and the git revision."""
    last = records[-1] if records else {}
    get = lambda key: summary.get(key, last.get(key))  # summary.json is final; metrics.jsonl is the fallback
    acc, count = get("test_accuracy"), get("test_count")
    lines = [f"# Run report: {run_dir.name}", ""]
    if acc is not None:
        correct = f" ({round(acc * count):,} of {count:,} images)" if count else ""
        lines += [f"**Final test accuracy: {acc:.4f}**{correct}, test loss {_fmt(get('test_loss'))}, "
                  f"validation accuracy {_fmt(get('val_accuracy'))}.", ""]
    else:
        lines += ["No evaluation was recorded (metrics.jsonl is missing or empty).", ""]
    rows = [("model", summary.get("model")), ("parameters", f"{summary['parameters']:,}" if "parameters" in summary else None),
            ("data", summary.get("data_source")), ("epochs", _epochs(get("epochs") or last.get("epoch"))),
            ("global steps", get("global_step")), ("world size", summary.get("world_size")),
            ("global batch size", summary.get("global_batch_size")),
            ("device", f"{summary.get('device')} ({summary.get('distributed_type')}, mixed precision "
                       f"{summary.get('mixed_precision')})" if "device" in summary else None),
            ("train time", f"{summary['train_seconds']:.1f} s" if "train_seconds" in summary else None),
            ("git revision", f"`{summary.get('git_revision')}`" if summary.get("git_revision") else "unknown"),
            ("torch", summary.get("torch_version"))]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]
    for name, caption in ((CURVES, "Loss and accuracy per epoch"), (CONFUSION, "Test confusion matrix"),
                          (SAMPLES, "Sample test predictions (mistakes in red)")):
        if (run_dir / name).is_file():
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if "test_per_class_accuracy" in last:
        lines += ["## Per-class test accuracy", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {c} | {a:.4f} |" for c, a in zip(classes, last["test_per_class_accuracy"])] + [""]
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        lines += ["## Config", "", "```yaml", cfg_path.read_text().rstrip(), "```", "",
                  "Reproduce (at the git revision above; a new run.dir starts fresh):", "",
                  f"    accelerate launch train_accel.py --config {cfg_path} run.dir=runs/repro", ""]
    path = run_dir / REPORT
    checkpoint.atomic_write_text(path, "\n".join(lines))
    return path


def write_after_training(run_dir: Path, model: torch.nn.Module, test: data.Split) -> None:
    """The end of a training run (main process): pictures must never cost the run its exit status."""
    try:
        problems = build(run_dir, model=model, test=test)
    except Exception as e:  # a plotting bug must not turn a finished run into a failed one
        problems = [f"{type(e).__name__}: {e}"]
    for line in problems:
        print(f"mnist-dist: warning: report: {line}; rebuild with `mnist-dist report {run_dir}`", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with metrics.jsonl, model.safetensors, config.yaml)")


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not any((run_dir / name).is_file() for name in ("metrics.jsonl", "summary.json", checkpoint.MODEL_FILE)):
        raise UserError(f"{run_dir}: not a run folder (no metrics.jsonl, summary.json or {checkpoint.MODEL_FILE})")
    problems = build(run_dir)
    for name in (CURVES, CONFUSION, SAMPLES, REPORT):
        if (run_dir / name).is_file():
            print(run_dir / name)
    for line in problems:
        print(f"mnist-dist report: warning: {line}", file=sys.stderr)
    return 1 if problems else 0
