"""`mnist-dist export`: a trained model as ONNX or TorchScript, for serving without this package.

The exported model has the same contract as the PyTorch one: float [B, 1, 28, 28] already normalised as
(x/255 - mean)/std, returning logits [B, 10]; any batch size. Mean, std, class names and that contract are
stored inside the file (ONNX metadata_props, TorchScript extra file model.json) so it is self-describing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from mnist_dist.errors import UserError
from mnist_dist.run import artifact, atomic, rundir

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
OPSET = 17  # supported by every onnxruntime since 1.14


class ExportError(UserError):
    """A missing optional dependency or a failed export check; printed as one line."""


def add_arguments(p):
    p.add_argument("model", help="run folder, or a model.safetensors with model.json beside it")
    rundir.add_best_argument(p)
    p.add_argument(
        "--format",
        choices=sorted([*SUFFIXES, "hub"]),
        required=True,
        help="hub: a Hugging Face Hub model folder (model.safetensors, config.json, README.md model card, "
        "the run's pictures), for `mnist-dist push` or huggingface_hub.upload_folder",
    )
    p.add_argument(
        "--out",
        help="output file (default: model.onnx or model.torchscript.pt beside the weights); "
        "for --format hub the folder (default: the model's own folder)",
    )
    p.add_argument("out_folder", nargs="?", metavar="OUT", help="the same as --out")
    p.add_argument(
        "--onnx", action="store_true", help="with --format hub: add model.onnx to the folder"
    )


def run(args) -> int:
    args.out = args.out or args.out_folder
    if args.format == "hub":
        return export_hub(args)
    source = rundir.pick_model(args.model, args.best)
    model, model_info = artifact.load_model(source)
    weights = source / rundir.MODEL_FILE if source.is_dir() else source
    out = Path(args.out) if args.out else weights.with_name("model" + SUFFIXES[args.format])
    if out.is_dir():
        raise ExportError(
            f"--out {out} is a folder; name the file, e.g. --out {out / ('model' + SUFFIXES[args.format])}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "onnx":
        max_diff = export_onnx(model, model_info, out)
        check = (
            f"onnxruntime agrees with PyTorch to {max_diff:.1e}"
            if max_diff is not None
            else "not checked: onnxruntime is not installed"
        )
    else:
        max_diff = export_torchscript(model, model_info, out)
        check = f"reloaded, agrees with PyTorch to {max_diff:.1e}"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB; {check})")
    return 0


def export_hub(args) -> int:
    from mnist_dist.outputs import hub

    source = rundir.pick_model(args.model, args.best)
    if not source.is_dir():
        raise ExportError(
            f"--format hub takes a run folder (it reads the run's summary, config and pictures), not {source}"
        )
    out = Path(args.out) if args.out else source
    if out.is_file():
        raise ExportError(f"--out {out} is a file; --format hub writes a folder")
    written = hub.export(source, rundir.of_model(source), out, args.best)
    if args.onnx:
        model, model_info = artifact.load_model(source)
        export_onnx(model, model_info, out / hub.ONNX)
        written.append(out / hub.ONNX)
    print(f"wrote the Hub model folder {out}: {', '.join(sorted(p.name for p in written))}")
    return 0


def sample_input(batch: int = 8) -> torch.Tensor:
    """Fixed pseudo-random normalised images for tracing and for the agreement check."""
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def export_onnx(model: torch.nn.Module, model_info: dict, out: Path) -> float | None:
    """Write ONNX with a dynamic batch axis; return the max |logit| difference to PyTorch under onnxruntime
    (None when onnxruntime is missing)."""
    try:
        import onnx
    except ModuleNotFoundError:
        raise ExportError(
            "ONNX export needs the optional extra: pip install 'mnist-dist[onnx]'"
        ) from None
    with atomic.replacing(out) as tmp:
        with warnings.catch_warnings():
            # The TorchScript-based exporter needs only `onnx`; the newer dynamo one would also need onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (sample_input(2),),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        for key, value in metadata(model_info).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return None
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = sample_input(5)  # a batch size other than the traced one: proves the batch axis is dynamic
    return check_close(session.run(None, {"input": x.numpy()})[0], model, x)


def export_torchscript(model: torch.nn.Module, model_info: dict, out: Path) -> float:
    """Write a traced TorchScript module (the models have no data-dependent control flow); return the max
    |logit| difference of the reloaded file to the original."""
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, sample_input(2))
        with atomic.replacing(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"model.json": json.dumps(model_info)})
        reloaded = torch.jit.load(str(out))
    x = sample_input(5)
    with torch.no_grad():
        return check_close(reloaded(x).numpy(), model, x)


def check_close(logits, model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = model(x)
    max_diff = float((torch.as_tensor(logits) - expected).abs().max())
    if max_diff > 1e-3:  # float32 reorderings give ~1e-6; more means the export changed the model
        raise ExportError(
            f"exported model disagrees with PyTorch (max |logit diff| {max_diff:.2e})"
        )
    return max_diff


def metadata(model_info: dict) -> dict[str, str]:
    return {
        "mnist_dist.model": model_info["name"],
        "mnist_dist.dataset": model_info["dataset"],
        "mnist_dist.mean": str(model_info["mean"]),
        "mnist_dist.std": str(model_info["std"]),
        "mnist_dist.classes": json.dumps(model_info["classes"]),
        "mnist_dist.input": "float32 [batch, 1, 28, 28] = (uint8 pixels/255 - mean)/std, light ink on dark; "
        "output: logits [batch, 10]",
    }
