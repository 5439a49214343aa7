"""A run's report, assembled from the files the run left: curves.png, confusion_matrix.png and samples.png (drawn
by plots) and report.md, from metrics.jsonl, summary.json, config.yaml and the saved model.

samples.png shows the first test images: training passes its last evaluation's predictions of them; otherwise
(`mnist-dist report`) the saved model predicts them on the test split of the run's own config.yaml data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mnist_dist import metrics
from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.metrics import Predictions
from mnist_dist.outputs import plots
from mnist_dist.run import artifact, atomic, rundir
from mnist_dist.run.rundir import (
    CONFIG,
    CONFUSION,
    CURVES,
    METRICS,
    MODEL_META,
    REPORT,
    SAMPLES,
    SUMMARY,
)

# the first test images, always the same ones, so runs can be compared picture to picture
NUM_SAMPLES = 48
NUMBERS = (
    "test_accuracy",
    "test_count",
    "test_loss",
    "val_accuracy",
    "parameters",
    "train_seconds",
    "epochs",
)
CAPTIONS = {
    CURVES: "Loss and accuracy per epoch",
    CONFUSION: "Test confusion matrix",
    SAMPLES: "Sample test predictions (mistakes in red)",
}


def _predictions(run_dir: Path, run_cfg) -> Predictions:
    """The saved model's predictions for the first test images of the run's own config.yaml's data."""
    model, model_info = artifact.load_model(run_dir)
    if run_cfg is None:
        raise UserError(f"{run_dir / CONFIG}: missing; it says which data the run used")
    test, _ = sources.load_test(run_cfg.data)
    images, labels = test.images[:NUM_SAMPLES], test.labels[:NUM_SAMPLES]
    return Predictions(
        images, labels, metrics.predict(model, images, model_info["mean"], model_info["std"])
    )


def build_report(run_dir: str | Path, predictions: Predictions | None = None) -> list[str]:
    """Write curves.png, confusion_matrix.png, samples.png and report.md into run_dir.

    predictions: of the first test images by the final model (training passes its last evaluation's); by default
    the saved model predicts them. Returns one line per picture that could not be made (missing file, data
    unavailable); the others are still written. A damaged file (rundir.RunFileError) stops it before anything is
    written.
    """
    run_dir = Path(run_dir)
    problems = []
    # Every file is read (and checked) before anything is drawn.
    run_cfg = rundir.load_run_config(run_dir, []) if (run_dir / CONFIG).exists() else None
    records = rundir.read_jsonl(run_dir / METRICS)
    model_info = rundir.read_json(run_dir / MODEL_META)
    summary = rundir.read_json(run_dir / SUMMARY) or {}
    rundir.check_numbers(run_dir / SUMMARY, summary, (*NUMBERS, "global_step"))
    dataset = (model_info or {}).get("dataset") or (run_cfg.data.name if run_cfg else "mnist")
    names = (model_info or {}).get("classes") or sources.CLASSES.get(dataset)
    classes = names or [str(i) for i in range(10)]
    model = summary.get("model") or (model_info or {}).get("name", "")
    title = f"{run_dir.name}: {model} on {dataset}"

    if records:
        plots.curves(records, run_dir / CURVES, title=title)
        last = records[-1]
        if len(last.get("test_confusion") or classes) != len(classes):
            problems.append(
                f"no {CONFUSION}: {run_dir / METRICS} has {len(last['test_confusion'])} classes, the model "
                f"{len(classes)}"
            )
        elif "test_confusion" in last:
            where, at = run_dir / CONFUSION, f"test, epoch {last['epoch']:.3g}"
            plots.confusion_matrix(last["test_confusion"], classes, where, title=at)
    else:
        problems.append(f"{run_dir / METRICS}: missing or empty; no {CURVES} or {CONFUSION}")

    try:
        p = predictions if predictions is not None else _predictions(run_dir, run_cfg)
        images, labels, probs = (
            p.images[:NUM_SAMPLES],
            p.labels[:NUM_SAMPLES],
            p.probs[:NUM_SAMPLES],
        )
        confidence, preds = probs.max(1)
        wrong = int((preds != labels).sum())
        title = f"first {len(labels)} test images: predicted (confidence); {wrong} wrong, in red"
        plots.samples(images, labels, preds, confidence, classes, run_dir / SAMPLES, title=title)
    except UserError as e:
        problems.append(f"no {SAMPLES}: {e}")

    write_markdown(run_dir, records, summary, classes)
    return problems


def _epochs(value) -> str | None:
    return None if value is None else f"{round(value, 3):g}"


def _fmt(value, digits=4) -> str:
    return (
        "n/a"
        if value is None
        else f"{value:.{digits}f}"
        if isinstance(value, float)
        else str(value)
    )


def write_markdown(run_dir: Path, records: list[dict], summary: dict, classes: list[str]) -> Path:
    """report.md: final numbers, the pictures, per-class accuracy, the config and the git revision."""
    last, s = (records[-1] if records else {}), summary

    def get(key: str):  # summary.json is final; metrics.jsonl is the fallback
        return s.get(key, last.get(key))

    acc, count = get("test_accuracy"), get("test_count")
    head = "No evaluation was recorded (metrics.jsonl is missing or empty)."
    if acc is not None:
        correct = f" ({round(acc * count):,} of {count:,} images)" if count else ""
        loss, val = _fmt(get("test_loss")), _fmt(get("val_accuracy"))
        head = f"**Final test accuracy: {acc:.4f}**{correct}, test loss {loss}, validation accuracy {val}."
    device = f"{s.get('device')} ({s.get('distributed_type')}, mixed precision {s.get('mixed_precision')})"
    rows = {
        "model": s.get("model"),
        "parameters": f"{s['parameters']:,}" if "parameters" in s else None,
        "data": s.get("data_source"),
        "epochs": _epochs(get("epochs") or last.get("epoch")),
        "global steps": get("global_step"),
        "world size": s.get("world_size"),
        "global batch size": s.get("global_batch_size"),
        "device": device if "device" in s else None,
        "train time": f"{s['train_seconds']:.1f} s" if "train_seconds" in s else None,
        "git revision": f"`{s['git_revision']}`" if s.get("git_revision") else "unknown",
        "torch": s.get("torch_version"),
    }
    lines = [f"# Run report: {run_dir.name}", "", head, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items() if v is not None] + [""]
    for name, caption in CAPTIONS.items():
        if (run_dir / name).is_file():
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if "test_per_class_accuracy" in last:
        lines += ["## Per-class test accuracy", "", "| class | accuracy |", "|---|---|"]
        per_class = zip(classes, last["test_per_class_accuracy"])
        lines += [f"| {c} | {a:.4f} |" for c, a in per_class] + [""]
    if (cfg_path := run_dir / CONFIG).is_file():
        lines += ["## Config", "", "```yaml", cfg_path.read_text().rstrip(), "```", ""]
        lines += ["Reproduce (at the git revision above; a new run.dir starts fresh):", ""]
        lines += [
            f"    accelerate launch train_accel.py --config {cfg_path} run.dir=runs/repro",
            "",
        ]
    atomic.write_text(run_dir / REPORT, "\n".join(lines))
    return run_dir / REPORT


def write_after_training(run_dir: Path, predictions: Predictions | None) -> None:
    """The end of a training run (main process): pictures must never cost the run its exit status."""
    try:
        problems = build_report(run_dir, predictions)
    except Exception as e:  # a plotting bug must not turn a finished run into a failed one
        problems = [f"{type(e).__name__}: {e}"]
    for line in problems:
        rebuild = f"rebuild with `mnist-dist report {run_dir}`"
        print(f"mnist-dist: warning: report: {line}; {rebuild}", file=sys.stderr)
