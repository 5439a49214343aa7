"""`mnist-dist export`.

Proves that the ONNX file, run by onnxruntime with batch sizes other than the traced one, gives the same
argmax and (to float rounding) the same logits as PyTorch on the whole Fashion-MNIST test set, and carries
the normalisation and class names; that the TorchScript file does the same after reloading; and that a
missing `onnx` package ends in one line and exit 2.
"""
import json
import sys

import numpy as np
import pytest
import torch

from mnist_dist import cli
from mnist_dist.data import loaders, sources
from mnist_dist.run import artifact

from helpers import FASHION_DIR, needs_fashion, train_in_process

FASHION = FASHION_DIR
pytestmark = needs_fashion


@pytest.fixture(scope="module")
def test_split():
    return sources.load_idx(FASHION, "test")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_split):
    """A narrow cnn_bn trained briefly, so that BatchNorm's running statistics are not the identity and
    the export has to carry them (an untrained BN would hide an export that used batch statistics)."""
    return train_in_process(tmp_path_factory.mktemp("run"), "cnn_bn", {"width": 8},
                            sources.Split(test_split.images[:2000], test_split.labels[:2000]), steps=30, lr=3e-3)


def pytorch_logits(model_dir, x: torch.Tensor) -> np.ndarray:
    model, _ = artifact.load_model(model_dir)
    with torch.no_grad():
        return model(x).numpy()


def test_onnx_matches_pytorch_on_the_test_set(model_dir, test_split):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    assert cli.main(["export", str(model_dir), "--format", "onnx"]) == 0
    path = model_dir / "model.onnx"
    _, model_info = artifact.load_model(model_dir)
    x = loaders.normalize(test_split.images, model_info["mean"], model_info["std"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    bounds = [0, 1, 1000, 5000, 9990, 10_000]  # batches of 1, 999, 4000, 4990 and 10: the batch axis is dynamic
    onnx_logits = np.concatenate([session.run(None, {"input": x[a:b].numpy()})[0] for a, b in zip(bounds, bounds[1:])])
    torch_logits = pytorch_logits(model_dir, x)
    assert onnx_logits.shape == (10_000, 10)
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-4)
    assert torch_logits.std() > 0.5  # the comparison is between real, varied logits

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["mnist_dist.classes"]) == sources.CLASSES["fashion_mnist"]
    assert float(props["mnist_dist.mean"]) == model_info["mean"] and float(props["mnist_dist.std"]) == model_info["std"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_pytorch(model_dir, test_split, tmp_path):
    out = tmp_path / "sub" / "m.pt"
    assert cli.main(["export", str(model_dir / "model.safetensors"), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"model.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    _, model_info = artifact.load_model(model_dir)
    assert json.loads(extra["model.json"]) == model_info
    x = loaders.normalize(test_split.images[:3000], model_info["mean"], model_info["std"])
    with torch.no_grad():
        ts_logits = scripted(x).numpy()
    torch_logits = pytorch_logits(model_dir, x)
    assert (ts_logits.argmax(1) == torch_logits.argmax(1)).all()
    np.testing.assert_allclose(ts_logits, torch_logits, atol=1e-4, rtol=1e-4)


def test_missing_onnx_is_one_line(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    assert cli.main(["export", str(model_dir), "--format", "onnx", "--out", str(model_dir / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mnist-dist export: error: ONNX export needs onnx, in the optional extra: pip install 'mnist-dist[onnx]'"
    assert not (model_dir / "x.onnx").exists()


def test_a_hub_folder_exported_without_onnxscript_has_no_onnx_and_its_card_says_why(model_dir, tmp_path,
                                                                                     monkeypatch, capsys):
    """A second export into the same folder without onnxscript left the first export's model.onnx beside a card
    that said there was none (and push uploads it)."""
    pytest.importorskip("onnxscript")
    from mnist_dist.outputs import hub
    out = tmp_path / "hub"
    hub.export(model_dir, None, out, best=False, repo_id="someone/model")
    assert (out / "model.onnx").is_file() and (out / "README.md").read_text().count("```python") == 3
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    hub.export(model_dir, None, out, best=False, repo_id="someone/model")
    card = (out / "README.md").read_text()
    assert not (out / "model.onnx").exists() and card.count("```python") == 2
    assert "(No ONNX file here: ONNX export needs onnxscript, in the optional extra" in card
    assert "mnist-dist: no model.onnx in" in capsys.readouterr().err


def test_an_export_that_disagrees_replaces_nothing(model_dir, tmp_path, monkeypatch):
    """The check of an exported file ran after it had replaced the target: a refused export was left in place."""
    from mnist_dist.outputs import formats
    model, info = artifact.load_model(model_dir)
    out = tmp_path / "m.pt2"
    out.write_bytes(b"the earlier file")
    monkeypatch.setattr(formats, "check_close", lambda *a: (_ for _ in ()).throw(formats.ExportError("disagrees")))
    with pytest.raises(formats.ExportError):
        formats.write_pt2(model, info, out)
    assert out.read_bytes() == b"the earlier file" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]
