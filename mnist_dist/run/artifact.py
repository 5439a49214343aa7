"""The model a run leaves for eval, predict, export and the Hub: RUN_DIR/model.safetensors (the weights) with
model.json beside it (how to rebuild and feed the model), and the same pair in RUN_DIR/best/.

Nothing here unpickles: weights are safetensors, metadata is JSON.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mnist_dist import models
from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.run import atomic, checkpoint, rundir
from mnist_dist.run.rundir import MODEL_FILE, MODEL_META


class ModelFileError(UserError):
    """A model path that is missing, unreadable or not ours; printed as one line."""


def save_model(
    run_dir: str | Path,
    model: torch.nn.Module,
    model_name: str,
    model_kwargs: dict,
    dataset: str,
    mean: float,
    std: float,
    classes: list[str] | None = None,
    precision: str = "no",
) -> Path:
    """Weights as safetensors plus a JSON that says how to rebuild and feed the model. classes: the model's output
    names, index by index (by default the named dataset's)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # run.dir/best/ the first time
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.replacing(run_dir / MODEL_FILE) as tmp:
        try:
            save_file(state, str(tmp))
        except (
            SafetensorError
        ) as e:  # the OSError of safetensors' Rust core (a full disk), as Python's
            full = "No space left" in str(e) or "os error 28" in str(e)
            raise OSError(
                errno.ENOSPC if full else errno.EIO, str(e), str(run_dir / MODEL_FILE)
            ) from None
    model_info = {
        "name": model_name,
        "kwargs": model_kwargs,
        "dataset": dataset,
        "mean": mean,
        "std": std,
        "classes": classes if classes is not None else sources.CLASSES[dataset],
        # what its run's evaluations ran in (their numbers are reproduced in it): no (fp32), bf16 or fp16
        "mixed_precision": precision,
        "input": "uint8 28x28 grey, light ink on dark background, then (x/255 - mean)/std, shape [B, 1, 28, 28]",
    }
    atomic.write_text(run_dir / MODEL_META, json.dumps(model_info, indent=2))
    return run_dir / MODEL_FILE


def model_info_of(weights: Path) -> dict:
    """How to rebuild and feed the weights: model.json beside them (a run, best/, a Hub folder), config.json (a Hub
    repo pushed without model.json) or, for a training checkpoint, its state.json's config."""
    folder = weights.parent
    state = folder / checkpoint.STATE_FILE
    if not (folder / MODEL_META).is_file() and state.is_file():  # checkpoints/step_N
        state_json = rundir.read_json(state) or {}
        cfg = state_json.get("config") or {}
        if not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("data"), dict):
            raise ModelFileError(f"{state}: not a training checkpoint's (no model and data config)")
        # the data fingerprint (sources.fingerprint) names the classes and the statistics
        dataset, data = cfg["data"].get("name"), state_json.get("data") or {}
        mean, std = data.get("pixel_stats") or sources.STATS.get(dataset, (0, 1))
        classes = data.get("classes") or sources.CLASSES.get(dataset, [])
        model = cfg["model"]
        info = {"name": model.get("name"), "kwargs": model.get("kwargs") or {}, "dataset": dataset}
        # As the run's config asked (auto: chosen for this machine again, as the run chose it for its own).
        precision = (cfg.get("train") or {}).get("mixed_precision", "no")
        return info | {"mean": mean, "std": std, "classes": classes, "mixed_precision": precision}
    info_path = next(
        (p for p in (folder / MODEL_META, folder / "config.json") if p.is_file()),
        folder / MODEL_META,
    )
    if not info_path.is_file():
        raise ModelFileError(
            f"{info_path}: missing; it says which architecture the weights belong to"
        )
    try:
        model_info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{info_path}: not readable JSON ({e})") from None
    keys = ("name", "dataset", "mean", "std", "classes")
    if missing := [k for k in keys if not isinstance(model_info, dict) or k not in model_info]:
        raise ModelFileError(
            f"{info_path}: missing {', '.join(missing)}; it must say how to rebuild and feed the model "
            f"(re-save it with mnist-dist, or restore the file)"
        )
    return model_info


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on the CPU, model_info) from a model folder (a run, its best/, a Hub folder or
    snapshot, a training checkpoint) or a model.safetensors file with its model.json beside it."""
    path = Path(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise ModelFileError(
            f"{weights}: no such model file (train first, or point at a run folder)"
        )
    if weights.suffix != ".safetensors":
        raise ModelFileError(
            f"{weights}: only .safetensors weights are loaded (pickles can run code)"
        )
    model_info = model_info_of(weights)
    try:
        classes = len(model_info["classes"])
        model = models.build(model_info["name"], classes, **model_info.get("kwargs", {}))
        # A checkpoint's weights were saved from the prepared model: DDP's and torch.compile's prefixes go.
        state = {
            k.removeprefix("module.").removeprefix("_orig_mod."): v
            for k, v in load_file(weights).items()
        }
        model.load_state_dict(state)
    except Exception as e:
        raise ModelFileError(
            f"{weights}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return model.eval(), model_info
