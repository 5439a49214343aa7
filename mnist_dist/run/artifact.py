"""The model a run leaves for eval, predict, export and the Hub: RUN_DIR/model.safetensors (the weights) with
model.json beside it (how to rebuild and feed the model), and the same pair in RUN_DIR/best/.

Nothing here unpickles: weights are safetensors, metadata is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mnist_dist import models
from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.run import atomic
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
) -> Path:
    """Weights as safetensors plus a JSON that says how to rebuild and feed the model."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # run.dir/best/ the first time
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.replacing(run_dir / MODEL_FILE) as tmp:
        save_file(state, str(tmp))
    model_info = {
        "name": model_name,
        "kwargs": model_kwargs,
        "dataset": dataset,
        "mean": mean,
        "std": std,
        "classes": sources.CLASSES[dataset],
        "input": "uint8 28x28 grey, light ink on dark background, then (x/255 - mean)/std, shape [B, 1, 28, 28]",
    }
    atomic.write_text(run_dir / MODEL_META, json.dumps(model_info, indent=2))
    return run_dir / MODEL_FILE


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Load (model in eval mode on the CPU, model_info) from a run folder or a model.safetensors with model.json beside it."""
    path = Path(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    info_path = weights.with_name(MODEL_META)
    if not weights.is_file():
        raise ModelFileError(
            f"{weights}: no such model file (train first, or point at a run folder)"
        )
    if weights.suffix != ".safetensors":
        raise ModelFileError(
            f"{weights}: only .safetensors weights are loaded (pickles can run code)"
        )
    if not info_path.is_file():
        raise ModelFileError(
            f"{info_path}: missing; it says which architecture the weights belong to"
        )
    try:
        model_info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{info_path}: not readable JSON ({e})") from None
    missing = [
        k
        for k in ("name", "dataset", "mean", "std", "classes")
        if not isinstance(model_info, dict) or k not in model_info
    ]
    if missing:
        raise ModelFileError(
            f"{info_path}: missing {', '.join(missing)}; it must say how to rebuild and feed the model "
            f"(re-save it with mnist-dist, or restore the file)"
        )
    try:
        model = models.build(model_info["name"], **model_info.get("kwargs", {}))
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:
        raise ModelFileError(
            f"{weights}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return model.eval(), model_info
