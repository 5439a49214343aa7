"""The decode cache: a gzipped file's decompressed bytes kept on disk, so that a machine pays the gunzip once
(~0.4 s for Fashion-MNIST's training images) and later runs read the bytes back (~0.05 s).

An entry is one file in cache_dir(): CACHE_MAGIC, the payload's CRC-32 (4 bytes) and length (8 bytes,
big-endian), then the payload. It is used only when whole, else refused, removed and decoded again. Entries are
written atomically; a cache that cannot be written (read-only home, full disk) is skipped. The cache knows gzip
(its size trailer checks an entry's length) but nothing of what the bytes hold: idx asks it for IDX files.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from mnist_dist import atomic

CACHE_MAGIC = b"mnist-dist idx cache 2\n"
CACHE_HEAD = len(CACHE_MAGIC) + 4 + 8


def cache_dir() -> Path:
    """Where decompressed files are kept: $MNIST_DIST_CACHE, else $XDG_CACHE_HOME/mnist-dist or ~/.cache/mnist-dist."""
    if os.environ.get("MNIST_DIST_CACHE"):
        return Path(os.environ["MNIST_DIST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-dist"


def get(source: Path, decompress: Callable[[], bytearray]) -> bytearray | memoryview:
    """The decompressed bytes of the gzipped file `source`: its entry's when that is whole (then only the source's
    4-byte size trailer is read), else decompress()'s, stored as the entry for the next run."""
    entry = _entry(source)
    if (hit := _read(entry, source)) is not None:
        return hit
    content = decompress()
    if len(content) % 2**32 == _gzip_size(source):  # else several gzip members: not cached
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            head = (
                CACHE_MAGIC
                + zlib.crc32(content).to_bytes(4, "big")
                + len(content).to_bytes(8, "big")
            )
            atomic.write_bytes(entry, head + content)
        except OSError:
            pass
    return content


def _entry(source: Path) -> Path:
    """The cache file of one gzipped source: named after its path, size, mtime, ctime and inode, so a changed or
    replaced source never meets an old entry (ctime: a file rewritten in place with its mtime put back)."""
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    return (
        cache_dir()
        / f"{source.name.removesuffix('.gz')}-{zlib.crc32(key.encode()):08x}{len(key):04x}"
    )


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size mod 2^32 that a gzip file's last 4 bytes record (ISIZE): 4 bytes read, not the file."""
    try:
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _read(entry: Path, source: Path) -> memoryview | None:
    """The cached bytes if the entry is whole: magic, a payload as long as its header says and as the source's
    gzip trailer says (never empty: the trailer is mod 2^32, so it would pass an empty payload for a 4 GiB source),
    and its CRC-32. None if absent; a corrupt entry is refused: removed, and the source is decoded again."""
    try:
        blob = memoryview(read_buffer(entry))
    except OSError:
        return None
    payload = blob[CACHE_HEAD:]
    crc = int.from_bytes(blob[len(CACHE_MAGIC) : len(CACHE_MAGIC) + 4], "big")
    length = int.from_bytes(blob[len(CACHE_MAGIC) + 4 : CACHE_HEAD], "big")
    if (
        blob[: len(CACHE_MAGIC)] == CACHE_MAGIC
        and len(blob) >= CACHE_HEAD
        and len(payload) == length > 0
        and length % 2**32 == _gzip_size(source)
        and crc == zlib.crc32(payload)
    ):
        return payload
    print(
        f"mnist-dist: the cached decode {entry} is corrupt; refused and removed, decoding the source again",
        file=sys.stderr,
    )
    entry.unlink(missing_ok=True)
    return None


def read_buffer(path: Path) -> bytearray:
    """A file's bytes in a writable buffer that tensors can share (torch.frombuffer): no copy after the read. The
    cache reads its entries with it, idx its uncompressed files."""
    with path.open("rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)
    return buf
