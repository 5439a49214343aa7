"""`mnist-dist predict`: classify real image files (PNG, JPEG, BMP, GIF) with a trained model.

Lists the inputs (files, or the images in folders), turns each into the model's 28x28 input (images.preprocess,
the layout of the dataset the model was trained on), runs the model in batches and prints the top classes, as
text or JSON Lines; --show draws what the model saw beside its answer. A file that cannot be used is one line
on stderr and the others still run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from mnist_dist import metrics
from mnist_dist.data import images
from mnist_dist.errors import UserError
from mnist_dist.run import artifact, rundir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}  # what a folder is scanned for


# ----------------------------------------------------------------------------- the command


def add_arguments(p):
    p.add_argument(
        "model",
        help="run folder, a model.safetensors with model.json beside it, a training checkpoint "
        "(RUN_DIR/checkpoints/step_N) or a Hugging Face Hub repo id (owner/name)",
    )
    rundir.add_best_argument(p)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files, or folders (their "
        + "/".join(sorted(IMAGE_SUFFIXES))
        + " files, not recursive)",
    )
    p.add_argument(
        "--top-k", type=int, default=3, help="how many classes to print per image (default 3)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per image (JSON Lines)"
    )
    p.add_argument(
        "--show",
        metavar="DIR",
        help="write DIR/<file>.png: the 28x28 input the model saw and its prediction",
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass (default 256)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=images.MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {images.MAX_PIXELS:,})",
    )


def list_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files to classify, [(input, why it is skipped)]). Files named explicitly are tried whatever their suffix. A
    folder's images are its own files: a link that leads out of the folders named, or nowhere, is skipped and
    said (a folder of pictures must not open /etc/passwd)."""
    files, skipped = [], []
    folders = [Path(name).resolve() for name in inputs if Path(name).is_dir()]
    for name in inputs:
        path = Path(name)
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in found:
            try:
                target = p.resolve()
            except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a link loop
                skipped.append((str(p), "skipped: a link loop"))
                continue
            if not p.exists():
                skipped.append((str(p), f"skipped: a broken link (to {target})"))
            elif not any(target.is_relative_to(folder) for folder in folders):
                skipped.append((str(p), f"skipped: a link out of the folders named (to {target})"))
            elif p.is_file():
                files.append(p)
        if not found:
            skipped.append((name, "folder has no " + "/".join(sorted(IMAGE_SUFFIXES)) + " files"))
    return files, skipped


def run(args) -> int:
    from mnist_dist.outputs import hub  # huggingface_hub: not for every command's start

    if args.top_k < 1 or args.batch_size < 1 or args.max_pixels < 1:
        raise UserError("--top-k, --batch-size and --max-pixels must be at least 1")
    model, model_info = artifact.load_model(rundir.pick_model(hub.resolve(args.model), args.best))
    layout = images.layout_for(model_info.get("dataset", "mnist"))
    classes = model_info["classes"]
    top_k = min(args.top_k, len(classes))
    files, errors = list_images(args.inputs)
    for name, message in errors:
        print(f"{name}: {message}", file=sys.stderr)
    show_dir = Path(args.show) if args.show else None
    if show_dir:
        if show_dir.exists() and not show_dir.is_dir():
            raise UserError(
                f"--show {show_dir}: a file is there; --show names a folder for the pictures"
            )
        show_dir.mkdir(parents=True, exist_ok=True)
    failed, shown = len(errors), set[str]()

    for start in range(0, len(files), args.batch_size):
        good, inputs = [], []
        for path in files[start : start + args.batch_size]:
            try:
                inputs.append(images.preprocess(path, layout, args.max_pixels))
                good.append(path)
            except images.ImageError as e:
                print(f"{path}: {e}", file=sys.stderr)
                failed += 1
        if not good:
            continue
        batch = torch.from_numpy(np.stack(inputs))
        probs = metrics.predict(
            model, batch, model_info["mean"], model_info["std"], batch_size=len(batch)
        )
        top_p, top_i = probs.topk(top_k, dim=1)
        for n, path in enumerate(good):
            ranked = [(classes[i], p) for i, p in zip(top_i[n].tolist(), top_p[n].tolist())]
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": str(path),
                            "class": ranked[0][0],
                            "index": int(top_i[n, 0]),
                            "prob": round(ranked[0][1], 6),
                            "top_k": [
                                {"class": c, "index": i, "prob": round(p, 6)}
                                for (c, p), i in zip(ranked, top_i[n].tolist())
                            ],
                        }
                    )
                )
            else:
                print(f"{path}: " + ", ".join(f"{c} {p:.1%}" for c, p in ranked))
            if show_dir:
                save_picture(show_dir, path, inputs[n], probs[n].tolist(), classes, shown)
        sys.stdout.flush()  # a long folder run shows progress batch by batch
    return 1 if failed else 0


def save_picture(
    show_dir: Path,
    path: Path,
    image: np.ndarray,
    probs: list[float],
    classes: list[str],
    shown: set[str],
) -> Path:
    """The model's 28x28 input beside a bar chart of its class probabilities, as DIR/<file name>.png."""
    # no pyplot: no display, no global backend state (Agg canvas)
    from matplotlib.figure import (
        Figure,
    )

    name = path.name + ".png"
    n = 1
    while name in shown:  # the same file name from two folders must not overwrite each other
        n += 1
        name = f"{path.name}.{n}.png"
    shown.add(name)
    fig = Figure(figsize=(6.4, 2.8), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax_img.set_title("model input (28x28)", fontsize=9)
    ax_img.set_xticks([]), ax_img.set_yticks([])
    best = int(np.argmax(probs))
    ax_bar.barh(
        range(len(classes)),
        probs,
        color=["tab:orange" if i == best else "tab:blue" for i in range(len(probs))],
    )
    ax_bar.set_yticks(range(len(classes)), classes, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1)
    ax_bar.set_title(f"{classes[best]} {probs[best]:.1%}", fontsize=9)
    fig.suptitle(path.name, fontsize=9)
    out = show_dir / name
    fig.savefig(out, dpi=100)
    return out
