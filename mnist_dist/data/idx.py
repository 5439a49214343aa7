"""The IDX file format of MNIST and Fashion-MNIST: strict reading, raw or gzipped, and writing.

A folder of the four files named as the originals (IDX_NAMES) is a data.dir. Readers return uint8 images
[N, 28, 28] and int64 labels [N] sharing the file's buffer (no copy after the read); the magic, the shape and the
size the header promises are checked, and a bad file is one DataError line that names it. `download` and
`convert` write raw files, which are read with no decoding; gzipped ones (the originals, Debian's) are decompressed
at every read.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import torch

from mnist_dist.errors import DataError

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read(path: Path) -> bytearray:
    """A file's bytes in a writable buffer that tensors can share (torch.frombuffer): no copy after the read."""
    with path.open("rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)
    if buf[:2] == b"\x1f\x8b":  # gzip's magic, whatever the name says
        buf = bytearray(gzip.decompress(buf))
    return buf


def _open_idx(folder: Path, stem: str) -> tuple[Path, bytearray]:
    dotted = stem.replace("-idx", ".idx")  # another spelling seen in the wild
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = folder / name
        if path.is_file():
            try:
                return path, _read(path)
            # zlib.error: bytes flipped inside
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise DataError(f"{path}: cannot read ({e})") from None
    raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")


def read_idx_images(folder: Path, stem: str) -> torch.Tensor:
    path, raw = _open_idx(folder, stem)
    if len(raw) < 16:
        raise DataError(f"{path}: truncated IDX image file ({len(raw)} bytes, header needs 16)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 0x00000803:
        raise DataError(f"{path}: not an IDX image file (magic {magic:#010x}, expected 0x00000803)")
    if n == 0:
        raise DataError(f"{path}: the IDX file holds no images")
    if (rows, cols) != (28, 28):
        raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
    if len(raw) != 16 + n * rows * cols:
        raise DataError(
            f"{path}: size {len(raw)} bytes does not match header ({n} images of {rows}x{cols} "
            f"need {16 + n * rows * cols}); the file is truncated or corrupt"
        )
    return torch.frombuffer(raw, dtype=torch.uint8, offset=16, count=n * rows * cols).view(
        n, rows, cols
    )


def read_idx_labels(folder: Path, stem: str) -> torch.Tensor:
    path, raw = _open_idx(folder, stem)
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX label file ({len(raw)} bytes, header needs 8)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != 0x00000801:
        raise DataError(f"{path}: not an IDX label file (magic {magic:#010x}, expected 0x00000801)")
    if len(raw) != 8 + n:
        raise DataError(
            f"{path}: size {len(raw)} bytes does not match header ({n} labels need {8 + n})"
        )
    labels = (
        torch.frombuffer(raw, dtype=torch.uint8, offset=8, count=n).long()
        if n
        else torch.zeros(0, dtype=torch.long)
    )
    if n and labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} outside 0-9")
    return labels


def write_idx(
    folder: str | Path, split: str, images: torch.Tensor, labels: torch.Tensor, gz: bool = False
):
    """Write a split in IDX format (used by tests and to export data for offline clusters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img_stem, lbl_stem = IDX_NAMES[split]
    n, rows, cols = images.shape
    blobs = {
        img_stem: struct.pack(">IIII", 0x803, n, rows, cols)
        + images.to(torch.uint8).numpy().tobytes(),
        lbl_stem: struct.pack(">II", 0x801, n) + labels.to(torch.uint8).numpy().tobytes(),
    }
    for stem, blob in blobs.items():
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
