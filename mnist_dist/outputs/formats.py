"""A trained model in the formats that run without mnist-dist: a torch.export program (model.pt2), ONNX (through
the exporter torch recommends, dynamo=True with onnxscript) and TorchScript (torch.jit, deprecated by torch but
still what older servers load).

Each file keeps the PyTorch model's contract: float [B, 1, 28, 28] already normalised as (x/255 - mean)/std in,
logits [B, classes] out, any batch size. Mean, std, class names and that contract travel inside it (an extra file
model.json, or ONNX metadata_props). Each is read back after it is written and must give the model's logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from mnist_dist.errors import UserError
from mnist_dist.run import atomic

CONTRACT = "float32 [batch, 1, 28, 28] = (uint8 pixels/255 - mean)/std, light ink on dark; output: logits [batch, classes]"


class ExportError(UserError):
    """A missing optional dependency or a failed export check; printed as one line."""


def sample_input(batch: int = 8) -> torch.Tensor:
    """Fixed pseudo-random normalised images for exporting and for the agreement check."""
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def check_close(logits, model: torch.nn.Module, x: torch.Tensor) -> float:
    """The largest |logit| difference of an exported model's output to the model's; too large is refused."""
    with torch.no_grad():
        expected = model(x)
    max_diff = float((torch.as_tensor(logits) - expected).abs().max())
    if (
        not max_diff <= 1e-3
    ):  # float32 reorderings give ~1e-6; more (or NaN) means the export changed the model
        raise ExportError(
            f"exported model disagrees with PyTorch (max |logit diff| {max_diff:.2e})"
        )
    return max_diff


def _program(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """The model as a torch.export program with a batch dimension of any size."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model.eval(), (sample_input(2),), dynamic_shapes=({0: batch},))


def write_pt2(model: torch.nn.Module, model_info: dict, out: Path) -> float:
    """model.pt2: `torch.export.load(path).module()` gives the model back with torch alone."""
    x = sample_input(5)  # a batch size other than the exported one: the batch axis is dynamic
    with atomic.replacing(out) as tmp:  # read back and checked before it replaces anything
        torch.export.save(
            _program(model), str(tmp), extra_files={"model.json": json.dumps(model_info)}
        )
        with torch.no_grad():
            return check_close(torch.export.load(str(tmp)).module()(x), model, x)


def write_onnx(model: torch.nn.Module, model_info: dict, out: Path) -> float | None:
    """model.onnx through torch's own exporter (dynamo=True, which needs onnxscript); returns the max |logit|
    difference under onnxruntime (None where onnxruntime is not installed)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  # what dynamo=True exports through
    except ModuleNotFoundError as e:
        raise ExportError(
            f"ONNX export needs {e.name}, in the optional extra: pip install 'mnist-dist[onnx]'"
        ) from None
    with atomic.replacing(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxscript's notes on its own deprecations
        try:
            program = torch.onnx.export(
                _program(model),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=["logits"],
            )
            assert program is not None  # dynamo=True always returns the program
            proto = program.model_proto
            onnx.checker.check_model(proto)
        except Exception as e:  # the exporter's own failures, in its words
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ExportError(
                f"torch's ONNX exporter failed ({type(e).__name__}: {first})"
            ) from None
        for key, value in metadata(model_info).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        try:
            import onnxruntime
        except ModuleNotFoundError:
            return None
        # Read back and checked before it replaces anything.
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x = sample_input(5)
        return check_close(session.run(None, {"input": x.numpy()})[0], model, x)


def write_torchscript(model: torch.nn.Module, model_info: dict, out: Path) -> float:
    """A traced TorchScript module (the models have no data-dependent control flow)."""
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model.eval(), sample_input(2))
        x = sample_input(5)
        with atomic.replacing(out) as tmp:  # read back and checked before it replaces anything
            torch.jit.save(traced, str(tmp), _extra_files={"model.json": json.dumps(model_info)})
            with torch.no_grad():
                return check_close(torch.jit.load(str(tmp))(x).numpy(), model, x)


def metadata(model_info: dict) -> dict[str, str]:
    """An ONNX file's metadata_props: how to feed the model and name its outputs."""
    keys = ("name", "dataset", "mean", "std")
    out = {f"mnist_dist.{'model' if k == 'name' else k}": str(model_info[k]) for k in keys}
    return out | {
        "mnist_dist.classes": json.dumps(model_info["classes"]),
        "mnist_dist.input": CONTRACT,
    }


WRITERS = {"pt2": write_pt2, "onnx": write_onnx, "torchscript": write_torchscript}
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
