"""Atomic writes: a file or folder appears whole under its name, or not at all.

Every writer writes to a temporary name of its own beside the target (two writers of one file never share it)
and renames it over the target once done, so a reader never sees half a file and an interrupted or failed
write (a full disk, Ctrl-C) leaves the old content and no temporary behind. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, content: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(content)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` for a writer that needs a file name (safetensors, savefig, onnx.save): renamed
    over `path` (mode 0o644) when the block ends, removed when it raises."""
    path = Path(path)
    try:
        # .model.pt2.XXXX.tmp.pt2: hidden, marked temporary, and with the suffix writers check (torch.export's .pt2).
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as e:  # named after the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
        raise


@contextlib.contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` (mode 0o755: mkdtemp makes it private, a data folder is shared like any
    other), renamed to `path` when the block ends; `path` may be an empty folder, which it replaces. Removed,
    with whatever was written into it, when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp.chmod(0o755)
        yield tmp
        if path.exists():
            path.rmdir()  # empty (the caller checked): a non-empty one fails here and is left alone
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
