"""The Hugging Face Hub flow and the run folder's answers, offline and on loopback only, on one real training run:

- `mnist-dist export RUN --format hub OUT` writes the Hub layout; its README.md parses with huggingface_hub's
  ModelCard.load, its model-index holds summary.json's test accuracy on the test split, and the folder loads
  back with logits identical to the run's.
- `eval` and `predict` take a Hub repo id, read with HF_HUB_OFFLINE=1 from a Hub cache laid out as
  huggingface_hub writes it (blobs, snapshots/<rev> links, refs/main), and a training checkpoint.
- `push` selects exactly the Hub files: the allow-list through huggingface_hub's filter_repo_objects on the run
  folder, and a real upload to a recording HTTP endpoint on 127.0.0.1; a fake HF_TOKEN reaches nothing but the
  Authorization header (not the output, the run folder, the card or any uploaded file).
- summary.json holds the best model's test accuracy beside the final one's, equal to `eval --best`.
"""
import base64
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mnist_dist.outputs import hub
from mnist_dist.run import artifact

from helpers import fashion_slice, lay_out_hub_cache, run_cli

TOKEN = "hf_" + "fakeTokenForTheTest" * 2  # shaped like a real user access token
pytestmark = pytest.mark.slow  # one real training run, then a CLI process per check
HUB_LAYOUT = sorted(["README.md", "config.json", "model.json", "model.safetensors", "model.pt2", "model.onnx",
                     "curves.png", "confusion_matrix.png", "samples.png"])


def env_without_hub(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "WANDB_"))}
    return {**env, "HOME": str(tmp / "home"), "HF_HOME": str(tmp / "hf_home"), "PYTHONUNBUFFERED": "1", **extra}


def cli(args: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    """run_cli in the environment `env` (env_without_hub's), with no other: ok=True fails on a non-zero exit."""
    return run_cli(args, base_env=env, timeout=300, check=ok)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run whose best model (by the largest val loss: the first evaluation) is not its final one."""
    tmp = tmp_path_factory.mktemp("hub")
    idx = fashion_slice(tmp / "idx", n_train=800, n_test=300)
    run_dir = tmp / "run"
    cli(["train", "--config", "configs/train/debug.yaml", f"run.dir={run_dir}", "train.progress=false",
         f"data.dir={idx}", "data.source=idx", "data.val_size=200", "train.max_steps=0", "train.epochs=3",
         "checkpoint.best_metric=val_loss", "checkpoint.best_mode=max"], env_without_hub(tmp, HF_TOKEN=TOKEN))
    return tmp, idx, run_dir


def logits(folder: Path) -> torch.Tensor:
    model, _ = artifact.load_model(folder)
    with torch.no_grad():
        return model(torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)))


def test_export_writes_a_hub_folder_with_a_valid_card_and_the_same_model(trained):
    from huggingface_hub import ModelCard
    tmp, _, run_dir = trained
    out = tmp / "hub_model"
    result = cli(["export", str(run_dir), "--format", "hub", str(out)], env_without_hub(tmp))
    assert "wrote the Hub model folder" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == HUB_LAYOUT
    assert torch.equal(logits(out), logits(run_dir))  # identical, not close

    card = ModelCard.load(out / "README.md")  # parses the metadata and its model-index (raises if malformed)
    summary = json.loads((run_dir / "summary.json").read_text())
    data = card.data.to_dict()
    assert (data["license"], data["library_name"], data["pipeline_tag"]) == ("mit", "mnist-dist",
                                                                            "image-classification")
    assert data["datasets"] == ["zalando-datasets/fashion_mnist"] and data["metrics"] == ["accuracy"]
    (result_,) = card.data.eval_results
    assert (result_.task_type, result_.dataset_type, result_.dataset_split, result_.metric_type) == \
        ("image-classification", "zalando-datasets/fashion_mnist", "test", "accuracy")
    assert result_.metric_value == summary["test_accuracy"]
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == summary["test_accuracy"]
    for words in ("world size (processes) | 1", f"global batch size | {summary['global_batch_size']}",
                  "training time", "hardware | cpu", "## Recipe", "name: cnn_bn", "![curves](curves.png)"):
        assert words in card.text, words
    assert str(tmp) not in card.content  # no local path (data.dir, run.dir) in the card
    assert json.loads((out / "config.json").read_text()) == json.loads((run_dir / "model.json").read_text())

    cli(["export", str(run_dir), "--best", "--format", "hub", str(tmp / "hub_best")], env_without_hub(tmp))
    best = ModelCard.load(tmp / "hub_best" / "README.md")
    assert best.data.eval_results[0].metric_value == summary["best"]["test_accuracy"]


def test_eval_and_predict_load_a_repo_id_from_the_hub_cache_offline(trained):
    from PIL import Image
    tmp, idx, run_dir = trained
    folder = tmp / "for_cache"
    cli(["export", str(run_dir), "--format", "hub", str(folder)], env_without_hub(tmp))
    cache = tmp / "hub_cache"
    lay_out_hub_cache(cache, "someone/fashion-cnn", folder)
    env = env_without_hub(tmp, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    data_args = [f"data.dir={idx}", "data.source=idx"]
    by_id = json.loads(cli(["eval", "someone/fashion-cnn", "--json", *data_args], env).stdout.splitlines()[-1])
    by_folder = json.loads(cli(["eval", str(run_dir), "--json", *data_args], env).stdout.splitlines()[-1])
    # the run's own eval batch size is not in the Hub folder: the loss sums in another order
    assert by_id.pop("loss") == pytest.approx(by_folder.pop("loss"), rel=1e-6)
    assert by_id == by_folder and by_id["count"] == 300

    image = tmp / "shoe.png"
    import numpy as np

    from mnist_dist.data import sources
    Image.fromarray(sources.load_idx(idx, "test").images[0].numpy().astype(np.uint8)).save(image)
    pred_id = cli(["predict", "someone/fashion-cnn", str(image), "--json"], env).stdout
    pred_folder = cli(["predict", str(run_dir), str(image), "--json"], env).stdout
    assert json.loads(pred_id.splitlines()[-1])["top_k"] == json.loads(pred_folder.splitlines()[-1])["top_k"]

    missing = cli(["eval", "someone/not-cached", *data_args], env, ok=False)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set" in missing.stderr


def test_eval_takes_a_training_checkpoint(trained):
    tmp, idx, run_dir = trained
    env = env_without_hub(tmp)
    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    data_args = [f"data.dir={idx}", "data.source=idx"]
    from_ckpt = json.loads(cli(["eval", str(last), "--json", *data_args], env).stdout.splitlines()[-1])
    final = json.loads(cli(["eval", str(run_dir), "--json", *data_args], env).stdout.splitlines()[-1])
    # the last checkpoint is written at the run's last step: its weights are the final model's
    assert from_ckpt == final


def test_summary_holds_the_best_models_test_accuracy_beside_the_final_ones(trained):
    tmp, idx, run_dir = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["global_step"] < summary["global_step"]  # the best is not the final model here
    best = json.loads(cli(["eval", str(run_dir), "--best", "--json", f"data.dir={idx}", "data.source=idx"],
                          env_without_hub(tmp)).stdout.splitlines()[-1])
    assert summary["best"]["test_accuracy"] == best["accuracy"] and summary["best"]["test_loss"] == pytest.approx(
        best["loss"])
    assert summary["best"]["test_accuracy"] != summary["test_accuracy"] or summary["best"]["test_loss"] != \
        summary["test_loss"]


# ----------------------------------------------------------------------------- push


class RecordingHub(BaseHTTPRequestHandler):
    """The Hub API as upload_folder uses it (create repo, preupload, commit), every file declared `regular` so
    that its bytes arrive inside the commit; records every request."""
    requests: list = []

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        endpoint = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            name = json.loads(body)["name"]
            return self._reply({"url": f"{endpoint}/someone/{name}", "name": f"someone/{name}", "id": "x" * 24})
        if self.path == "/api/validate-yaml":  # the model card's metadata, checked by the Hub before the commit
            return self._reply({})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in self.path:
            return self._reply({"commitUrl": f"{endpoint}/someone/fashion-cnn/commit/{'a' * 40}",
                                "commitOid": "a" * 40})
        return self._reply({"error": f"not in the test's Hub: {self.path}"}, 404)

    def do_GET(self):
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": b""})
        return self._reply({"error": f"not in the test's Hub: {self.path}"}, 404)


def uploaded_files(requests: list) -> dict[str, bytes]:
    """path -> bytes of every file in the commits the endpoint received (NDJSON, base64 contents)."""
    files = {}
    for r in requests:
        if "/commit/" in r["path"]:
            for line in r["body"].splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_uploads_only_the_hub_files_and_the_token_goes_nowhere_else(trained):
    from huggingface_hub.utils import filter_repo_objects
    tmp, _, run_dir = trained
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "best").is_dir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RecordingHub.requests = []
    env = env_without_hub(tmp, HF_TOKEN=TOKEN, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
                          HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    try:
        result = cli(["push", str(run_dir), "someone/fashion-cnn"], env)
    finally:
        server.shutdown()
    assert "pushed" in result.stdout

    # the allow-list, through the filter upload_folder applies, on the whole run folder
    everything = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.startswith("checkpoints/") for p in everything) and "best/model.safetensors" in everything
    assert sorted(filter_repo_objects(everything, allow_patterns=list(hub.HUB_FILES))) == HUB_LAYOUT

    files = uploaded_files(RecordingHub.requests)
    assert sorted(files) == HUB_LAYOUT
    assert files["model.safetensors"] == (run_dir / "model.safetensors").read_bytes()
    card = files["README.md"].decode()  # its snippets load the repo it was pushed to
    assert card.count('"someone/fashion-cnn"') == 5 and hub.PLACEHOLDER not in card
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in RecordingHub.requests)  # it reached the endpoint only so
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    assert TOKEN not in result.stdout + result.stderr
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_a_fresh_run_in_a_pushed_folder_sets_the_earlier_card_aside(trained, tmp_path):
    """push and export write README.md and config.json into the run folder: a fresh run there must not keep the
    earlier run's card."""
    import shutil

    from mnist_dist.run import rundir
    tmp, _, run_dir = trained
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder, symlinks=True)
    hub.export(folder, folder, folder, best=False)
    kept = rundir.set_aside(folder)
    assert (kept / "README.md").is_file() and (kept / "config.json").is_file()
    assert not (folder / "README.md").exists() and not (folder / "config.json").exists()


def test_a_failed_push_is_one_line_without_the_token(trained):
    tmp, _, run_dir = trained
    env = env_without_hub(tmp, HF_TOKEN=TOKEN, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_XET="1")
    result = cli(["push", str(run_dir), "someone/fashion-cnn"], env, ok=False)
    assert result.returncode == 2 and result.stderr.startswith("mnist-dist push: error: push to someone/fashion-cnn")
    assert len(result.stderr.strip().splitlines()) == 1 and TOKEN not in result.stdout + result.stderr
