"""A run's model in the Hugging Face Hub layout, uploaded with an allow-list, and loaded back by repo id.

The layout: model.safetensors, config.json (what PyTorchModelHubMixin would write: how to rebuild and feed the
model; the same as our model.json, which is kept beside it so that artifact.load_model reads the folder as
it is), README.md (a model card whose metadata huggingface_hub writes from ModelCardData, with a model-index
built from summary.json), the run's pictures and, when asked, model.onnx. Nothing else of a run folder is ever
uploaded: checkpoints/ holds pickled optimizer and RNG state, wandb/, previous-*/ and .lock are local.

No credential is read or written here: huggingface_hub finds HF_TOKEN or its login cache itself, and an error
message that carries the token is printed with it masked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.run import artifact, atomic, checkpoint, rundir

CARD, HUB_CONFIG, ONNX = rundir.HUB_CARD, rundir.HUB_CONFIG, rundir.HUB_ONNX
# Exact top-level names (fnmatch's * would also match inside checkpoints/ or previous-1/): upload_folder's
# allow_patterns. Everything a Hub model folder holds, nothing else.
HUB_FILES = (rundir.MODEL_FILE, rundir.MODEL_META, HUB_CONFIG, CARD, ONNX, *rundir.PICTURES)
LOAD_FILES = [rundir.MODEL_FILE, rundir.MODEL_META, HUB_CONFIG]  # what loading by repo id downloads
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(UserError):
    """A Hub repo that cannot be reached, found or written; printed as one line."""


def _masked(message: str) -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return message.replace(token, "***") if token else message


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return _masked(f"{type(e).__name__}: {text[0][:300] if text else ''}")


# ----------------------------------------------------------------------------- the model card


def card_data(model_info: dict, summary: dict | None, best: bool):
    """ModelCardData with the test accuracy of the exported model (the final one, or the best one when the run
    evaluated it on the test split) as its model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    summary = summary or {}
    dataset_id = sources.HF_IDS[model_info["dataset"]]
    numbers = (summary.get("best") or {}) if best else summary
    results = (
        [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=DATASET_NAMES[model_info["dataset"]],
                dataset_split="test",
                metric_type="accuracy",
                metric_name="Test accuracy",
                metric_value=numbers["test_accuracy"],
            )
        ]
        if numbers.get("test_accuracy") is not None
        else None
    )
    return ModelCardData(
        model_name=f"{model_info['name']}-{model_info['dataset']}",
        license="mit",
        library_name="mnist-dist",
        pipeline_tag="image-classification",
        datasets=[dataset_id],
        metrics=["accuracy"],
        tags=["pytorch", "safetensors", "mnist-dist", model_info["dataset"]],
        eval_results=results,
    )


def card_text(model_info: dict, run_dir: Path | None, best: bool) -> str:
    """README.md: the metadata block, then the model, its training set-up, the recipe and the pictures."""
    from huggingface_hub import ModelCard

    summary = rundir.read_json(run_dir / rundir.SUMMARY) if run_dir else None
    cd = card_data(model_info, summary, best)
    s = summary or {}
    numbers = (s.get("best") or {}) if best else s
    lines = [
        f"# {cd.model_name}",
        "",
        f"A `{model_info['name']}` classifier of {model_info['dataset']} (28x28 grey images, 10 classes), trained with "
        f"mnist-dist and saved as safetensors. This is the "
        f"{'best model by validation' if best else 'final model'} of its run.",
        "",
    ]
    if numbers.get("test_accuracy") is not None:
        lines += [
            f"Test accuracy: **{numbers['test_accuracy']:.4f}** on {s.get('test_count', '?')} test images "
            f"({sources.HF_IDS[model_info['dataset']]}, split test).",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        "from mnist_dist import checkpoint, hub",
        "model, model_info = artifact.load_model(hub.resolve('OWNER/NAME'))  # a repo id or a folder",
        "# input: float32 [B, 1, 28, 28] = (uint8 pixels/255 - model_info['mean'])/model_info['std']; output: logits [B, 10]",
        "```",
        "",
        "or `mnist-dist eval OWNER/NAME`, `mnist-dist predict OWNER/NAME image.png`.",
        "",
        f"Classes: {', '.join(model_info['classes'])}.",
        "",
    ]
    if summary:
        setup = [
            ("world size (processes)", s.get("world_size")),
            ("global batch size", s.get("global_batch_size")),
            ("per-device batch size", s.get("per_device_batch_size")),
            ("epochs", s.get("epochs")),
            ("optimizer steps", s.get("global_step")),
            (
                "training time",
                f"{s['train_seconds']:.1f} s" if s.get("train_seconds") is not None else None,
            ),
            (
                "hardware",
                f"{s.get('device')} on {len(set(s.get('hostnames') or [])) or '?'} node(s), "
                f"{s.get('torch_threads')} torch threads per process",
            ),
            ("mixed precision", s.get("mixed_precision")),
            ("parameters", s.get("parameters")),
            ("torch", s.get("torch_version")),
            ("git revision", s.get("git_revision")),
        ]
        if s.get("best"):
            b = s["best"]
            setup.append(
                (
                    "best model",
                    f"{b.get('metric')} {b.get('value')} at step {b.get('global_step')}"
                    + (
                        f", test accuracy {b['test_accuracy']:.4f}"
                        if b.get("test_accuracy") is not None
                        else ""
                    ),
                )
            )
        lines += ["## Training", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in setup if v is not None]
        lines.append("")
    recipe = _recipe(run_dir)
    if recipe:
        lines += [
            "## Recipe",
            "",
            "The run's merged config, as `mnist-dist train --config FILE` takes it (data.dir, "
            "run.dir and tracking left out: set data.dir to your copy of the data):",
            "",
            "```yaml",
            recipe.rstrip(),
            "```",
            "",
        ]
    pictures = [p for p in rundir.PICTURES if run_dir and (run_dir / p).is_file()]
    if pictures:
        lines += ["## Pictures", ""] + [f"![{p[:-4]}]({p})" for p in pictures] + [""]
    return ModelCard(f"---\n{cd.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def _recipe(run_dir: Path | None) -> str | None:
    """config.yaml without the machine's own places (data.dir, run.dir) and without tracking (names of people's
    W&B entities and projects are theirs to publish)."""
    # a damaged file: one line naming it
    cfg = rundir.read_config(run_dir / rundir.CONFIG) if run_dir else None
    if cfg is None:
        return None
    cfg.pop("tracking", None)
    cfg.pop("run", None)
    for key in ("dir", "hf_path"):
        (cfg.get("data") or {}).pop(key, None)
    return yaml.safe_dump(cfg, sort_keys=False)


# ----------------------------------------------------------------------------- export, push, load


def export(source: Path, run_dir: Path | None, out: Path, best: bool) -> list[Path]:
    """Write the Hub layout of the model folder `source` (a run folder or its best/) into `out` (which may be
    `source` itself); returns the files written."""
    # refuses a damaged model before anything is written
    _, model_info = artifact.load_model(source)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (rundir.MODEL_FILE, rundir.MODEL_META):
        if (out / name).resolve() != (source / name).resolve():
            shutil.copyfile(source / name, out / name)
        written.append(out / name)
    atomic.write_text(out / HUB_CONFIG, json.dumps(model_info, indent=2))
    for name in rundir.PICTURES:
        if run_dir and (run_dir / name).is_file():
            if (out / name).resolve() != (run_dir / name).resolve():
                shutil.copyfile(run_dir / name, out / name)
            written.append(out / name)
    atomic.write_text(out / CARD, card_text(model_info, run_dir, best))
    return [*written, out / HUB_CONFIG, out / CARD]


def is_repo_id(text: str) -> bool:
    """owner/name that is not a path on this machine."""
    return bool(REPO_ID.match(str(text))) and not Path(text).exists()


def resolve(model: str | Path) -> Path:
    """What eval, predict and export load, as a folder that artifact.load_model and rundir.load_run_config
    read: a run folder, best/ or model file as given; a training checkpoint (checkpoints/step_N) or a Hub repo
    id staged into a temporary folder with the model.json and config.yaml they lack (a Hub repo is downloaded
    once into the Hub cache; with HF_HUB_OFFLINE=1 only the cache is read)."""
    path = Path(model)
    if (
        path.is_dir()
        and (path / checkpoint.STATE_FILE).is_file()
        and not (path / rundir.MODEL_META).is_file()
    ):
        return _stage_checkpoint(path)
    if not is_repo_id(str(model)):
        return path
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(str(model), allow_patterns=LOAD_FILES))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " and HF_HUB_OFFLINE is set: only the Hub cache is read" if offline else ""
        raise HubError(
            f"{model}: no such folder here, and not loadable as a Hub model repo{hint} ({_one_line(e)})"
        ) from None
    if not (snapshot / rundir.MODEL_FILE).is_file():
        raise HubError(
            f"{model}: the Hub repo has no {rundir.MODEL_FILE} (not an mnist-dist model)"
        )
    info_file = snapshot / (
        rundir.MODEL_META if (snapshot / rundir.MODEL_META).is_file() else HUB_CONFIG
    )
    model_info = rundir.read_json(info_file) or {}
    folder = _staging()
    os.symlink(snapshot / rundir.MODEL_FILE, folder / rundir.MODEL_FILE)
    shutil.copyfile(info_file, folder / rundir.MODEL_META)
    # eval's data defaults: the dataset the model was trained on (overrides still win)
    if model_info.get("dataset"):
        atomic.write_text(
            folder / rundir.CONFIG, yaml.safe_dump({"data": {"name": model_info["dataset"]}})
        )
    return folder


def _staging() -> Path:
    """A temporary folder that lives as long as this process."""
    import atexit
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mnist-dist-model-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _stage_checkpoint(ckpt: Path) -> Path:
    """A training checkpoint as a model folder: its weights (Accelerate's model.safetensors; wrapper prefixes
    of DDP or torch.compile dropped) with the model.json and config.yaml that its state.json's config implies."""
    import torch
    from safetensors.torch import load_file, save_file

    state = rundir.read_json(ckpt / checkpoint.STATE_FILE) or {}
    cfg = state.get("config") or {}
    weights = ckpt / rundir.MODEL_FILE
    if not weights.is_file() or not cfg.get("model") or not cfg.get("data"):
        raise HubError(
            f"{ckpt}: not a complete training checkpoint (no {rundir.MODEL_FILE}, or a state.json "
            f"without the run's config)"
        )
    dataset = cfg["data"]["name"]
    mean, std = sources.STATS[dataset]
    folder = _staging()
    tensors = {
        k.removeprefix("module.").removeprefix("_orig_mod."): v
        for k, v in load_file(str(weights)).items()
    }
    save_file(
        {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()},
        str(folder / rundir.MODEL_FILE),
    )
    model_info = {
        "name": cfg["model"]["name"],
        "kwargs": cfg["model"].get("kwargs") or {},
        "dataset": dataset,
        "mean": mean,
        "std": std,
        "classes": sources.CLASSES[dataset],
        "checkpoint": {"global_step": state.get("global_step"), "epoch": state.get("epoch")},
    }
    atomic.write_text(folder / rundir.MODEL_META, json.dumps(model_info, indent=2))
    atomic.write_text(
        folder / rundir.CONFIG, yaml.safe_dump({k: cfg[k] for k in ("data", "train") if k in cfg})
    )
    return folder


def push(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create the repo if need be and upload the folder's Hub files (HUB_FILES only); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=list(HUB_FILES),
            commit_message=message,
        )
    except Exception as e:
        raise HubError(f"push to {repo_id} failed ({_one_line(e)})") from None
    return str(getattr(info, "commit_url", info))
