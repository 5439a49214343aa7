"""`mnist-dist eval MODEL_OR_RUN_DIR`: exact accuracy, loss, per-class accuracy and confusion matrix.

Runs on one process or many (`accelerate launch -m mnist_dist.cli eval RUN_DIR`): each rank takes a
contiguous share of the split and the counts are summed, so the result is the same for any world size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from mnist_dist import config, metrics
from mnist_dist.data import sources
from mnist_dist.errors import UserError
from mnist_dist.outputs import plots, tracking
from mnist_dist.run import artifact, rundir
from mnist_dist.train import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL_OR_RUN_DIR",
        help="a run folder, a model.safetensors file, a training checkpoint (RUN_DIR/checkpoints/step_N) or a "
        "Hugging Face Hub repo id (owner/name; HF_HUB_OFFLINE=1: from the Hub cache)",
    )
    rundir.add_best_argument(parser)
    parser.add_argument("--split", choices=["test", "val", "train"], default="test")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--png", metavar="PATH", help="also write the confusion matrix as a PNG")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",  # no default: argparse calls it required
        help="data.* and train.* overrides on top of the run's config, e.g. data.dir=/path; "
        "tracking.backend=wandb (and tracking.*) logs the evaluation as a W&B run of its own",
    )


def format_result(result: metrics.SplitMetrics, classes: list[str], split: str) -> str:
    lines = [
        f"{split}: accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  on {result.count} images",
        "per-class accuracy:",
    ]
    per_class = zip(classes, result.per_class_accuracy)
    lines += [f"  {i} {name:<12s} {acc:.4f}" for i, (name, acc) in enumerate(per_class)]
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("      " + " ".join(f"{i:>5d}" for i in range(len(classes))))
    lines += [
        f"  {i:>2d}  " + " ".join(f"{v:>5d}" for v in row) for i, row in enumerate(result.confusion)
    ]
    return "\n".join(lines)


def run(args) -> int:
    from mnist_dist.outputs import hub  # huggingface_hub: not for every command's start

    # a folder, checkpoint or Hub repo id
    model_path = rundir.pick_model(hub.resolve(args.model), args.best)
    model, model_info = artifact.load_model(model_path)
    cfg = rundir.load_run_config(model_path, args.overrides)
    if not any(o.startswith("train.mixed_precision=") for o in args.overrides):
        # Unless asked otherwise: the precision its run's evaluations ran in (fp32 for a model that does not say),
        # so that the result reproduces the number it is compared with (summary.json, the Hub card).
        precision = model_info.get("mixed_precision", "no")
        if precision == "fp16" and not torch.cuda.is_available():
            print(
                "note: the model's run evaluated in fp16 on a GPU; without one here, fp32 (numbers may differ)"
            )
            precision = "no"
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, mixed_precision=precision)
        )
    if cfg.data.name != model_info["dataset"]:
        print(f"note: model was trained on {model_info['dataset']}, evaluating on {cfg.data.name}")
    accelerator = runtime.make_accelerator(cfg)
    with accelerator.local_main_process_first():
        if args.split == "test":
            split, data_classes = sources.load_test(cfg.data)
        else:
            datasets = sources.load_datasets(cfg.data)
            split, data_classes = getattr(datasets, args.split), datasets.classes
    if split is None:
        raise config.ConfigError("--split val needs data.val_size > 0")
    mean, std, classes = model_info["mean"], model_info["std"], model_info["classes"]
    if len(data_classes) != len(classes):
        raise UserError(
            f"the model has {len(classes)} classes, {cfg.data.name} has {len(data_classes)}: evaluate it on "
            "data with its classes"
        )
    if data_classes != classes and cfg.data.name == model_info["dataset"]:
        print(f"note: the data's classes {data_classes} are not the model's {classes}")
    model = accelerator.prepare_model(model, evaluation_mode=True)
    result, _ = metrics.exact_metrics(
        accelerator, model, split, mean, std, cfg.train.eval_batch_size
    )
    if accelerator.is_main_process:
        world = accelerator.num_processes
        as_json = {"split": args.split, "world_size": world, **dataclasses.asdict(result)}
        print(json.dumps(as_json) if args.json else format_result(result, classes, args.split))
        if args.png:
            plots.confusion_matrix(result.confusion, classes, args.png)
        repo = args.model if hub.is_repo_id(args.model) else None
        tracking.log_evaluation(cfg, model_path, model_info, result, args.split, repo, world)
    runtime.end_distributed(accelerator)
    return 0
