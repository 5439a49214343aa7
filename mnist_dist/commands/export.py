"""`mnist-dist export MODEL --format F [OUT]`: a trained model for use elsewhere.

- pt2, onnx, torchscript: one file that runs without mnist-dist (outputs/formats.py);
- hub: a Hugging Face Hub model folder (outputs/hub.py), for `mnist-dist push` or huggingface_hub.upload_folder;
- space: a Hugging Face Space that serves the draw-a-digit page of `mnist-dist demo` (app.py, requirements.txt,
  the model, a README with the Space's metadata).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

FORMATS = ("hub", "onnx", "pt2", "space", "torchscript")
# The Space's page text under its metadata (huggingface_hub's SpaceCardData writes that, quoted as YAML needs).
SPACE_TEXT = """
# {title}

Draw a digit, or upload a photo of one: the model's three best guesses, and the 28x28 image it saw. The page is
`mnist-dist demo`'s; the model is `{name}`, trained on {dataset} with mnist-dist{test}.
"""
SPACE_APP = '''"""The draw-a-digit page of the mnist-dist model in this folder (the same page as `mnist-dist demo`)."""
from pathlib import Path

from mnist_dist.outputs import demo

demo.build(Path(__file__).resolve().parent).launch()
'''


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mnist_dist.run import rundir

    p.add_argument(
        "model",
        help="a run folder, a model folder, or a model.safetensors with model.json beside it",
    )
    rundir.add_best_argument(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        required=True,
        help="pt2 (torch.export), onnx, torchscript: one file that runs without mnist-dist; hub: a Hugging Face "
        "Hub model folder; space: a Hugging Face Space serving `mnist-dist demo`'s page",
    )
    p.add_argument(
        "--out",
        help="the file (default: model.pt2, model.onnx or model.torchscript.pt beside the weights) or, for hub and "
        "space, the folder (hub's default: the model's own folder)",
    )
    p.add_argument("out_folder", nargs="?", metavar="OUT", help="the same as --out")
    p.add_argument(
        "--repo-id", help="hub: the repo id the card's snippets load (default OWNER/NAME)"
    )


def run(args) -> int:
    from mnist_dist.outputs import formats
    from mnist_dist.run import artifact, rundir

    out = args.out or args.out_folder
    source = rundir.pick_model(args.model, args.best)
    if args.format == "space" and not out:
        raise formats.ExportError("--format space needs OUT: the folder to write the Space into")
    if args.format in ("hub", "space"):
        if not source.is_dir():
            raise formats.ExportError(f"--format {args.format} takes a model folder, not {source}")
        if out and Path(out).is_file():
            raise formats.ExportError(
                f"--out {out} is a file; --format {args.format} writes a folder"
            )
        write = export_hub if args.format == "hub" else export_space
        written = write(source, Path(out) if out else source, args)
        what = "Hub model" if args.format == "hub" else "Space"
        names = ", ".join(sorted(p.name for p in written))
        print(f"wrote the {what} folder {written[0].parent}: {names}")
        return 0
    model, model_info = artifact.load_model(source)
    weights = source / rundir.MODEL_FILE if source.is_dir() else source
    suffix = formats.SUFFIXES[args.format]
    path = Path(out) if out else weights.with_name("model" + suffix)
    if path.is_dir():
        raise formats.ExportError(
            f"--out {path} is a folder; name the file, e.g. --out {path / ('model' + suffix)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    max_diff = formats.WRITERS[args.format](model, model_info, path)
    check = (
        "not checked: onnxruntime is not installed"
        if max_diff is None
        else f"agrees to {max_diff:.1e}"
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; read back, {check})")
    return 0


def export_hub(source: Path, out: Path, args) -> list[Path]:
    from mnist_dist.outputs import hub
    from mnist_dist.run import rundir

    return hub.export(source, rundir.of_model(source), out, args.best, args.repo_id)


def export_space(source: Path, out: Path, args) -> list[Path]:
    """A Space folder: the model, app.py that serves outputs/demo.build() on it, requirements.txt, README.md."""
    from huggingface_hub import SpaceCardData

    from mnist_dist.run import artifact, atomic, rundir

    _, info = artifact.load_model(source)
    out.mkdir(parents=True, exist_ok=True)
    for name in (rundir.MODEL_FILE, rundir.MODEL_META):
        shutil.copyfile(source / name, out / name)
    summary = rundir.read_json(rundir.of_model(source) / rundir.SUMMARY) or {}
    test = (
        f" ({summary['test_accuracy']:.2%} test accuracy)" if summary.get("test_accuracy") else ""
    )
    title = f"Draw a digit: {info['name']}"
    metadata = SpaceCardData(title=title, sdk="gradio", app_file="app.py", license="mit", emoji="✍️")
    text = SPACE_TEXT.format(title=title, name=info["name"], dataset=info["dataset"], test=test)
    readme = f"---\n{metadata.to_yaml()}\n---\n{text}"
    files = {"app.py": SPACE_APP, "requirements.txt": "mnist-dist[demo]\n", "README.md": readme}
    for name, text in files.items():
        atomic.write_text(out / name, text)
    return [out / name for name in (rundir.MODEL_FILE, rundir.MODEL_META, *files)]
