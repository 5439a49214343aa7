"""Your own data (issue 32): classes come from the data, through an image folder (HF datasets' imagefolder) and
any Hub dataset with a ClassLabel column (here a local folder in the Hub's parquet layout, as no Hub is reachable),
into the model, the metrics, the tracker, the report, eval, predict, the demo and the card; bad data is one line;
a resume on another class list is refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_dist import config, models
from mnist_dist.data import images, sources
from mnist_dist.errors import DataError

from helpers import one_line_error, read_jsonl, run_cli

# Fashion-MNIST labels -> folder names of our choosing (sorted: the classes' order)
FASHION_PICK = {9: "ankle boot", 8: "bag", 1: "trouser"}
QUICK = ["data.val_size=150", "data.augment=false", "model.name=cnn_bn", "model.kwargs={width: 8}",
         "train.epochs=2", "train.per_device_batch_size=50", "train.lr=0.01", "train.progress=false",
         "train.mixed_precision=no"]


def write_folder(root, splits: dict) -> None:
    """splits: {"train": {class name: [PIL images]}, "test": {...}} -> ROOT/split/class/i.png"""
    for split, per_class in splits.items():
        for name, pictures in per_class.items():
            (root / split / name).mkdir(parents=True)
            for i, picture in enumerate(pictures):
                picture.save(root / split / name / f"{i:04d}.png")


def real_images(folder, split: str, label: int, n: int) -> list:
    data = sources.load_idx(folder, split)
    return [Image.fromarray(x.numpy()) for x in data.images[data.labels == label][:n]]


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory, fashion_dir):
    """Real Fashion-MNIST images, three classes under names of our choosing: 500 train, 100 test each."""
    root = tmp_path_factory.mktemp("fashion_folder")
    write_folder(root, {split: {name: real_images(fashion_dir, split, label, n) for label, name in FASHION_PICK.items()}
                        for split, n in (("train", 500), ("test", 100))})
    return root


def test_an_image_folder_of_real_images_trains_evaluates_and_predicts_with_its_folder_names(fashion_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mnist_dist.outputs import demo, hub

    classes = sorted(FASHION_PICK.values())
    run_dir, env = tmp_path / "run", {"HF_HOME": str(tmp_path / "hf")}
    data = ["data.name=imagefolder", f"data.dir={fashion_folder}"]
    out = run_cli(["train", *data, *QUICK, "tracking.backend=tensorboard", f"run.dir={run_dir}"], env=env).stdout
    assert "classes=3 (ankle boot, bag, trouser)" in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    info = json.loads((run_dir / "model.json").read_text())
    assert summary["test_accuracy"] > 0.9 and summary["test_count"] == 300, summary
    assert info["classes"] == summary["classes"] == classes and info["dataset"] == "imagefolder"
    # the statistics of the training split (val carved out), not Fashion-MNIST's
    cfg = config.from_dict(config.Config, {"data": {"name": "imagefolder", "dir": str(fashion_folder),
                                                    "val_size": 150}})
    assert [info["mean"], info["std"]] == list(sources.pixel_stats(sources.load_datasets(cfg.data).train))
    assert [info["mean"], info["std"]] != list(sources.STATS["fashion_mnist"])
    assert np.array(read_jsonl(run_dir / "metrics.jsonl")[-1]["test_confusion"]).shape == (3, 3)
    assert "| ankle boot |" in (run_dir / "report.md").read_text()
    tags = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"]
    assert {f"test/per_class_accuracy/{c}" for c in classes} <= set(tags), tags

    evaluated = run_cli(["eval", str(run_dir), "--json"], env=env).stdout
    assert json.loads(evaluated.strip().splitlines()[-1])["accuracy"] == summary["test_accuracy"]
    assert "ankle boot" in run_cli(["eval", str(run_dir)], env=env).stdout

    files = [sorted((fashion_folder / "test" / c).iterdir())[3] for c in classes]
    lines = run_cli(["predict", str(run_dir), *map(str, files)], env=env).stdout.strip().splitlines()
    named = [line.split(": ", 1)[1].split(" ")[0] for line in lines]  # "FILE: bag 97.1%, ..."
    assert sum(n == c.split(" ")[0] for n, c in zip(named, classes)) >= 2, lines

    probs, _ = demo.classifier(run_dir)[0](Image.open(files[2]))
    assert set(probs) == set(classes)
    card = hub.card_text(info, run_dir, False, "someone/fashion-three")
    assert "3 classes" in card and "ankle boot, bag, trouser" in card and "a folder of images" in card
    assert "\n# cnn_bn-imagefolder\n" in card  # the heading was empty (card_data's model_name is not a variable)
    assert "datasets:" not in card  # no Hub dataset to link
    model = hub.HubModel(**info)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)

    # a resume on another class list: refused in one line, the run's files untouched
    more = tmp_path / "more"
    write_folder(more, {s: {c: [Image.open(p) for p in sorted((fashion_folder / s / c).iterdir())[:150]]
                            for c in classes} for s in ("train", "test")})
    write_folder(more, {s: {"zebra": [Image.open(files[0])] * 20} for s in ("train", "test")})
    before = (run_dir / "model.safetensors").read_bytes()
    proc = run_cli(["train", "data.name=imagefolder", f"data.dir={more}", *QUICK, f"run.dir={run_dir}"],
                   env=env, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "was trained on other classes: 3 classes (ankle boot, bag, trouser)" in proc.stderr
    assert "4 classes (ankle boot, bag, trouser, zebra)" in proc.stderr
    assert (run_dir / "model.safetensors").read_bytes() == before


def dark_on_white_64(digit: Image.Image) -> Image.Image:
    """A 28x28 MNIST digit (light on black) as a 64x64 scan: dark ink on white paper, the digit off-centre."""
    page = Image.new("L", (64, 64), 255)
    page.paste(Image.eval(digit.resize((44, 44), Image.BICUBIC), lambda v: 255 - v), (14, 4))
    return page


def test_real_mnist_digits_as_64px_dark_on_white_pngs_become_mnist_like_inputs_and_train(mnist_dir, tmp_path):
    picks = {0: "zero", 1: "one", 7: "seven"}
    root = tmp_path / "digits64"
    write_folder(root, {split: {name: [dark_on_white_64(d) for d in real_images(mnist_dir, split, label, n)]
                                for label, name in picks.items()} for split, n in (("train", 300), ("test", 60))})
    cfg = config.from_dict(config.Config, {"data": {"name": "imagefolder", "dir": str(root), "val_size": 0}})
    test = sources.load_datasets(cfg.data).test
    assert test.images.shape == (180, 28, 28) and test.images.dtype == torch.uint8
    # light ink on a black background, the ink's box 28 px on its longer side, centred: as predict makes a file
    corners = test.images[:, :3, :3].float().mean().item()
    assert corners < 3 and test.images.float().mean().item() > 20
    # the same digits laid out from the 28x28 originals: the 64 px round trip (invert, resize) keeps them
    originals = real_images(mnist_dir, "test", 0, 60)
    again = np.stack([images.to_model_input(np.asarray(d, np.float32) / 255, images.OTHER) for d in originals])
    zeros = test.images[test.labels == 2].numpy().astype(float)  # classes one, seven, zero
    same, other = np.abs(again - zeros).mean(), np.abs(again - np.roll(zeros, 1, axis=0)).mean()
    print(f"64 px round trip: mean |difference| {same:.1f} of 255 to its own digit, {other:.1f} to another zero")
    assert same < other / 2

    run_dir = tmp_path / "run"
    run_cli(["train", "data.name=imagefolder", f"data.dir={root}", *QUICK, "data.val_size=60", f"run.dir={run_dir}"],
            env={"HF_HOME": str(tmp_path / "hf")})
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.95 and summary["classes"] == ["one", "seven", "zero"], summary


# ----------------------------------------------------------------------------- a Hub dataset's parquet layout


def write_hub_parquet(root, splits: dict, names: list[str], columns=("img", "fine_label"), class_label=True):
    """A local folder as a Hub dataset repo holds it: data/{split}-00000-of-00001.parquet, the features (a
    ClassLabel with `names`) in the parquet schema's metadata. splits: {split: [(PIL image, label)]}. The table is
    written with pyarrow so that labels a ClassLabel would refuse can be written too."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_col, label_col = columns
    label = datasets.ClassLabel(names=names) if class_label else datasets.Value("int64")
    features = datasets.Features({image_col: datasets.Image(), label_col: label})
    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        encoded = [datasets.Image().encode_example(picture) for picture, _ in rows]
        table = pa.table({image_col: encoded, label_col: [y for _, y in rows]}, schema=features.arrow_schema)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")


def rgb32(digit: Image.Image) -> Image.Image:
    return digit.resize((32, 32), Image.BILINEAR).convert("RGB")


def test_a_hub_dataset_with_other_columns_and_image_sizes_gives_its_classlabel_names(fashion_dir, tmp_path):
    names = ["bag", "trouser"]  # ClassLabel order: bag 0, trouser 1
    rows = {split: [(rgb32(x), i) for i, label in enumerate((8, 1)) for x in real_images(fashion_dir, split, label, n)]
            for split, n in (("train", 300), ("test", 50))}
    write_hub_parquet(tmp_path / "repo", rows, names)
    run_dir = tmp_path / "run"
    data = [f"data.name=hf:{tmp_path / 'repo'}", "data.image_column=img", "data.label_column=fine_label"]
    out = run_cli(["train", *data, *QUICK, "data.val_size=50", f"run.dir={run_dir}"],
                  env={"HF_HOME": str(tmp_path / "hf")}).stdout
    assert "classes=2 (bag, trouser)" in out and f"source=hf:{tmp_path / 'repo'}" in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == names and summary["test_accuracy"] > 0.95, summary


def hub_problem(tmp_path, rows: dict, names=("a", "b"), **kwargs) -> str:
    write_hub_parquet(tmp_path / "repo", rows, list(names), **kwargs)
    cfg = config.from_dict(config.Config, {"data": {"name": f"hf:{tmp_path / 'repo'}", "val_size": 0,
                                                    "image_column": "img", "label_column": "fine_label"}})
    with pytest.raises(DataError) as e:
        sources.load_datasets(cfg.data)
    return str(e.value)


def blank(v: int = 0) -> Image.Image:
    """A cross of ink 255 - v on a background of grey v."""
    picture = Image.new("L", (28, 28), v)
    picture.paste(255 - v, (12, 4, 16, 24))
    picture.paste(255 - v, (4, 12, 24, 16))
    return picture


def test_a_hub_dataset_with_bad_labels_or_columns_is_one_line(tmp_path):
    out_of_range = {"train": [(blank(), 0), (blank(), 1)], "test": [(blank(), 2)]}
    assert "test split: label 2 is outside 0-1 (2 classes)" in hub_problem(tmp_path / "1", out_of_range)
    plain = {"train": [(blank(), 0), (blank(), 1)], "test": [(blank(), 1)]}
    assert "not a ClassLabel" in hub_problem(tmp_path / "2", plain, class_label=False)
    other = hub_problem(tmp_path / "3", plain, columns=("image", "label"))
    assert "no column(s) ['img', 'fine_label'] (its columns: image, label)" in other
    lacking = {"train": [(blank(), 0), (blank(), 0)], "test": [(blank(), 1)]}
    assert "the test split holds class(es) ['b'] that the train split lacks" in hub_problem(tmp_path / "4", lacking)


def cli_one_line(args: list[str], *words: str) -> None:
    """The installed command, in a process of its own (in this one, an earlier test's AcceleratorState would clash
    with the run's): exit 2 and one stderr line holding every word."""
    proc = run_cli(args, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (proc.returncode, err)
    for w in words:
        assert w in err, err


def test_a_bad_hub_dataset_is_one_line_at_the_command_line(tmp_path):
    """(Reading local files, HF datasets' progress bars wrote their lines above the error.)"""
    write_hub_parquet(tmp_path / "repo", {"train": [(blank(), 0), (blank(), 1)], "test": [(blank(), 2)]}, ["a", "b"])
    cli_one_line(["train", f"data.name=hf:{tmp_path / 'repo'}", "data.image_column=img", "data.label_column=fine_label",
                  *QUICK, "data.val_size=0", f"run.dir={tmp_path / 'run'}"], "test split: label 2 is outside 0-1")


# ----------------------------------------------------------------------------- bad image folders, one line each


def bad_folder(root, case: str):
    two = {"train": {"cat": [blank()] * 3, "dog": [blank(255)] * 3}, "test": {"cat": [blank()], "dog": [blank(255)]}}
    if case == "one class":
        write_folder(root, {"train": {"cat": [blank()] * 3}, "test": {"cat": [blank()]}})
    elif case == "empty class folder":
        write_folder(root, two)
        (root / "train" / "emu").mkdir()
    elif case == "unreadable file":
        write_folder(root, two)
        (root / "train" / "dog" / "0009.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "test class train lacks":
        write_folder(root, two)
        write_folder(root, {"test": {"emu": [blank()]}})
    elif case == "images outside class folders":
        write_folder(root, two)
        blank().save(root / "train" / "stray.png")
    elif case == "no test folder":
        write_folder(root, {"train": two["train"]})


@pytest.mark.parametrize(("case", "words"), [
    ("one class", ["train: 1 class folder(s) ['cat']; a classifier needs at least 2"]),
    ("empty class folder", ["train/emu: an empty class folder"]),
    ("unreadable file", ["train/dog/0009.png: not an image file PIL can read"]),
    ("test class train lacks", ["test: class folder(s) ['emu'] that train/ lacks"]),
    ("images outside class folders", ["train: images outside any class folder (stray.png"]),
    ("no test folder", ["no test/ folder; an image folder is DIR/train/<class>/<image>"]),
])
def test_a_bad_image_folder_is_one_line(tmp_path, case, words):
    root = tmp_path / "folder"
    bad_folder(root, case)
    cli_one_line(["train", "data.name=imagefolder", f"data.dir={root}", *QUICK, "data.val_size=0",
                  f"run.dir={tmp_path / 'run'}"], *words)
    assert not (tmp_path / "run").exists()


def test_mixed_sizes_and_modes_are_converted_not_refused(tmp_path):
    root = tmp_path / "folder"
    write_folder(root, {"train": {"cat": [blank(), blank().resize((50, 30)).convert("RGB")],
                                  "dog": [blank(255).resize((90, 90)), blank().convert("LA")]},
                        "test": {"cat": [blank().convert("P")], "dog": [blank(255).resize((17, 40))]}})
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class (HF datasets skips it too)
    cfg = config.from_dict(config.Config, {"data": {"name": "imagefolder", "dir": str(root), "val_size": 0}})
    data = sources.load_datasets(cfg.data)
    assert data.train.images.shape == (4, 28, 28) and data.test.images.shape == (2, 28, 28)
    assert data.classes == ["cat", "dog"] and data.train.labels.tolist() == [0, 0, 1, 1]
    # light on dark whatever the paper: every image's background (its corner) is black
    assert data.train.images[:, 0, 0].tolist() == [0, 0, 0, 0]


def test_the_data_name_and_its_keys_are_checked_in_one_line(capsys, tmp_path):
    one_line_error(capsys, ["train", "data.name=emnist_whatever", f"run.dir={tmp_path}"],
                   "data.name: invalid value 'emnist_whatever'; choose one of mnist, fashion_mnist, imagefolder, "
                   "hf:OWNER/NAME")
    one_line_error(capsys, ["train", "data.name=imagefolder", f"run.dir={tmp_path}"],
                   "data.name=imagefolder needs data.dir")
    one_line_error(capsys, ["train", "data.name=hf:me/set", "data.source=idx", f"run.dir={tmp_path}"],
                   "data.source=idx is for mnist and fashion_mnist")
    one_line_error(capsys, ["train", "model.kwargs={num_classes: 3}", f"run.dir={tmp_path}"],
                   "num_classes comes from the data")


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_has_a_head_of_the_datas_classes(name):
    assert models.build(name, 7)(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_the_fingerprint_covers_the_classes():
    split = sources.Split(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    a = sources.Datasets(split, None, split, "x", ["cat", "dog"], (0.5, 0.5))
    b = sources.Datasets(split, None, split, "x", ["dog", "cat"], (0.5, 0.5))
    assert sources.fingerprint(a)["train"] == sources.fingerprint(b)["train"]
    assert sources.fingerprint(a) != sources.fingerprint(b)
