"""Exact metrics and the one batched forward pass. What crosses process boundaries is a confusion matrix and a loss
sum, so every number is exact for any world size; the same forward pass gives the class probabilities that reports,
W&B media and `predict` show. Images come in as uint8 [N, 28, 28] and are normalised on the model's device."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from mnist_dist.data import loaders

if TYPE_CHECKING:  # the type only: accelerate is imported where it is built
    from accelerate import Accelerator

    from mnist_dist.data.sources import Split


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[true, predicted] counts, int64, on the inputs' device (no host sync)."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def name(split: str, metric: str, sep: str = "_") -> str:
    """The one naming of a number: `test_accuracy` in the run folder's files (metrics.jsonl, summary.json),
    `test/accuracy` in W&B (sep="/"), where the part before the slash is the panel section."""
    return f"{split}{sep}{metric}"


@dataclasses.dataclass
class SplitMetrics:
    """One split's exact numbers, from globally reduced sums."""

    loss: float
    accuracy: float
    count: int
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # [true][predicted] counts


def summarize(loss_sum: float, confusion: torch.Tensor) -> SplitMetrics:
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class_total = confusion.sum(1).clamp(min=1)
    return SplitMetrics(
        loss=loss_sum / max(count, 1),
        accuracy=correct / max(count, 1),
        count=count,
        per_class_accuracy=(confusion.diag().double() / per_class_total).tolist(),
        confusion=confusion.tolist(),
    )


@dataclasses.dataclass
class EvalRecord:
    """One evaluation of a run: where it was, the training window's numbers and every split's metrics. It is one
    line of metrics.jsonl (flat()), W&B's charts at that step (flat("/")), and the last one gives summary.json's
    final numbers: the same names everywhere (name())."""

    epoch: float
    global_step: int
    train_loss: float | None  # since the last log, over every rank
    train_accuracy: float | None
    splits: dict[str, SplitMetrics]  # val (when there is one), test
    train_seconds: float
    early_stop: bool = False  # patience spent at this evaluation

    def flat(self, sep: str = "_") -> dict:
        out = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            name("train", "loss", sep): self.train_loss,
            name("train", "accuracy", sep): self.train_accuracy,
        }
        for split, m in self.splits.items():
            out.update({name(split, k, sep): v for k, v in dataclasses.asdict(m).items()})
        out[name("train", "seconds", sep)] = self.train_seconds
        return out | ({"early_stop": 1} if self.early_stop else {})

    def final(self, sep: str = "_") -> dict:
        """The numbers a run ends with, when this is its last evaluation: the test split's accuracy, loss and
        count, and the training time (summary.json; sep="/": the W&B summary)."""
        test = self.splits["test"]
        out = {name("test", k, sep): getattr(test, k) for k in ("accuracy", "loss", "count")}
        return out | {name("train", "seconds", sep): self.train_seconds}


class Predictions(NamedTuple):
    """The first test images with their labels and the model's class probabilities (CPU)."""

    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]
    probs: torch.Tensor  # float32 [N, classes]


def forward(
    model: torch.nn.Module,
    images_u8: torch.Tensor,
    mean: float,
    std: float,
    batch_size: int,
    device,
):
    """Yields float32 logits for consecutive batches of `images_u8` (call under torch.no_grad, model in eval)."""
    for i in range(0, len(images_u8), batch_size):
        yield model(
            loaders.normalize(
                images_u8[i : i + batch_size].to(device, non_blocking=True), mean, std
            )
        ).float()


@torch.no_grad()
def predict(
    model: torch.nn.Module, images_u8: torch.Tensor, mean: float, std: float, batch_size: int = 1000
) -> torch.Tensor:
    """Class probabilities [N, classes] (float32, CPU), on the model's device, in eval mode.

    Runs on one process with a plain (unwrapped) module: no collective, so other ranks are never involved.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = [
        torch.softmax(logits, 1).cpu()
        for logits in forward(model, images_u8, mean, std, batch_size, device)
    ]
    model.train(was_training)
    return torch.cat(probs) if probs else torch.zeros(0, 10)


@torch.no_grad()
def exact_metrics(
    accelerator: Accelerator,
    model,
    split: Split,
    mean: float,
    std: float,
    batch_size: int,
    keep_probs: int = 0,
) -> tuple[SplitMetrics, torch.Tensor | None]:
    """Exact loss/accuracy/confusion over `split`: each rank takes a contiguous share, then sums are reduced.

    Every rank runs the same number of forward passes on batches of the same shapes (a collective inside the
    model, as any sharded strategy has, would otherwise wait forever on the rank with one batch more): the
    shares differ by at most one image, so a shorter share is padded with blank images that are masked out of
    every sum.

    Also returns the class probabilities (CPU) of the first `keep_probs` images of this rank's share, from the
    same forward pass (rank 0's share starts at image 0): reports and W&B media need no second one.
    """
    model.eval()
    if accelerator.num_processes > 1:  # BN running stats as rank 0 has them (and saves them)
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)
    shard = loaders.eval_shard(len(split), accelerator.process_index, accelerator.num_processes)
    images, labels = split.images[shard], split.labels[shard]
    real = len(labels)  # this rank's images; those past it are padding
    if (pad := loaders.eval_shard_max(len(split), accelerator.num_processes) - real) > 0:
        images = torch.cat([images, images.new_zeros((pad, *images.shape[1:]))])
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    # [classes, classes], sized by the model's outputs at its first batch (every rank has one, padded if need be)
    confusion = torch.zeros(0, 0, device=device, dtype=torch.long)
    kept = []
    for i, logits in zip(
        range(0, len(images), batch_size), forward(model, images, mean, std, batch_size, device)
    ):
        logits = logits[: max(0, real - i)]  # the padding's logits count nowhere
        y = labels[i : i + batch_size].to(device, non_blocking=True)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        if not confusion.numel():
            classes = logits.shape[1]
            confusion = torch.zeros(classes, classes, device=device, dtype=torch.long)
        confusion += confusion_matrix(logits.argmax(1), y, confusion.shape[0])
        if i < keep_probs:
            # a host sync, only where asked
            kept.append(torch.softmax(logits[: keep_probs - i], 1).cpu())
    # Sums and counts, not means, cross the process boundary: the result is exact for any world size.
    loss_sum, confusion = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(confusion, "sum")
    model.train()
    return summarize(loss_sum.item(), confusion.cpu()), (torch.cat(kept) if kept else None)
