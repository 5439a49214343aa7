"""`mnist-dist eval MODEL_OR_RUN_DIR`: exact accuracy, loss, per-class accuracy and confusion matrix.

Runs on one process or many (`accelerate launch -m mnist_dist.cli eval RUN_DIR`): each rank takes a
contiguous share of the split and the counts are summed, so the result is the same for any world size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from mnist_dist import checkpoint, config, data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="a run folder or a model.safetensors file")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--png", metavar="PATH", help="also write the confusion matrix as a PNG")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data.* and train.* overrides on top of the run's config, e.g. data.dir=/path")


def load_run_config(model_path: Path, overrides: list[str]) -> config.Config:
    """The run's own config (so the data are what it was trained on), with the user's overrides on top."""
    run_dir = model_path if model_path.is_dir() else model_path.parent
    saved = run_dir / "config.yaml"
    base = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    base = {k: v for k, v in base.items() if k in ("data", "train")}
    for text in overrides:
        base = config.merge(base, config.parse_override(text))
    base.setdefault("run", {})["dir"] = str(run_dir)
    base.setdefault("train", {})["progress"] = False
    return config.from_dict(config.Config, base)


def format_result(result: dict, classes: list[str], split: str) -> str:
    lines = [f"{split}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  on {result['count']} images",
             "per-class accuracy:"]
    lines += [f"  {i} {name:<12s} {acc:.4f}" for i, (name, acc) in enumerate(zip(classes, result["per_class_accuracy"]))]
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("      " + " ".join(f"{i:>5d}" for i in range(10)))
    lines += [f"  {i:>2d}  " + " ".join(f"{v:>5d}" for v in row) for i, row in enumerate(result["confusion"])]
    return "\n".join(lines)


def run(args) -> int:
    from mnist_dist import train as train_mod
    model_path = Path(args.model)
    model, meta = checkpoint.load_model(model_path)
    cfg = load_run_config(model_path, args.overrides)
    if cfg.data.name != meta["dataset"]:
        print(f"note: model was trained on {meta['dataset']}, evaluating on {cfg.data.name}")
    accelerator = train_mod.make_accelerator(cfg)
    with accelerator.local_main_process_first():
        split = data.load_test(cfg.data) if args.split == "test" else getattr(data.load_datasets(cfg.data), args.split)
    if split is None:
        raise config.ConfigError("--split val needs data.val_size > 0")
    model = accelerator.prepare_model(model, evaluation_mode=True)
    result = train_mod.evaluate(accelerator, model, split, meta["mean"], meta["std"], cfg.train.eval_batch_size)
    if accelerator.is_main_process:
        result = {"split": args.split, "world_size": accelerator.num_processes, **result}
        print(json.dumps(result) if args.json else format_result(result, meta["classes"], args.split))
        if args.png:
            from mnist_dist import plots
            plots.confusion_matrix(result["confusion"], meta["classes"], args.png)
    train_mod.end_distributed(accelerator)
    return 0
