"""The reference loop: the classic PyTorch tutorial recipe, measured side by side with ours.

torchvision's FashionMNIST/MNIST dataset with `ToTensor` (a PIL image per sample, converted per sample),
a `DataLoader` of batch 32, the conv32-conv64-fc64 CNN (`models.build("tutorial_cnn")`) and plain SGD at
lr 0.01; default torch threads, no Accelerate. It evaluates on the test split every `--eval-every-images`
training images and appends records shaped like our metrics.jsonl (test_accuracy, train_seconds, epoch), so
bench/run.py reads both the same way.

    python bench/reference.py --data-dir /usr/share/datasets/fashion-mnist --run-dir /tmp/ref [--stop-at 0.85]
    python bench/reference.py --data-dir ... --run-dir /tmp/ref --throughput-steps 300   # images/s only

The IDX files are written uncompressed into RUN_DIR/torchvision/<Dataset>/raw/, where torchvision looks
for them, so it never downloads: the per-sample cost profile is exactly the tutorial's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_dist import models  # noqa: E402
from mnist_dist.data import idx, sources

TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def torchvision_datasets(name: str, idx_dir: str, root: Path):
    """torchvision's own dataset classes over local IDX files (no network)."""
    import torchvision
    from torchvision import transforms
    cls = getattr(torchvision.datasets, TV_CLASS[name])
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        s = sources.load_idx(idx_dir, split)
        img_stem, lbl_stem = idx.IDX_NAMES[split]
        if not (raw / img_stem).exists():
            idx.write_idx(raw, split, s.images, s.labels)
    train = cls(str(root), train=True, download=False, transform=transforms.ToTensor())
    test = cls(str(root), train=False, download=False, transform=transforms.ToTensor())
    return train, test


def make_loaders(train_set, test_set, seed: int, batch_size: int = 32):
    from torch.utils.data import DataLoader
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g),
            DataLoader(test_set, batch_size=1000))


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        total += len(y)
    model.train()
    return correct / total


def throughput(name: str, idx_dir: str, root: Path, device: str, steps: int, warmup: int = 5) -> float:
    """Steady-state training images/s of the reference loop (loader included), after `warmup` steps."""
    train_set, test_set = torchvision_datasets(name, idx_dir, root)
    train_loader, _ = make_loaders(train_set, test_set, seed=0)
    torch.manual_seed(0)
    model = models.build("tutorial_cnn").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    it, images, t0 = iter(train_loader), 0, None
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0, images = time.perf_counter(), 0
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(train_loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        images += len(y)
    if device == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion_mnist", choices=sorted(TV_CLASS))
    p.add_argument("--data-dir", required=True, help="folder with the four IDX files (.gz or not)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every-images", type=int, default=15000, help="evaluate this often (and at epoch ends)")
    p.add_argument("--stop-at", type=float, default=0.0, help="stop once test accuracy reaches this (0: never)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (smoke tests)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--throughput-steps", type=int, default=0,
                   help="instead of training: time this many steps and print {\"images_per_s\": ...}")
    args = p.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.throughput_steps:
        ips = throughput(args.data, args.data_dir, run_dir / "torchvision", device, args.throughput_steps)
        print(json.dumps({"images_per_s": ips, "device": device, "torch_threads": torch.get_num_threads()}))
        return 0
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)

    train_set, test_set = torchvision_datasets(args.data, args.data_dir, run_dir / "torchvision")
    train_loader, test_loader = make_loaders(train_set, test_set, args.seed)
    torch.manual_seed(args.seed)
    model = models.build("tutorial_cnn").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    # train_seconds counts training and the evaluations before each record, like train.py's.
    t_train, step, images, since_eval, acc = time.perf_counter(), 0, 0, 0, 0.0
    stop = False
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(train_loader):
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            step, images, since_eval = step + 1, images + len(y), since_eval + len(y)
            last = i == len(train_loader) - 1
            stop = bool(args.max_steps and step >= args.max_steps)
            if since_eval >= args.eval_every_images or last or stop:
                acc, since_eval = evaluate(model, test_loader, device), 0
                record = {"epoch": epoch + (i + 1) / len(train_loader), "global_step": step, "test_accuracy": acc,
                          "train_seconds": time.perf_counter() - t_train, "images": images}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"epoch {record['epoch']:.2f} test_acc {acc:.4f} train {record['train_seconds']:.1f}s", flush=True)
                stop = stop or bool(args.stop_at and acc >= args.stop_at)
            if stop:
                break
        if stop:
            break
    summary = {"test_accuracy": acc, "train_seconds": time.perf_counter() - t_train, "images": images,
               "wall_seconds": time.perf_counter() - T_START, "device": device, "model": "tutorial_cnn",
               "torch_threads": torch.get_num_threads()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
