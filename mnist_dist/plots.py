"""A run's report: three pictures drawn with matplotlib's object API (Figure + Agg: no display, no pyplot state)
and report.md, rebuilt from the files the run left (metrics.jsonl, summary.json, config.yaml, the saved model).

The drawing functions take plain numbers (lists, numpy or torch), write one PNG and return its path; none of
them knows where the numbers came from. build_report() gathers them from a run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mnist_dist import atomic, checkpoint, data, inference, rundir
from mnist_dist.errors import UserError
from mnist_dist.inference import Predictions
from mnist_dist.rundir import CONFIG, CONFUSION, CURVES, METRICS, MODEL_META, REPORT, SAMPLES, SUMMARY

NUM_SAMPLES = 48  # the first test images, always the same ones, so runs can be compared picture to picture

MISTAKE = "#c62828"  # red for wrong predictions, everywhere
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure  # imported here: only runs that draw pay for matplotlib

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png")  # a Figure without a canvas saves through Agg
    return path


def curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy against epoch for every split present in `records` (the lines of metrics.jsonl)."""
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in records]
    for split in ("train", "val", "test"):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            points = [(e, r.get(f"{split}_{metric}")) for e, r in zip(epochs, records)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, "o-", color=COLORS[split], label=split, markersize=4)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(matrix, classes: list[str], path: str | Path, title: str = "confusion matrix") -> Path:
    """Counts [true, predicted]; colour is the row share, so classes of different sizes compare fairly."""
    counts = np.asarray(matrix, dtype=np.int64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else ("black" if i == j else MISTAKE),
                )
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"{title} ({counts.sum():,} images, accuracy {np.trace(counts) / max(counts.sum(), 1):.4f})",
    )
    return _save(fig, path)


def samples(
    images_u8, labels, preds, confidences, classes: list[str], path: str | Path, columns: int = 8, title: str = ""
) -> Path:
    """A grid of test images titled `predicted (confidence)`, with `true: X` and a red frame on mistakes.

    One mosaic on one axes (not one axes per image): drawing 48 axes costs matplotlib seconds.
    """
    images_u8, labels, preds = np.asarray(images_u8), np.asarray(labels), np.asarray(preds)
    from matplotlib.patches import Rectangle

    n, side = len(labels), 28
    rows = max(1, -(-n // columns))
    gap_x, above, below = 10, 9, 9  # mosaic pixels around each image: room for the two captions
    cell_w, cell_h = side + gap_x, side + above + below
    mosaic = np.full((rows * cell_h, columns * cell_w), 255, dtype=np.uint8)  # white paper between images
    top = 0.4 if title else 0.0  # inches for the title
    px = 1 / 26  # inches per mosaic pixel: 7-point captions fit a 38-pixel cell
    fig = _figure(columns * cell_w * px, rows * cell_h * px + top)
    ax = fig.add_axes((0, 0, 1, 1 - top / (rows * cell_h * px + top)))
    for k in range(n):
        x0, y0 = (k % columns) * cell_w + gap_x // 2, (k // columns) * cell_h + above
        mosaic[y0 : y0 + side, x0 : x0 + side] = images_u8[k]
        wrong = preds[k] != labels[k]
        colour = MISTAKE if wrong else "black"
        ax.text(
            x0 + side / 2,
            y0 - 1.5,
            f"{classes[preds[k]][:11]} ({confidences[k]:.2f})",
            ha="center",
            va="bottom",
            fontsize=7,
            color=colour,
        )
        if wrong:
            ax.text(
                x0 + side / 2,
                y0 + side + 1.5,
                f"true: {classes[labels[k]][:11]}",
                ha="center",
                va="top",
                fontsize=7,
                color=MISTAKE,
            )
            ax.add_patch(Rectangle((x0 - 1, y0 - 1), side + 1, side + 1, fill=False, edgecolor=MISTAKE, linewidth=2))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, y=0.99)
    fig.set_layout_engine(None)
    return _save(fig, path)


# ----------------------------------------------------------------------------- a run folder's report


def _predictions(run_dir: Path, run_cfg) -> Predictions:
    """The saved model's predictions for the first test images of the run's own config.yaml's data."""
    model, meta = checkpoint.load_model(run_dir)
    if run_cfg is None:
        raise UserError(f"{run_dir / CONFIG}: missing; it says which data the run used")
    test = data.load_test(run_cfg.data)
    images, labels = test.images[:NUM_SAMPLES], test.labels[:NUM_SAMPLES]
    return Predictions(images, labels, inference.predict(model, images, meta["mean"], meta["std"]))


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
    meta = rundir.read_json(run_dir / MODEL_META)
    summary = rundir.read_json(run_dir / SUMMARY) or {}
    rundir.check_numbers(
        run_dir / SUMMARY,
        summary,
        (
            "test_accuracy",
            "test_count",
            "test_loss",
            "val_accuracy",
            "parameters",
            "train_seconds",
            "epochs",
            "global_step",
        ),
    )
    dataset = (meta or {}).get("dataset") or (run_cfg.data.name if run_cfg else "mnist")
    classes = data.CLASSES.get(dataset, [str(i) for i in range(10)])
    title = f"{run_dir.name}: {summary.get('model') or (meta or {}).get('name', '')} on {dataset}"

    if records:
        curves(records, run_dir / CURVES, title=title)
        last = records[-1]
        if "test_confusion" in last:
            confusion_matrix(
                last["test_confusion"], classes, run_dir / CONFUSION, title=f"test, epoch {last['epoch']:.3g}"
            )
    else:
        problems.append(f"{run_dir / METRICS}: missing or empty; no {CURVES} or {CONFUSION}")

    try:
        p = predictions if predictions is not None else _predictions(run_dir, run_cfg)
        images, labels, probs = p.images[:NUM_SAMPLES], p.labels[:NUM_SAMPLES], p.probs[:NUM_SAMPLES]
        confidence, preds = probs.max(1)
        wrong = int((preds != labels).sum())
        samples(
            images,
            labels,
            preds,
            confidence,
            classes,
            run_dir / SAMPLES,
            title=f"first {len(labels)} test images: predicted (confidence); {wrong} wrong, in red",
        )
    except UserError as e:
        problems.append(f"no {SAMPLES}: {e}")

    write_markdown(run_dir, records, summary, classes)
    return problems


def _epochs(value) -> str | None:
    return None if value is None else f"{round(value, 3):g}"


def _fmt(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(run_dir: Path, records: list[dict], summary: dict, classes: list[str]) -> Path:
    """report.md: final numbers, the pictures, per-class accuracy, the config and the git revision."""
    last = records[-1] if records else {}

    def get(key: str):  # summary.json is final; metrics.jsonl is the fallback
        return summary.get(key, last.get(key))

    acc, count = get("test_accuracy"), get("test_count")
    lines = [f"# Run report: {run_dir.name}", ""]
    if acc is not None:
        correct = f" ({round(acc * count):,} of {count:,} images)" if count else ""
        lines += [
            f"**Final test accuracy: {acc:.4f}**{correct}, test loss {_fmt(get('test_loss'))}, "
            f"validation accuracy {_fmt(get('val_accuracy'))}.",
            "",
        ]
    else:
        lines += ["No evaluation was recorded (metrics.jsonl is missing or empty).", ""]
    rows = [
        ("model", summary.get("model")),
        ("parameters", f"{summary['parameters']:,}" if "parameters" in summary else None),
        ("data", summary.get("data_source")),
        ("epochs", _epochs(get("epochs") or last.get("epoch"))),
        ("global steps", get("global_step")),
        ("world size", summary.get("world_size")),
        ("global batch size", summary.get("global_batch_size")),
        (
            "device",
            f"{summary.get('device')} ({summary.get('distributed_type')}, mixed precision "
            f"{summary.get('mixed_precision')})"
            if "device" in summary
            else None,
        ),
        ("train time", f"{summary['train_seconds']:.1f} s" if "train_seconds" in summary else None),
        ("git revision", f"`{summary.get('git_revision')}`" if summary.get("git_revision") else "unknown"),
        ("torch", summary.get("torch_version")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]
    for name, caption in (
        (CURVES, "Loss and accuracy per epoch"),
        (CONFUSION, "Test confusion matrix"),
        (SAMPLES, "Sample test predictions (mistakes in red)"),
    ):
        if (run_dir / name).is_file():
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if "test_per_class_accuracy" in last:
        lines += ["## Per-class test accuracy", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {c} | {a:.4f} |" for c, a in zip(classes, last["test_per_class_accuracy"])] + [""]
    cfg_path = run_dir / CONFIG
    if cfg_path.is_file():
        lines += [
            "## Config",
            "",
            "```yaml",
            cfg_path.read_text().rstrip(),
            "```",
            "",
            "Reproduce (at the git revision above; a new run.dir starts fresh):",
            "",
            f"    accelerate launch train_accel.py --config {cfg_path} run.dir=runs/repro",
            "",
        ]
    path = run_dir / REPORT
    atomic.write_text(path, "\n".join(lines))
    return path


def write_after_training(run_dir: Path, predictions: Predictions | None) -> None:
    """The end of a training run (main process): pictures must never cost the run its exit status."""
    try:
        problems = build_report(run_dir, predictions)
    except Exception as e:  # a plotting bug must not turn a finished run into a failed one
        problems = [f"{type(e).__name__}: {e}"]
    for line in problems:
        print(f"mnist-dist: warning: report: {line}; rebuild with `mnist-dist report {run_dir}`", file=sys.stderr)


def comparison(rows: list[dict], keys: list[str], metric: str, path: str | Path, title: str = "") -> Path:
    """`mnist-dist compare`'s picture: the metric against train seconds, and against each swept value."""
    fig = _figure(4.0 * (1 + len(keys)), 3.4)
    axes = fig.subplots(1, 1 + len(keys), squeeze=False)[0]
    done = [r for r in rows if r["metric"] is not None]
    ax = axes[0]
    ax.scatter([r["train_seconds"] or 0 for r in done], [r["metric"] for r in done], color=COLORS["val"])
    for r in done:
        ax.annotate(
            r["run"], (r["train_seconds"] or 0, r["metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("train seconds")
    ax.set_ylabel(metric)
    for ax, key in zip(axes[1:], keys):
        values = [r["values"][key] for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values}, key=lambda s: float(s) if numeric else s)  # dicts, None: as text
        ax.scatter([labels.index(str(v)) for v in values], [r["metric"] for r in done], color=COLORS["val"])
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
    fig.suptitle(title)
    return _save(fig, path)
