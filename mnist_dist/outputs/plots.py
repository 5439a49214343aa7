"""Pictures drawn with matplotlib's object API (Figure + Agg: no display, no pyplot state): training curves, a
confusion matrix, a grid of sample predictions and a sweep's comparison.

Each function takes plain numbers (lists, numpy or torch), writes one PNG atomically and returns its path; none of
them knows where the numbers came from (run_report gathers a run folder's, compare a sweep's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_dist.run import atomic

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


def confusion_matrix(
    matrix, classes: list[str], path: str | Path, title: str = "confusion matrix"
) -> Path:
    """Counts [true, predicted]; colour is the row share, so classes of different sizes compare fairly."""
    counts = np.asarray(matrix, dtype=np.int64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    for i, j in zip(*np.nonzero(counts)):
        colour = "white" if share[i, j] > 0.5 else "black" if i == j else MISTAKE
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    title = f"{title} ({counts.sum():,} images, accuracy {accuracy:.4f})"
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def samples(
    images_u8,
    labels,
    preds,
    confidences,
    classes: list[str],
    path: str | Path,
    columns: int = 8,
    title: str = "",
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
    # white paper between images
    mosaic = np.full((rows * cell_h, columns * cell_w), 255, dtype=np.uint8)
    top = 0.4 if title else 0.0  # inches for the title
    px = 1 / 26  # inches per mosaic pixel: 7-point captions fit a 38-pixel cell
    fig = _figure(columns * cell_w * px, rows * cell_h * px + top)
    ax = fig.add_axes((0, 0, 1, 1 - top / (rows * cell_h * px + top)))
    for k in range(n):
        x0, y0 = (k % columns) * cell_w + gap_x // 2, (k // columns) * cell_h + above
        mosaic[y0 : y0 + side, x0 : x0 + side] = images_u8[k]
        wrong, centre = preds[k] != labels[k], x0 + side / 2
        caption = f"{classes[preds[k]][:11]} ({confidences[k]:.2f})"
        colour = MISTAKE if wrong else "black"
        ax.text(centre, y0 - 1.5, caption, ha="center", va="bottom", fontsize=7, color=colour)
        if wrong:
            true = f"true: {classes[labels[k]][:11]}"
            ax.text(centre, y0 + side + 1.5, true, ha="center", va="top", fontsize=7, color=MISTAKE)
            ax.add_patch(
                Rectangle((x0 - 1, y0 - 1), side + 1, side + 1, fill=False, ec=MISTAKE, lw=2)
            )
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, y=0.99)
    fig.set_layout_engine(None)
    return _save(fig, path)


def comparison(
    rows: list[dict], keys: list[str], metric: str, path: str | Path, title: str = ""
) -> Path:
    """`mnist-dist compare`'s picture: the metric against train seconds, and against each swept value."""
    fig = _figure(4.0 * (1 + len(keys)), 3.4)
    axes = fig.subplots(1, 1 + len(keys), squeeze=False)[0]
    done = [r for r in rows if r["metric"] is not None]
    scores, seconds = [r["metric"] for r in done], [r["train_seconds"] or 0 for r in done]
    axes[0].scatter(seconds, scores, color=COLORS["val"])
    for r, x, y in zip(done, seconds, scores):
        axes[0].annotate(r["run"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="train seconds", ylabel=metric)
    for ax, key in zip(axes[1:], keys):
        values = [r["values"][key] for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        # dicts, None: as text
        labels = sorted({str(v) for v in values}, key=lambda s: float(s) if numeric else s)
        ax.scatter([labels.index(str(v)) for v in values], scores, color=COLORS["val"])
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
    fig.suptitle(title)
    return _save(fig, path)
