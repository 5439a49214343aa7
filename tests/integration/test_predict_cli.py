"""`mnist-dist predict` through the installed script (the preprocessing is tests/unit/test_predict.py): the output
formats (lines, JSON, --show) and the exit codes."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_dist import artifact, data, images

from helpers import FASHION_DIR, needs_fashion, train_in_process

FASHION = FASHION_DIR
pytestmark = needs_fashion
MNIST_DIST = Path(sys.executable).parent / "mnist-dist"
N = 60  # images per distortion: enough for an agreement rate, a second of CPU


@pytest.fixture(scope="module")
def test_split():
    return data.load_idx(FASHION, "test")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_split):
    """A small MLP trained for a few seconds on 5000 real training images (~80% test accuracy)."""
    train = data.load_idx(FASHION, "train")
    return train_in_process(tmp_path_factory.mktemp("run"), "mlp_128", {},
                            data.Split(train.images[:5000], train.labels[:5000]), steps=150, lr=2e-3)


def classify(model_dir, images_u8: np.ndarray) -> np.ndarray:
    model, model_info = artifact.load_model(model_dir)
    with torch.no_grad():
        x = data.normalize(torch.from_numpy(images_u8), model_info["mean"], model_info["std"])
        return model(x).argmax(1).numpy()


def distort(img28: np.ndarray, kind: str, rng) -> Image.Image:
    """A 28x28 light-on-dark image as a user might have it: bigger, somewhere on a page, dark on light, colour."""
    img = Image.fromarray(img28)
    if kind == "plain":
        return img
    img = img.resize((140, 140), Image.BICUBIC)  # 5x: the preprocessing must shrink it back
    if kind == "enlarged":
        return img
    canvas = Image.new("L", (500, 300), 0)  # off-centre on a wide page: must be cropped and re-centred
    canvas.paste(img, (int(rng.integers(0, 360)), int(rng.integers(0, 160))))
    if kind == "shifted":
        return canvas
    inverted = Image.eval(canvas, lambda v: 255 - v)  # dark ink on white paper
    if kind == "inverted":
        return inverted
    ink = np.asarray(inverted, np.float32)[..., None] / 255
    navy, cream = np.array([20, 30, 90]), np.array([250, 240, 215])  # dark blue ink on cream paper
    return Image.fromarray((navy + ink * (cream - navy)).astype(np.uint8), "RGB")


# Resampling twice (5x up, then down) blurs and moves edges by up to half a pixel, which Fashion-MNIST's
# fabric textures show; hence looser bounds for the distorted files than for the untouched ones.


def test_cli_lines_json_show_and_exit_codes(tmp_path, model_dir, test_split):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    originals = test_split.images[:5].numpy()
    for k, img in enumerate(originals):
        distort(img, "inverted", rng).save(folder / f"item{k}.png")
    (folder / "readme.txt").write_text("not scanned: a folder is searched for image suffixes only")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    expected = [data.CLASSES["fashion_mnist"][i]
                for i in classify(model_dir, np.stack([images.preprocess(folder / f"item{k}.png",
                                                                          images.LAYOUTS["fashion_mnist"])
                                                       for k in range(5)]))]

    # Lines: the good files all print (in order, across batches of 2) although one file is broken: exit 1.
    r = subprocess.run([str(MNIST_DIST), "predict", str(model_dir), str(folder), str(broken), "--top-k", "2",
                        "--batch-size", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5
    for k, line in enumerate(lines):
        m = re.fullmatch(r"(.+): (.+) (\d+\.\d)%, (.+) (\d+\.\d)%", line)
        assert m, line
        assert m[1] == str(folder / f"item{k}.png") and m[2] == expected[k]
        assert float(m[3]) >= float(m[5])
    assert r.stderr.strip() == f"{broken}: not an image file PIL can read (expected PNG, JPEG, BMP or GIF)"

    # JSON Lines and --show on good files only: exit 0, one picture per image.
    show = tmp_path / "seen"
    r = subprocess.run([str(MNIST_DIST), "predict", str(model_dir / "model.safetensors"), str(folder), "--json",
                        "--top-k", "3", "--show", str(show)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["class"] for rec in records] == expected
    for rec in records:
        probs = [t["prob"] for t in rec["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert rec["top_k"][0] == {"class": rec["class"], "index": rec["index"], "prob": rec["prob"]}
    pictures = sorted(p.name for p in show.iterdir())
    assert pictures == [f"item{k}.png.png" for k in range(5)]
    with Image.open(show / pictures[0]) as im:
        assert im.size[0] > 100  # a real rendered figure, not an empty file


# ----------------------------------------------------------------------------- real digits on paper
