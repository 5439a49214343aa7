"""A run's model on the Hugging Face Hub: the folder layout (export), its upload with an allow-list (push), and
loading it back by repo id, through huggingface_hub's PyTorchModelHubMixin (HubModel.from_pretrained) or as a
folder that eval, predict and demo read (resolve).

The layout: model.safetensors and config.json (what PyTorchModelHubMixin reads: how to rebuild and feed the
model; model.json, the same, beside it), model.pt2 (torch.export) and model.onnx (torch's dynamo exporter, where
onnxscript is installed), for use without mnist-dist, README.md (a model card whose metadata huggingface_hub
writes from ModelCardData, with a model-index from summary.json, and snippets that run as written), and the run's
pictures. Nothing else of a run folder is ever uploaded: checkpoints/ holds pickled optimizer and RNG state,
wandb/, previous-*/ and .lock are local.

No credential is read or written here: huggingface_hub finds HF_TOKEN or its login cache itself, and an error
message that carries the token is printed with it masked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from mnist_dist import models
from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.outputs import formats
from mnist_dist.run import artifact, atomic, rundir

CARD, HUB_CONFIG, ONNX, PT2 = rundir.HUB_CARD, rundir.HUB_CONFIG, rundir.HUB_ONNX, "model.pt2"
# Exact top-level names (fnmatch's * would also match inside checkpoints/ or previous-1/): upload_folder's
# allow_patterns. Everything a Hub model folder holds, nothing else.
HUB_FILES = (rundir.MODEL_FILE, rundir.MODEL_META, HUB_CONFIG, CARD, PT2, ONNX, *rundir.PICTURES)
LOAD_FILES = [rundir.MODEL_FILE, rundir.MODEL_META, HUB_CONFIG]  # what loading by repo id downloads
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PLACEHOLDER = "OWNER/NAME"  # a card's repo id before it has one (export without --repo-id)


class HubError(UserError):
    """A Hub repo that cannot be reached, found or written; printed as one line."""


class HubModel(
    nn.Sequential,
    PyTorchModelHubMixin,
    library_name="mnist-dist",
    pipeline_tag="image-classification",
):
    """An mnist-dist model as huggingface_hub's mixin loads it: HubModel.from_pretrained("owner/name") reads the
    repo's config.json (name, kwargs, mean, std, classes, ...) and model.safetensors. `info` is that config."""

    def __init__(self, name: str, kwargs: dict | None = None, **info):
        classes = len(info.get("classes") or range(10))
        super().__init__(*models.build(name, classes, **(kwargs or {})).children())
        self.info = {"name": name, "kwargs": kwargs or {}, **info}


def _masked(message: str) -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return message.replace(token, "***") if token else message


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return _masked(f"{type(e).__name__}: {text[0][:300] if text else ''}")


# ----------------------------------------------------------------------------- the model card


def card_text(
    model_info: dict, run_dir: Path | None, best: bool, repo_id: str, no_onnx_why: str | None = None
) -> str:
    """README.md: card_template.md, with ModelCardData's metadata (a model-index with the test accuracy of the
    exported model: the final one, or the best one when the run evaluated it on the test split)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    s = (rundir.read_json(run_dir / rundir.SUMMARY) if run_dir else None) or {}
    numbers = (s.get("best") or {}) if best else s
    dataset, accuracy = model_info["dataset"], numbers.get("test_accuracy")
    dataset_id, dataset_name = dataset_names(dataset)
    slug = dataset.removeprefix(sources.HUB_PREFIX).rsplit("/", 1)[-1]
    model_name = f"{model_info['name']}-{slug}"
    result = EvalResult(
        task_type="image-classification",
        dataset_type=dataset_id,
        dataset_name=dataset_name,
        dataset_split="test",
        metric_type="accuracy",
        metric_name="Test accuracy",
        metric_value=accuracy,
    )
    card_data = ModelCardData(
        model_name=model_name,
        license="mit",
        library_name="mnist-dist",
        pipeline_tag="image-classification",
        datasets=[dataset_id] if dataset != sources.IMAGEFOLDER else None,
        metrics=["accuracy"],
        tags=["pytorch", "safetensors", "torch-export", "mnist-dist", slug],
        eval_results=[result] if accuracy is not None else None,
    )
    template = Path(__file__).with_name("card_template.md")
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        **model_info,
        # (card_data's model_name goes into its model-index: the heading needs its own)
        model_name=model_name,
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        best=best,
        no_onnx_why=no_onnx_why,
        repo_id=repo_id,
        test_accuracy=accuracy,
        test_count=s.get("test_count", "?"),
        setup=training_setup(s),
        recipe=_recipe(run_dir),
        pictures=[p for p in rundir.PICTURES if run_dir and (run_dir / p).is_file()],
    ).content


def dataset_names(dataset: str) -> tuple[str, str]:
    """(Hub id, name to show) of a model.json's dataset: mnist, fashion_mnist, imagefolder or hf:OWNER/NAME."""
    if dataset.startswith(sources.HUB_PREFIX):
        return (hub_id := dataset.removeprefix(sources.HUB_PREFIX)), hub_id
    if dataset == sources.IMAGEFOLDER:
        return dataset, "a folder of images"
    return sources.HF_IDS.get(dataset, dataset), DATASET_NAMES.get(dataset, dataset)


def training_setup(s: dict) -> list[tuple[str, object]]:
    """The card's training table, from summary.json (empty without one)."""
    if not s:
        return []
    seconds, best = s.get("train_seconds"), s.get("best") or {}
    nodes = len(set(s.get("hostnames") or [])) or "?"
    best_text = (
        f"{best.get('metric')} {best.get('value')} at step {best.get('global_step')}"
        if best
        else None
    )
    if best.get("test_accuracy") is not None:
        best_text = f"{best_text}, test accuracy {best['test_accuracy']:.4f}"
    rows = {
        "world size (processes)": s.get("world_size"),
        "global batch size": s.get("global_batch_size"),
        "per-device batch size": s.get("per_device_batch_size"),
        "epochs": s.get("epochs"),
        "optimizer steps": s.get("global_step"),
        "training time": f"{seconds:.1f} s" if seconds is not None else None,
        "hardware": f"{s.get('device')} on {nodes} node(s), {s.get('torch_threads')} torch threads per process",
        "mixed precision": s.get("mixed_precision"),
        "parameters": s.get("parameters"),
        "torch": s.get("torch_version"),
        "git revision": s.get("git_revision"),
        "best model": best_text,
    }
    return [(k, v) for k, v in rows.items() if v is not None]


def _recipe(run_dir: Path | None) -> str | None:
    """config.yaml without the machine's own places (data.dir, run.dir) and without tracking (names of people's
    W&B entities and projects are theirs to publish). A damaged file: one line naming it."""
    cfg = rundir.read_config(run_dir / rundir.CONFIG) if run_dir else None
    if cfg is None:
        return None
    cfg.pop("tracking", None)
    cfg.pop("run", None)
    for key in ("dir", "hf_path"):
        (cfg.get("data") or {}).pop(key, None)
    return yaml.safe_dump(cfg, sort_keys=False).rstrip()


# ----------------------------------------------------------------------------- export, push, load


def export(
    source: Path, run_dir: Path | None, out: Path, best: bool, repo_id: str | None = None
) -> list[Path]:
    """Write the Hub layout of the model folder `source` (a run folder or its best/) into `out` (which may be
    `source` itself); returns the files written. Without onnxscript there is no model.onnx (one line says so)."""
    # Refuses a damaged model before anything is written.
    model, model_info = artifact.load_model(source)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (rundir.MODEL_FILE, rundir.MODEL_META):
        if (out / name).resolve() != (source / name).resolve():
            shutil.copyfile(source / name, out / name)
        written.append(out / name)
    atomic.write_text(out / HUB_CONFIG, json.dumps(model_info, indent=2))
    formats.write_pt2(model, model_info, out / PT2)
    written += [out / HUB_CONFIG, out / PT2]
    no_onnx_why = None
    try:
        formats.write_onnx(model, model_info, out / ONNX)
        written.append(out / ONNX)
    except (
        formats.ExportError
    ) as e:  # onnxscript is an optional extra; an exporter failure is said as it is
        no_onnx_why = str(e)
        (out / ONNX).unlink(missing_ok=True)  # an earlier export's file would not be this model
        print(f"mnist-dist: no {ONNX} in {out}: {e}", file=sys.stderr)
    for name in rundir.PICTURES:
        if run_dir and (run_dir / name).is_file():
            if (out / name).resolve() != (run_dir / name).resolve():
                shutil.copyfile(run_dir / name, out / name)
            written.append(out / name)
    card = card_text(model_info, run_dir, best, repo_id or PLACEHOLDER, no_onnx_why)
    atomic.write_text(out / CARD, card)
    return [*written, out / CARD]


def is_repo_id(text: str) -> bool:
    """owner/name that is not a path on this machine."""
    return bool(REPO_ID.match(str(text))) and not Path(text).exists()


def resolve(model: str | Path) -> Path:
    """What eval, predict and demo load: a path as given, or a Hub repo id's files downloaded once into
    the Hub cache (with HF_HUB_OFFLINE=1 only the cache is read), as a folder that artifact.load_model reads."""
    if not is_repo_id(str(model)):
        return Path(model)
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
    return snapshot


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
