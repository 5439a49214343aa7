"""The loop's state and the resume contract: a run continues from its newest whole checkpoint exactly where it
stopped (on another world size too, when the global batch is the same), and refuses in one line a checkpoint
trained with another config or on other data. Randomness follows from (seed, step, rank) alone (loop.train_step),
so nothing but this state and the prepared objects has to be restored.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_dist import config
from mnist_dist.config.schema import INT64_LIMIT
from mnist_dist.errors import UserError
from mnist_dist.run import checkpoint

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclasses.dataclass
class TrainState:
    """The loop's progress: what a checkpoint's state.json holds besides the config and the world. Counts are
    global unless marked per-rank; the window_* sums are the training loss since the last log, already reduced
    over ranks (a resumed run logs the same numbers as an uninterrupted one)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0  # optimizer steps done in the whole run
    samples_seen: int = 0  # this rank's training samples over the whole run (state.json: rank 0's)
    train_seconds: float = 0.0
    last_train_loss: float | None = None
    last_train_accuracy: float | None = None
    window_loss_sum: float = 0.0
    window_correct: float = 0.0
    window_count: float = 0.0
    best_value: float | None = None  # of checkpoint.best_metric, at the best evaluation so far
    best_epoch: float | None = None
    best_step: int | None = None
    # Evaluations in a row without an improvement (early stopping's patience)
    evals_since_best: int = 0
    stopped_early: bool = False

    @classmethod
    def from_state_json(cls, state_json: dict, rank: int, world_size: int) -> TrainState:
        """The state a checkpoint's state.json describes, as seen by `rank`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in state_json.items() if k in fields})
        per_rank = state_json.get("samples_seen_per_rank")  # state.json's samples_seen is rank 0's
        if per_rank is not None and len(per_rank) == world_size:
            state.samples_seen = per_rank[rank]
        elif per_rank is not None:
            # another world size (elastic resume): rank 0 carries the count, the sum is exact
            state.samples_seen = sum(per_rank) if rank == 0 else 0
        return state


def state_problem(state_json: dict, steps_per_epoch: int | None = None) -> str | None:
    """What is wrong with a checkpoint's state.json, or None: every TrainState field of its type and in range,
    the world size and each rank's count, and the step counts consistent with each other. With steps_per_epoch
    (once the config and the data are known to be the checkpoint's): consistent with this run's epoch length too."""
    for f in dataclasses.fields(TrainState):
        value, kind = state_json.get(f.name, f.default), FIELD_KINDS[f.type]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            return f"{f.name} is {value!r}, not {f.type}"
        if (
            isinstance(value, (int, float))
            and f.name != "best_value"
            and not 0 <= value < INT64_LIMIT
        ):
            return f"{f.name} is {value}, outside [0, 2^63)"
    world, per_rank = state_json.get("world_size"), state_json.get("samples_seen_per_rank")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        return f"world_size is {world!r}, not a number of processes"
    counts = per_rank if isinstance(per_rank, list) else []
    if per_rank is not None and not (
        len(counts) == world and all(type(n) is int and 0 <= n < INT64_LIMIT for n in counts)  # noqa: E721 (bool is not a count)
    ):
        return f"samples_seen_per_rank is {str(per_rank)[:60]}, not a count for each of {world} processes"
    epoch, step, total = (state_json.get(k, 0) for k in ("epoch", "step_in_epoch", "global_step"))
    # global_step = epoch x steps per epoch + step_in_epoch: the epoch length they imply, or this run's.
    per_epoch = steps_per_epoch or ((total - step) // epoch if epoch else step)
    if total < step or step > per_epoch or total != epoch * per_epoch + step:
        return (
            f"global_step {total} is not epoch {epoch} x {per_epoch} steps + step_in_epoch {step}: the counts "
            f"do not fit each other" + (" or this run's steps per epoch" if steps_per_epoch else "")
        )
    return None


# The types a state.json field may hold (JSON has no float that is an int: 2.0 is written as 2.0).
FIELD_KINDS: dict[object, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "float | None": (int, float, type(None)),
}
FIELD_KINDS |= {"int | None": (int, type(None)), "bool": bool}


def resume(
    cfg: config.Config,
    accelerator: Accelerator,
    fingerprint: dict,
    source: str,
    steps_per_epoch: int,
) -> tuple[TrainState, Path | None, str | None]:
    """Collectives: (state, the checkpoint it came from, its tracker run id); the prepared objects are loaded in
    place. A fresh run gets (TrainState(), None, None). With resume=auto a damaged newest checkpoint (a file
    missing, truncated, rewritten, or refused by load_state) is set aside in one line and the next older one is
    tried. A checkpoint trained with another config or on other data is refused before anything is loaded."""
    run_dir = Path(cfg.run.dir)
    set_aside = []
    for ckpt in checkpoint.resume_candidates(run_dir, cfg.checkpoint.resume):
        # a collective: every rank takes the same branch
        why = checkpoint.agreed_damage(accelerator, ckpt, state_problem)
        if why is None:
            state_json = checkpoint.read_state_json(ckpt)
            # Another config or other data is the user's to fix (one line), not damage: checked first. Then the
            # counts against this run's epoch length (the same on every rank: the same file, the same config).
            check_resumable(cfg, accelerator, ckpt, state_json, fingerprint, source)
            why = state_problem(state_json, steps_per_epoch)
        if why is None:
            # Model, optimizer and scheduler load whatever the world size (DDP keeps them equal on every rank); a
            # rank the checkpoint has no RNG file for is fine: every step reseeds from (seed, step, rank).
            why = checkpoint.load(accelerator, ckpt)  # a collective too
            if why is None:
                rank, world = accelerator.process_index, accelerator.num_processes
                state = TrainState.from_state_json(state_json, rank, world)
                return state, ckpt, state_json.get("tracker_run_id")
        if cfg.checkpoint.resume != "auto":  # a folder the user named is not renamed
            raise checkpoint.CheckpointError(
                f"checkpoint.resume={ckpt} is damaged: {why}. Point checkpoint.resume "
                f"at another checkpoint, or use checkpoint.resume=auto or never"
            )
        if accelerator.is_main_process:
            kept = checkpoint.set_aside(ckpt)
            print(
                f"mnist-dist: checkpoint {ckpt.name} is damaged ({why}); set aside as {kept.name}, "
                f"trying the previous one",
                file=sys.stderr,
                flush=True,
            )
        accelerator.wait_for_everyone()
        set_aside.append(ckpt.name)
    if set_aside:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {run_dir / checkpoint.CKPT_DIR} is whole: {', '.join(set_aside)} set aside "
            f"as {checkpoint.DAMAGED_PREFIX}step_*. Run the same command again to start over (the earlier "
            f"run's files are then moved to {run_dir}/previous-*)"
        )
    return TrainState(), None, None


def check_resumable(
    cfg: config.Config,
    accelerator: Accelerator,
    ckpt: Path,
    state_json: dict,
    fingerprint: dict,
    source: str,
) -> None:
    """Refuse (one line, the same on every rank) a checkpoint this run cannot continue: another global batch,
    another trajectory config, or other data (the data may move; the arrays may not change)."""
    saved_train = state_json.get("config", {}).get("train", {})
    saved_world, world = state_json["world_size"], accelerator.num_processes
    saved_global = config.global_batch(
        saved_train.get("per_device_batch_size", 0),
        saved_train.get("grad_accum_steps", 1),
        saved_world,
    )
    # Same world, per_device_batch_size given: resume_conflicts lists a change. Otherwise the batch is derived here.
    derived = saved_world != world or cfg.train.global_batch_size
    if derived and saved_global != cfg.train.global_batch(world):
        raise UserError(
            f"{ckpt} was written by {saved_world} processes with a global batch of {saved_global}; with "
            f"{world} this run's is {cfg.train.global_batch(world)}: set train.global_batch_size="
            f"{saved_global} to resume on this number of processes, or start over with "
            f"checkpoint.resume=never"
        )
    if conflicts := config.resume_conflicts(state_json.get("config", {}), cfg):
        hint = (
            f"; train.epochs can grow only with train.scheduler="
            f"{'/'.join(config.LENGTH_FREE_SCHEDULERS)}, since the {cfg.train.scheduler} schedule is "
            f"shaped by the run's length"
            if any(c.startswith("train.epochs ") for c in conflicts)
            else ""
        )
        raise UserError(
            f"{ckpt} was trained with another config: {', '.join(conflicts)}{hint}. Resume "
            f"with the old values, or start over with checkpoint.resume=never or a new run.dir"
        )
    # checkpoints from before fingerprints have none, from before class lists no classes: not checked
    saved = state_json.get("data") or {}
    if "classes" in saved and saved["classes"] != fingerprint.get("classes"):
        raise UserError(
            f"{ckpt} was trained on other classes: {_listed(saved['classes'])}, {source} has "
            f"{_listed(fingerprint.get('classes') or [])}. Resume with the data it was trained on, or start over "
            "with checkpoint.resume=never or a new run.dir"
        )
    for name in ("train", "val", "test") if saved else ():
        old, new = saved.get(name) or {}, fingerprint.get(name) or {}
        if old != new:
            raise UserError(
                f"{ckpt} was trained on other data: its {name} split had {old.get('size', 0)} images "
                f"(sha256 {old.get('sha256', '-')[:12]}), {source} gives {new.get('size', 0)} "
                f"(sha256 {new.get('sha256', '-')[:12]}). Resume with the data it was trained on "
                f"(data.dir may move), or start over with checkpoint.resume=never or a new run.dir"
            )


def _listed(classes: list) -> str:
    """A class list for one line: `3 classes (cat, dog, fox)`, the first 8 named."""
    names = ", ".join(map(str, classes[:8])) + (", ..." if len(classes) > 8 else "")
    return f"{len(classes)} classes ({names})"
