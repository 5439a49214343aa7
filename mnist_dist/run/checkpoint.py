"""Training-state checkpoints: RUN_DIR/checkpoints/step_N/ folders that save the loop's state.json with everything
else a resume needs (Accelerate's save_state), committed whole, checked by a manifest, and found again newest
first. The model a run leaves (model.safetensors + model.json) is artifact's.

Nothing here unpickles: metadata is JSON, and load_state loads tensors only (weights_only=True).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mnist_dist.errors import UserError
from mnist_dist.run import atomic
from mnist_dist.run.rundir import file_digest

if TYPE_CHECKING:  # the type only: accelerate is imported where it is built
    from accelerate import Accelerator


class CheckpointError(UserError):
    """A checkpoint that could not be written (a full disk), or one to resume from that is not whole; printed as
    one line."""


# ----------------------------------------------------------------------------- training-state checkpoints
# Layout: RUN_DIR/checkpoints/step_00001234/ holds Accelerate's save_state files, state.json and manifest.json
# (every other file's size and SHA-256). Every rank writes into .tmp-step_00001234/; only after all ranks are
# done does the main process write state.json and the manifest and rename the folder: a folder under the final
# name is always whole when committed. A folder found damaged later (a file missing, truncated or rewritten) is
# renamed damaged-step_N and an older one is loaded instead.

CKPT_DIR, STATE_FILE, MANIFEST_FILE = "checkpoints", "state.json", "manifest.json"
DAMAGED_PREFIX = "damaged-"
# An earlier commit of the same step, kept under this name until the new one is in place (recover_partial).
REPLACED_PREFIX = ".old-"
FORMAT = 2  # state.json's "format": 2 is written with a manifest; before it (no "format"), none was


def save(accelerator: Accelerator, run_dir: Path, state_json: dict, keep: int) -> Path:
    root = run_dir / CKPT_DIR
    name = f"step_{state_json['global_step']:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash during an earlier write
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    failure = None
    try:
        # model, optimizer, scheduler, scaler, every rank's RNG states
        accelerator.save_state(str(tmp))
        # inside the uncommitted folder: nothing loads it before the rename
        if accelerator.is_main_process:
            atomic.write_text(tmp / STATE_FILE, json.dumps(state_json, indent=2))
    except Exception as e:  # a full disk: torch and safetensors each word it their own way
        failure = e
    # A collective: every rank learns whether all wrote their part, so a full disk stops them together.
    if _any_rank(accelerator, failure is not None):
        _give_up(accelerator, tmp, failure)
    # Every rank's files are in: the main process lists them in the manifest and commits (a second collective,
    # so that a manifest that cannot be written stops every rank too).
    failure = None
    if accelerator.is_main_process:
        try:
            write_manifest(tmp)
            _fsync_dir(tmp)
            _commit(tmp, final)
        except Exception as e:
            failure = e
    if _any_rank(accelerator, failure is not None):
        _give_up(accelerator, tmp, failure)
    if accelerator.is_main_process:
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)  # only after the new one is committed
    accelerator.wait_for_everyone()
    return final


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """A collective: whether `flag` is true on some rank."""
    return bool(
        accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item()
    )


def _commit(tmp: Path, final: Path) -> None:
    """Rename the written folder to its final name. The same step saved twice (an epoch end right after a
    periodic save, a max_steps stop) replaces the committed folder only once the new one is in place: the old
    one is renamed aside first, never deleted before, so a kill at any point leaves one whole step_N (or its
    .old- copy, which recover_partial puts back)."""
    replaced = final.with_name(REPLACED_PREFIX + final.name)
    if final.exists():
        if replaced.exists():
            shutil.rmtree(replaced)  # a leftover whose step_N was committed again since
        os.replace(final, replaced)
    try:
        os.replace(tmp, final)  # the commit point
    except BaseException:
        if replaced.exists() and not final.exists():
            os.replace(replaced, final)
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)


def _give_up(accelerator: Accelerator, tmp: Path, cause: Exception | None):
    """A checkpoint that could not be written: its partial folder goes (it holds the space the next try needs),
    the committed ones stay, and the run stops in one line."""
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    why = (
        (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        if cause
        else "another rank could not write its part"
    )
    free_mb = shutil.disk_usage(tmp.parent).free / 1e6
    raise CheckpointError(
        f"cannot write checkpoint {tmp.name[5:]} in {tmp.parent} ({why}; {free_mb:.1f} MB free "
        f"there). The earlier checkpoints are intact: free some space, then run the same command "
        f"to resume"
    )


def clean_partial(run_dir: Path) -> None:
    """Remove .tmp-step_N folders that a crash or a full disk left (never loaded, and they hold space); put back
    a .old-step_N whose replacement was never committed (a kill between _commit's two renames)."""
    root = Path(run_dir) / CKPT_DIR
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for replaced in root.glob(REPLACED_PREFIX + "step_*"):
        final = replaced.with_name(replaced.name.removeprefix(REPLACED_PREFIX))
        if final.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, final)


def _fsync_dir(path: Path) -> None:
    for p in [path, *path.iterdir()] if path.is_dir() else [path]:
        try:
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass


def write_manifest(folder: Path) -> None:
    """manifest.json: the size and SHA-256 of every other file in a checkpoint folder, checked by damage(). Every
    file gets the same mode, 0644, as every whole-file write here (safetensors makes its own 0600)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            p.chmod(0o644)
            files[p.relative_to(folder).as_posix()] = {
                "bytes": p.stat().st_size,
                "sha256": file_digest(p, "sha256"),
            }
    atomic.write_text(folder / MANIFEST_FILE, json.dumps({"files": files}, indent=1))


def damage(ckpt: Path, check_state=None) -> str | None:
    """What is wrong with a checkpoint folder, as 'FILE: why' naming the first bad file, or None when state.json
    reads (and passes check_state(state) -> problem or None) and every file its manifest lists has the size and
    hash written at commit. A checkpoint written with a manifest (FORMAT 2) must still have it; one from before
    manifests has its state.json checked in full instead, and load_state catches the rest."""
    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"{ckpt / STATE_FILE}: missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{ckpt / STATE_FILE}: unreadable ({e})"
    if not isinstance(state, dict):
        return f"{ckpt / STATE_FILE}: not a JSON object"
    if check_state is not None and (problem := check_state(state)) is not None:
        return f"{ckpt / STATE_FILE}: {problem}"
    manifest = ckpt / MANIFEST_FILE
    if not manifest.exists():
        written_with_one = isinstance(state.get("format"), int) and state["format"] >= FORMAT
        return f"{manifest}: missing" if written_with_one else None
    try:
        files = json.loads(manifest.read_text())["files"]
        listed = [
            (ckpt / rel, int(want["bytes"]), str(want["sha256"])) for rel, want in files.items()
        ]
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as e:
        return f"{manifest}: unreadable ({type(e).__name__}: {e})"
    for path, size, sha256 in listed:
        try:
            found = path.stat().st_size
            if found != size:
                return f"{path}: {found} bytes, {size} when written (truncated or overwritten)"
            if file_digest(path, "sha256") != sha256:
                return f"{path}: its content changed since it was written (corrupt or overwritten)"
        except FileNotFoundError:
            return f"{path}: missing"
        except OSError as e:
            return f"{path}: unreadable ({e.strerror or e})"
    return None


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to damaged-step_N (never deleted: it may still be worth a look)."""
    ckpt = Path(ckpt)
    kept = ckpt.with_name(DAMAGED_PREFIX + ckpt.name)
    while kept.exists():
        kept = kept.with_name(kept.name + "x")
    os.replace(ckpt, kept)
    return kept


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def read_state_json(ckpt: Path) -> dict:
    try:
        return json.loads((Path(ckpt) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: not a complete mnist-dist checkpoint ({e})") from None


def load(accelerator: Accelerator, ckpt: Path) -> str | None:
    """Accelerate's load_state, whose torch.load calls use weights_only=True: a pickle that would run code
    (or anything but tensors and plain containers) is refused. A collective: returns why some rank could not
    load it (one line), or None when every rank did."""
    why = None
    try:
        accelerator.load_state(str(ckpt))
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        why = (
            f"{ckpt}: cannot load this checkpoint ({type(e).__name__}: {first}); only tensors and plain data "
            f"are accepted"
        )
    if _any_rank(accelerator, why is not None):
        return why or f"{ckpt}: another rank could not load its part"
    return None


def agreed_damage(accelerator: Accelerator, ckpt: Path, check_state=None) -> str | None:
    """damage() as every rank sees it (a collective): a folder damaged for one rank is damaged for all."""
    why = damage(ckpt, check_state)
    if _any_rank(accelerator, why is not None):
        return why or f"{ckpt}: damaged as another rank reads it"
    return None


def resume_candidates(run_dir: Path, resume: str) -> list[Path]:
    """The checkpoints to try for checkpoint.resume = auto (newest first) | never | PATH."""
    if resume == "never":
        return []
    if resume == "auto":
        return complete_checkpoints(run_dir)[::-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"checkpoint.resume={resume}: not a complete checkpoint folder (no {STATE_FILE})"
        )
    return [path]
