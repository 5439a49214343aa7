"""The package as people call it: `mnist-dist --version`, `python -m mnist_dist`, `mnist_dist.__version__` all say
pyproject's version; `mnist-dist scripts` lists, prints and writes the SLURM scripts and launch YAMLs, and the
written sbatch scripts launch `-m mnist_dist train` where there is no train_accel.py; the package index's long
description has no relative link. (.ci/wheel_check checks the same from an installed wheel.)"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mnist_dist

from helpers import ROOT, VENV_BIN, run_cli, tiny_overrides

PYPROJECT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M).group(1)


def test_version_everywhere():
    assert mnist_dist.__version__ == VERSION
    assert run_cli(["--version"]).stdout == f"mnist-dist {VERSION}\n"
    proc = subprocess.run([sys.executable, "-m", "mnist_dist", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, f"mnist-dist {VERSION}\n"), proc.stderr


def test_python_m_runs_commands_and_their_errors():
    proc = subprocess.run([sys.executable, "-m", "mnist_dist", "recipes"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and re.search(r"^debug ", proc.stdout, re.M), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mnist_dist", "scripts", "nope.sbatch"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mnist-dist scripts: error: no shipped file 'nope.sbatch'")
    assert len(proc.stderr.splitlines()) == 1


def test_scripts_lists_prints_and_writes(tmp_path):
    listed = run_cli(["scripts"]).stdout.split()
    expected = sorted([f"slurm/{p.name}" for p in (ROOT / "slurm").iterdir() if p.suffix in (".sbatch", ".sh")]
                      + [f"configs/accelerate/{p.name}" for p in (ROOT / "configs/accelerate").glob("*.yaml")])
    assert listed == expected
    assert run_cli(["scripts", "slurm/cpu.sbatch"]).stdout == (ROOT / "slurm/cpu.sbatch").read_text()
    assert run_cli(["scripts", "cpu_ddp2.yaml"]).stdout == (ROOT / "configs/accelerate/cpu_ddp2.yaml").read_text()

    run_cli(["scripts", "--write", str(tmp_path)])
    for name in expected:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name
    assert (tmp_path / "slurm/cpu.sbatch").stat().st_mode & 0o111
    run_cli(["scripts", "--write", str(tmp_path)])  # the same content again: fine

    (tmp_path / "slurm/cpu.sbatch").write_text("#!/bin/bash\n# my edits\n")
    proc = run_cli(["scripts", "--write", str(tmp_path)], check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "slurm/cpu.sbatch already there with other content" in proc.stderr
    assert (tmp_path / "slurm/cpu.sbatch").read_text() == "#!/bin/bash\n# my edits\n"  # never overwritten


def test_sbatch_entry_without_a_checkout(tmp_path):
    """In a folder written by `scripts --write` (no train_accel.py) the scripts launch the installed package."""
    run_cli(["scripts", "--write", str(tmp_path)])
    show = 'source slurm/common.sh; train_entry; printf "%s|" "${TRAIN_ENTRY[@]}"'
    there = subprocess.run(["bash", "-c", show], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert there.stdout == "-m|mnist_dist|train|"
    here = subprocess.run(["bash", "-c", show], cwd=ROOT, capture_output=True, text=True, check=True)
    assert here.stdout == "train_accel.py|"
    for script in ("cpu.sbatch", "single_node.sbatch", "multi_node.sbatch"):
        text = (ROOT / "slurm" / script).read_text()
        assert "train_entry" in text and '"${TRAIN_ENTRY[@]}"' in text and "train_accel.py \"" not in text, script


def test_workers_found_by_either_entry():
    """The signal forwarding's pkill pattern matches both entries' worker command lines, not the launcher's."""
    pattern = re.search(r"--full '([^']+)'", (ROOT / "slurm/common.sh").read_text()).group(1)
    assert re.search(pattern, "/venv/bin/python -u train_accel.py --config debug")
    assert re.search(pattern, "/venv/bin/python -u -m mnist_dist train --config debug")
    assert not re.search(pattern, "/venv/bin/python /venv/bin/accelerate launch --config_file x.yaml")


def test_long_description_has_no_relative_links():
    readme = re.search(r'^readme = "([^"]+)"', PYPROJECT, re.M).group(1)
    text = (ROOT / readme).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    assert all(re.match(r"https?://", t) for t in targets), targets
    assert 'license = "MIT"' in PYPROJECT and "License ::" not in PYPROJECT  # PEP 639: the expression alone


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_from_a_written_folder_trains(slurm, tiny_idx, tmp_path):
    """sbatch slurm/cpu.sbatch from a folder of `mnist-dist scripts --write` (no checkout there): 2-process DDP
    through `accelerate launch -m mnist_dist train`, to the end."""
    import json
    import os
    launch_dir = tmp_path / "launch"
    run_cli(["scripts", "--write", str(launch_dir)])
    run_dir = tmp_path / "run"
    job_id = slurm.sbatch("slurm/cpu.sbatch", *tiny_overrides(tiny_idx, run_dir, "tracking.backend=none"),
                          cwd=launch_dir, env={"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
                          options=[f"--output={tmp_path}/%x-%j.out"])
    info = slurm.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "COMPLETED", log[-5000:]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
