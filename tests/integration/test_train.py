"""The real entry points train: dry run, run folder contents, eval reproduces, and 2-process CPU DDP is real
DDP that agrees with a 1-process run on the same global batch."""
import json
import math
import shutil
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mnist_dist.run import artifact

from helpers import ddp2_launcher, read_jsonl, run, run_cli, tiny_overrides


@pytest.fixture(scope="module")
def one_proc_run(tiny_idx, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir)])
    return run_dir


def test_run_folder_holds_what_it_promises(one_proc_run):
    run_dir = one_proc_run
    for name in ["config.yaml", "metrics.jsonl", "model.safetensors", "model.json", "summary.json"]:
        assert (run_dir / name).is_file(), name
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"epoch", "global_step", "test_accuracy", "test_loss", "test_count", "val_accuracy"} <= set(r)
        assert r["test_count"] == 300
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["test_count"] == 300
    assert summary["global_batch_size"] == 50 and summary["train_seconds"] > 0
    assert summary["test_accuracy"] == records[-1]["test_accuracy"]
    assert summary["test_accuracy"] > 0.8, "the toy set is easy: a working pipeline learns it in 2 epochs"


def test_eval_reproduces_the_runs_test_accuracy(one_proc_run):
    summary = json.loads((one_proc_run / "summary.json").read_text())
    proc = run_cli(["eval", str(one_proc_run), "--json"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["count"] == summary["test_count"]
    assert result["accuracy"] == summary["test_accuracy"]
    assert result["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def test_eval_of_the_test_split_needs_only_the_test_files(one_proc_run, tiny_idx, tmp_path):
    """An offline cluster can copy just t10k-*.gz to evaluate; only --split val/train reads the training files."""
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    for f in tiny_idx.glob("t10k-*"):
        shutil.copy(f, only_test)
    summary = json.loads((one_proc_run / "summary.json").read_text())
    result = json.loads(run_cli(["eval", str(one_proc_run), "--json", f"data.dir={only_test}"]).stdout.splitlines()[-1])
    assert result["count"] == 300 and result["accuracy"] == summary["test_accuracy"]
    proc = run_cli(["eval", str(one_proc_run), "--split", "val", f"data.dir={only_test}"], check=False)
    assert proc.returncode == 2 and "train-images-idx3-ubyte" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_eval_on_two_processes_counts_exactly(one_proc_run, tmp_path):
    one = json.loads(run_cli(["eval", str(one_proc_run), "--json"]).stdout.strip().splitlines()[-1])
    proc = run([*ddp2_launcher(29618), "-m", "mnist_dist.cli", "eval", str(one_proc_run), "--json",
                "--png", str(tmp_path / "cm.png")], timeout=300)
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["world_size"] == 2
    assert two["count"] == one["count"] == 300 and two["confusion"] == one["confusion"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    from PIL import Image
    assert Image.open(tmp_path / "cm.png").size[0] > 200


def test_saved_model_loads_without_training_code_pickles(one_proc_run):
    model, model_info = artifact.load_model(one_proc_run / "model.safetensors")
    assert model_info["name"] == "cnn_bn" and model_info["kwargs"] == {"width": 4} and len(model_info["classes"]) == 10
    assert set(load_file(str(one_proc_run / "model.safetensors"))) == set(model.state_dict())


def test_dry_run_of_the_real_script(tiny_idx, tmp_path):
    """--dry-run is what its help promises, over the command line's own settings: 1 epoch, 5 steps, no progress
    bars; and a complete run folder (config, one evaluation at step 5, a model that loads)."""
    run_dir = tmp_path / "dry"
    asked = ("train.epochs=3", "train.max_steps=0", "train.progress=true")  # what --dry-run must override
    proc = run_cli(["train", "--dry-run", *tiny_overrides(tiny_idx, run_dir, *asked)])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    assert (saved["epochs"], saved["max_steps"], saved["progress"]) == (1, 5, False)
    assert [(r["epoch"], r["global_step"]) for r in read_jsonl(run_dir / "metrics.jsonl")] == [(0.25, 5)]  # 20/epoch
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 5
    model, model_info = artifact.load_model(run_dir / "model.safetensors")
    assert model_info["name"] == "cnn_bn" and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert proc.stderr == "", proc.stderr  # a bar, even one paced for a log file, is stderr output: none here


def test_missing_gpu_is_a_clear_error(tiny_idx, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli(["train", *tiny_overrides(tiny_idx, tmp_path / "gpu"), "train.device=cuda"], check=False)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model, tol", [("mlp_128", 1e-4), ("cnn_bn", None)])
def test_two_process_ddp_agrees_with_one_process(tiny_idx, tmp_path, model, tol):
    """Same data, same global batch (2 x 25 vs 1 x 50). Without BatchNorm the two runs compute the same
    gradients, so the metrics match to float rounding; with BatchNorm (per-rank batch statistics) they stay close."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(["train", *tiny_overrides(tiny_idx, one, model=model)])
    proc = run_cli(["train", *tiny_overrides(tiny_idx, two, "train.per_device_batch_size=25", model=model)],
                   launcher=ddp2_launcher(29611 if model == "mlp_128" else 29612))
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["world_size"] == 2 and s2["distributed_type"] == "MULTI_CPU", proc.stdout
    assert "FutureWarning" not in proc.stderr, proc.stderr[-2000:]  # e.g. DDP's broadcast_buffers rename
    assert s2["global_batch_size"] == s1["global_batch_size"] == 50
    assert s2["test_count"] == s1["test_count"] == 300          # exact: no padded duplicates
    # Each rank trained on its own half: 1000 training images x 2 epochs, split evenly.
    assert sum(s2["train_samples_per_rank"]) == sum(s1["train_samples_per_rank"]) == 2000
    assert s2["train_samples_per_rank"] == [1000, 1000]
    r1, r2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [r["global_step"] for r in r1] == [r["global_step"] for r in r2]
    for a, b in zip(r1, r2):
        if tol is not None:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=tol, abs=tol)
            assert b["test_loss"] == pytest.approx(a["test_loss"], rel=tol, abs=tol)
            assert abs(b["test_accuracy"] - a["test_accuracy"]) <= 1 / 300
        else:
            assert abs(b["test_accuracy"] - a["test_accuracy"]) < 0.1
    if tol is not None:
        w1, w2 = (load_file(str(d / "model.safetensors")) for d in (one, two))
        assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    else:
        # DDP does not broadcast BN running stats each step; each rank evaluates its share with rank 0's
        # (the saved ones), so the run's own test loss is what the saved model gives on one process.
        result = json.loads(run_cli(["eval", str(two), "--json"]).stdout.strip().splitlines()[-1])
        assert result["accuracy"] == s2["test_accuracy"]
        assert result["loss"] == pytest.approx(s2["test_loss"], rel=1e-6)


def test_accumulation_sgd_step_schedule_and_bf16_run(tiny_idx, tmp_path):
    """Gradient accumulation (2 x 25) computes the same steps as one batch of 50 (no BatchNorm: exact to
    rounding); the other optimizers, schedules, label smoothing and bf16 autocast on CPU take effect and learn."""
    one, acc = tmp_path / "one", tmp_path / "acc"
    run_cli(["train", *tiny_overrides(tiny_idx, one, model="mlp_128")])
    run_cli(["train", *tiny_overrides(tiny_idx, acc, "train.per_device_batch_size=25", "train.grad_accum_steps=2",
                                      model="mlp_128")])
    r1, r2 = (read_jsonl(d / "metrics.jsonl") for d in (one, acc))
    assert [r["global_step"] for r in r1] == [r["global_step"] for r in r2] == [20, 40]
    for a, b in zip(r1, r2):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert 0 <= a["train_accuracy"] <= 1
    # Each option shows where it acts: in the saved config, the lr curve (tracked every 5 steps), the summary's
    # precision, the training loss (label smoothing); and each run still learns.
    runs = {
        "step": ["train.optimizer=sgd", "train.scheduler=step", "train.lr=0.05"],
        "cosine": ["train.optimizer=adam", "train.scheduler=cosine", "train.mixed_precision=bf16", "data.augment=true"],
        "none": ["train.scheduler=none", "data.loader=dataloader", "train.label_smoothing=0.1"],
        "unsmoothed": ["train.scheduler=none", "data.loader=dataloader", "train.label_smoothing=0"],
    }
    logged = list(range(5, 41, 5))  # 20 steps an epoch, 2 epochs
    lr_curve = {  # the lr after each logged step: StepLR(step_size=one epoch, gamma=0.7), CosineAnnealingLR(T_max=40)
        "step": [0.05 * 0.7 ** (s // 20) for s in logged],
        "cosine": [0.01 * (1 + math.cos(math.pi * s / 40)) / 2 for s in logged],
        "none": [0.01] * len(logged),
        "unsmoothed": [0.01] * len(logged),
    }
    for name, extra in runs.items():
        run_dir = tmp_path / name
        run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "tracking.backend=tensorboard", *extra)])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["test_accuracy"] > 0.5, (extra, summary)
        assert summary["train_samples_per_rank"] == [2000]
        assert summary["mixed_precision"] == ("bf16" if "train.mixed_precision=bf16" in extra else "no")
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        for option in extra:
            key, value = option.split("=")
            section, leaf = key.split(".")
            assert saved[section][leaf] == yaml.safe_load(value), option
        lr = tensorboard_scalars(run_dir, "train/lr")
        assert [step for step, _ in lr] == logged
        assert [value for _, value in lr] == pytest.approx(lr_curve[name], rel=1e-6), name
    # Smoothing 0.1 over 10 classes targets 0.91 / 0.01: no model's loss goes below that target's entropy.
    floor = -(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01))
    smoothed, plain = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("none", "unsmoothed"))
    assert all(r["train_loss"] > floor for r in smoothed), (floor, smoothed)
    assert plain[-1]["train_loss"] < floor, (floor, plain)


def tensorboard_scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar a run wrote to RUN_DIR/tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_is_fused_where_torch_has_it_and_falls_back_where_not(monkeypatch, name):
    from mnist_dist import config
    from mnist_dist.train import loop
    cfg = config.load(None, [f"train.optimizer={name}"]).train
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert loop.make_optimizer(cfg, params).defaults["fused"] is True  # torch 2.14 has CPU kernels for both
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]

    class NoFused(cls):  # an older torch: no `fused` argument at all
        def __init__(self, *args, fused=None, **kwargs):
            if fused is not None:
                raise TypeError("__init__() got an unexpected keyword argument 'fused'")
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(torch.optim, cls.__name__, NoFused)
    opt = loop.make_optimizer(cfg, params)
    assert type(opt) is NoFused and not opt.defaults.get("fused")
    assert opt.defaults["lr"] == cfg.lr


def test_train_called_as_a_library_puts_the_callers_signal_handlers_back(tiny_idx, tmp_path):
    """A notebook or script that calls mnist_dist.loop.train() gets its own SIGINT/SIGTERM/SIGUSR1 handlers back,
    whether the run finished or stopped with an error (here: a second run into a folder another run holds)."""
    script = f"""
import json, signal, sys
from mnist_dist import config
from mnist_dist.train import loop
from mnist_dist.errors import UserError
mine = lambda signum, frame: None
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, mine)
cfg = config.load(None, {tiny_overrides(tiny_idx, tmp_path / "run", "train.epochs=1")!r})
assert loop.train(cfg) == 0
after_run = [signal.getsignal(s) is mine for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
bad = config.load(None, {tiny_overrides(tiny_idx, tmp_path / "afile", "train.epochs=1")!r})
try:
    loop.train(bad)
except UserError:
    pass
after_error = [signal.getsignal(s) is mine for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
print(json.dumps([after_run, after_error]))
"""
    (tmp_path / "afile").write_text("not a folder")
    proc = run([sys.executable, "-c", script], timeout=300, cwd=tmp_path)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[True, True, True], [True, True, True]]
