"""Exact metrics from counts and sums: what crosses process boundaries is a confusion matrix and a loss sum."""

import torch


def confusion_matrix(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 10
) -> torch.Tensor:
    """[true, predicted] counts, int64, on the inputs' device (no host sync)."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def summarize(loss_sum: float, confusion: torch.Tensor) -> dict:
    """Loss, accuracy, per-class accuracy and the matrix itself, from globally reduced sums."""
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class_total = confusion.sum(1).clamp(min=1)
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "count": count,
        "per_class_accuracy": (confusion.diag().double() / per_class_total).tolist(),
        "confusion": confusion.tolist(),
    }
