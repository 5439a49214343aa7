"""W&B tracking, checked by reading back the files W&B leaves in the run folder.

- A real 2-process `accelerate launch` with WANDB_MODE=offline leaves exactly one W&B run, whose .wandb
  log (parsed with wandb's own protobufs) holds the merged config, the global train loss/lr/images-per-s per
  log step, val/test metrics, per-class accuracy, the confusion chart, sample images, the misclassified
  table and the final summary; its id is the one stored in the checkpoints.
- A sentinel WANDB_API_KEY appears nowhere: not in stdout/stderr, not in any file of the run folder.
- Without credentials, or with a key but no route to the W&B server, W&B runs offline (never prompts, never
  waits out wandb's timeout) and says how to sync; a tracker started with the id a checkpoint stored continues
  that W&B run. A preempted run is marked preempting (W&B's contract for a run that will resume).
- WANDB_MODE=disabled means no W&B at all; a failing wandb.init or log warns once and training goes on.
"""
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from mnist_dist import config, metrics
from mnist_dist.config import sweeps
from mnist_dist.outputs import tracking
from mnist_dist.run import rundir

from helpers import REPO, VENV_BIN, fashion_slice, read_wandb_run, run_cli

SENTINEL = "sentinelXYZ" + "q" * 29  # 40 characters, shaped like a real W&B key (no host prefix)


def train_args(idx: Path, run_dir: Path, *extra) -> list[str]:
    return ["--config", "configs/train/debug.yaml", f"run.dir={run_dir}", "train.progress=false",
            "tracking.backend=wandb", f"data.dir={idx}", "data.source=idx", "data.val_size=200",
            "train.log_every_steps=4", "checkpoint.every_steps=4", *extra]


def clean_env(home: Path, **extra) -> dict:
    """The test's own environment: no W&B settings or credentials inherited, a HOME without ~/.netrc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def assert_no_secret(run_dir: Path, *outputs: str):
    for text in outputs:
        assert SENTINEL not in text
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        assert SENTINEL.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_two_processes_leave_one_offline_wandb_run(tmp_path):
    idx = fashion_slice(tmp_path / "idx")
    run_dir = tmp_path / "run"
    launcher = [str(VENV_BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_ddp2.yaml"]
    args = train_args(idx, run_dir, "train.max_steps=8", "tracking.tags=[ci]", "tracking.log_model=true")
    env = clean_env(tmp_path / "home", WANDB_MODE="offline", WANDB_API_KEY=SENTINEL)
    result = run_cli(["train", *args], launcher=launcher, base_env=env, timeout=300)

    run_files = list((run_dir / "wandb").glob("*run-*/run-*.wandb"))
    assert len(run_files) == 1, run_files  # one W&B run for two processes
    assert "wandb sync" in result.stdout
    run = read_wandb_run(run_files[0])
    state = json.loads(sorted((run_dir / "checkpoints").glob("step_*"))[-1].joinpath("state.json").read_text())
    assert run["id"] == state["tracker_run_id"]

    assert run["config"]["train"]["max_steps"] == 8 and run["config"]["launch"]["world_size"] == 2
    assert run["config"]["data"]["dir"] == str(idx)
    train_rows = [h for h in run["history"] if "train/loss" in h]
    assert [h["_step"] for h in train_rows] == [4, 8]
    assert all(h["train/lr"] > 0 and h["train/images_per_s"] > 0 for h in train_rows)
    final = run["history"][-1]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert final["_step"] == 8
    assert final["test/accuracy"] == pytest.approx(metrics[-1]["test_accuracy"])
    assert final["val/loss"] == pytest.approx(metrics[-1]["val_loss"])
    assert final["test/per_class_accuracy/T-shirt_top"] == pytest.approx(metrics[-1]["test_per_class_accuracy"][0])
    assert final["test/misclassified"]["_type"] == "table-file" and final["test/misclassified"]["nrows"] > 0
    assert final["test/samples"]["count"] == 32
    assert final["test/confusion_matrix_table"]["nrows"] == 100
    for picture in ("curves", "confusion_matrix", "samples"):
        assert final[f"report/{picture}"]["_type"] == "image-file"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run["summary"]["test/accuracy"] == summary["test_accuracy"] and run["summary"]["world_size"] == 2
    assert run["artifacts"]["model"] == ["model.json", "model.safetensors"]  # tracking.log_model=true
    media = run_files[0].parent / "files" / final["test/misclassified"]["path"]
    table = json.loads(media.read_text())
    assert table["columns"][:6] == ["index", "image", "true", "predicted", "confidence", "p_true"]
    assert all(row[2] != row[3] and abs(sum(row[6:]) - 1) < 1e-3 for row in table["data"])

    for name in ("curves.png", "confusion_matrix.png", "samples.png", "report.md"):
        assert (run_dir / name).is_file()
    assert_no_secret(run_dir, result.stdout, result.stderr)


def no_wandb_settings(monkeypatch, tmp_path):
    """No WANDB_MODE, no key, a HOME without ~/.netrc (W&B must go offline by itself), no stdin for a prompt.
    (Not WANDB_MODE=offline: wandb reads its environment once per process, at its first init.)"""
    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))  # restored after the test
    monkeypatch.setattr("sys.stdin", None)  # a prompt would fail loudly


@pytest.mark.slow
def test_a_key_but_no_route_to_the_server_logs_offline(tmp_path):
    """A compute node without internet: online, wandb would wait ~90 s and the run would end untracked."""
    idx = fashion_slice(tmp_path / "idx", n_train=600, n_test=200)
    run_dir = tmp_path / "run"
    env = clean_env(tmp_path / "home", WANDB_API_KEY=SENTINEL, WANDB_BASE_URL="http://127.0.0.1:9")  # port 9: closed
    result = run_cli(["train", *train_args(idx, run_dir, "train.max_steps=4")], base_env=env, timeout=300)
    assert "W&B server http://127.0.0.1:9 unreachable" in result.stdout and "wandb sync" in result.stdout
    run = read_wandb_run(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    assert [h["_step"] for h in run["history"] if "train/loss" in h] == [4] and run["exit_code"] == 0
    assert_no_secret(run_dir, result.stdout, result.stderr)


def test_no_credentials_runs_offline_and_resume_continues_the_run(tmp_path, monkeypatch, capsys):
    no_wandb_settings(monkeypatch, tmp_path)
    cfg = wandb_config(tmp_path / "run")
    run_ids = []
    for step in (4, 8):  # a fresh run, then a resume with the id train.py read from the checkpoint
        tracker = tracking.start(cfg, tmp_path / "run", run_ids[0] if run_ids else None)
        assert isinstance(tracker, tracking.WandbTracker)
        tracker.log({"train/loss": 1.0 / step, "train/lr": 0.1, "train/images_per_s": 100.0}, step=step)
        tracker.finish({"test_accuracy": 0.5})
        run_ids.append(tracker.run_id)
        out = capsys.readouterr().out
        assert "no W&B credentials" in out and "wandb sync " in out
        time.sleep(1.1)  # W&B names the folder offline-run-<second>-<id>: the resume must get its own
    assert run_ids[0] == run_ids[1]
    first, second = (read_wandb_run(p) for p in sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")))
    assert first["id"] == second["id"] == run_ids[0]
    assert [h["_step"] for h in second["history"] if "train/loss" in h] == [8]
    assert first["exit_code"] == second["exit_code"] == 0 and not first["preempting"]


@pytest.mark.parametrize("preempted, exit_code", [(True, 75), (False, 1)])
def test_an_early_stop_is_marked_preempting_only_when_it_will_resume(tmp_path, monkeypatch, preempted, exit_code):
    """W&B's contract: mark_preempting() and a non-zero exit code show a run as preempted (to be resumed); a run
    stopped by a non-finite loss is a plain failure."""
    no_wandb_settings(monkeypatch, tmp_path)
    tracker = tracking.start(wandb_config(tmp_path / "run"), tmp_path / "run", None)
    tracker.log({"train/loss": 1.0, "train/lr": 0.1}, step=4)
    tracker.finish(None, preempted=preempted)
    run = read_wandb_run(next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")))
    assert run["preempting"] is preempted and run["exit_code"] == exit_code


def wandb_config(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)  # the run folder train() makes before tracking starts
    return config.load(None, ["tracking.backend=wandb", f"run.dir={tmp_path}", "data.name=fashion_mnist"])


def test_disabled_mode_means_no_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = wandb_config(tmp_path)
    tracker = tracking.start(cfg, tmp_path, "abc12345")
    assert type(tracker) is tracking.Tracker and tracker.run_id == "abc12345"  # kept for a later resume
    assert not (tmp_path / "wandb").exists()


def test_wandb_failures_warn_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import wandb
    no_wandb_settings(monkeypatch, tmp_path)  # offline by our own choice: wandb read its environment long ago

    def broken_init(*args, **kwargs):
        raise RuntimeError("no service")
    cfg = wandb_config(tmp_path)
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = tracking.start(cfg, tmp_path, None)
    assert type(tracker) is tracking.Tracker and len(tracker.run_id) == 8  # the null tracker: nothing to finish
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish(None)
    assert capsys.readouterr().err.count("warning: wandb failed during init (RuntimeError: no service)") == 1

    # A log that fails mid-run: one warning, later calls do nothing, finish does not raise.
    monkeypatch.setattr(wandb, "init", real_init)
    tracker = tracking.start(cfg, tmp_path, "abc12345")
    assert isinstance(tracker, tracking.WandbTracker)
    real_finish = tracker.run.finish

    def broken_log(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(tracker.run, "log", broken_log)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0}, step=step)
    test = metrics.SplitMetrics(1.0, 0.5, 2, [0.5] * 10, [[0] * 10] * 10)
    tracker.log_eval(metrics.EvalRecord(1, 3, 1.0, 0.5, {"test": test}, 1.0))
    tracker.finish({"test_accuracy": 0.5})
    err = capsys.readouterr().err
    assert err.count("warning: wandb failed") == 1 and "disk full" in err
    real_finish()  # the test's own clean-up: the broken tracker leaves its run alone


def no_job_ids(env: dict) -> dict:
    """No SLURM or torchrun job around the test's run (they set the default W&B group)."""
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}


@pytest.mark.slow
def test_the_dashboard_ranks_by_the_best_and_names_each_number_once(tmp_path):
    """define_metric: val accuracy's summary is its max and val loss's its min, with their steps, charts against
    global_step; each final number has one name (test/accuracy, not also test_accuracy); no local path in the
    summary or the artifacts' metadata; job_type train, tracking.init_kwargs reach wandb.init; the best model
    is an artifact version with the alias best beside the final one's latest and final; `eval` logs a run of
    its own that names that artifact."""
    idx = fashion_slice(tmp_path / "idx", n_train=800, n_test=300)
    run_dir = tmp_path / "run"
    env = no_job_ids(clean_env(tmp_path / "home", WANDB_MODE="offline", WANDB_API_KEY=SENTINEL))
    result = run_cli(["train", *train_args(
        idx, run_dir, "train.max_steps=0", "train.epochs=3", "tracking.log_model=true",
        "tracking.init_kwargs={notes: from the test}")], base_env=env, timeout=300)
    run = read_wandb_run(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))

    assert run["metrics"]["val/accuracy"] == {"step_metric": "global_step", "hidden": False, "summary": ["max"]}
    assert run["metrics"]["val/loss"]["summary"] == ["min"] and run["metrics"]["global_step"]["hidden"]
    assert all(run["metrics"][s]["step_metric"] == "global_step" for s in ("train/*", "val/*", "test/*", "epoch"))
    assert all(h["global_step"] == h["_step"] for h in run["history"])
    # The names a sweep's metric.name and compare --metric take are the ones a real run logs, and every shipped
    # sweep file names one of them (else `wandb agent`'s bayes search and early_terminate never see it).
    logged = {key for h in run["history"] for key in h} | set(run["summary"])
    assert set(sweeps.LOGGED_METRICS) <= logged
    for sweep_file in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        assert yaml.safe_load(sweep_file.read_text())["metric"]["name"] in logged, sweep_file

    evals = [r for r in rundir.read_jsonl(run_dir / "metrics.jsonl") if "val_accuracy" in r]
    assert len(evals) == 3
    best_acc, best_loss = max(evals, key=lambda r: r["val_accuracy"]), min(evals, key=lambda r: r["val_loss"])
    summary, saved = run["summary"], json.loads((run_dir / "summary.json").read_text())
    assert summary["val/accuracy"] == {"max": best_acc["val_accuracy"]}
    assert summary["val/accuracy_best_step"] == best_acc["global_step"]
    assert summary["val/loss"] == {"min": best_loss["val_loss"]}
    assert summary["val/loss_best_step"] == best_loss["global_step"]
    assert summary["test/accuracy"] == saved["test_accuracy"] and summary["best/global_step"] == saved["best"]["global_step"]
    assert not {"test_accuracy", "test_loss", "test_count", "val_accuracy", "train_seconds", "epochs", "best"} & set(summary)
    assert summary["train/seconds"] == saved["train_seconds"] and summary["epoch"] == saved["epochs"]
    assert summary["data_source"] == "idx"

    assert (run["job_type"], run["group"], run["notes"]) == ("train", "", "from the test")
    versions = [a for a in run["logged_artifacts"] if a["type"] == "model"]
    assert {v["name"] for v in versions} == {f"model-{run['id']}"}
    # wandb adds latest to every version it logs; the server keeps it on the newest: the final one
    assert [sorted(v["aliases"]) for v in versions] == [["best", "latest"], ["final", "latest"]]
    assert all(v["files"] == ["model.json", "model.safetensors"] for v in versions)
    same_weights = (run_dir / "best" / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    assert (versions[0]["digest"] == versions[1]["digest"]) is same_weights
    assert str(tmp_path) not in json.dumps([summary, [v["metadata"] for v in versions]])

    # An evaluation of the best model is a W&B run of its own (job_type eval) that names the model's artifact
    # (offline wandb cannot use_artifact: online, the same reference becomes the lineage link).
    evaluated = run_cli(["eval", str(run_dir), "--best", "--json", f"data.dir={idx}",
                        "data.source=idx", "tracking.backend=wandb"], base_env=env, timeout=300)
    (eval_file,) = [p for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb") if run["id"] not in p.name]
    eval_run = read_wandb_run(eval_file)
    assert eval_run["job_type"] == "eval" and eval_run["config"]["model"]["artifact"] == f"model-{run['id']}:best"
    (line,) = [x for x in evaluated.stdout.splitlines() if x.startswith("{")]
    assert eval_run["summary"]["test/accuracy"] == json.loads(line)["accuracy"] and eval_run["exit_code"] == 0
    assert_no_secret(run_dir, result.stdout, result.stderr, evaluated.stdout, evaluated.stderr)


def test_a_sweep_point_gets_job_type_sweep_and_a_torchrun_job_its_group(tmp_path, monkeypatch):
    no_wandb_settings(monkeypatch, tmp_path)
    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    run_dir = tmp_path / "sweep" / "point_000"
    run_dir.mkdir(parents=True)
    (run_dir / rundir.SWEEP_POINT).write_text("{}")  # what `mnist-dist sweep` writes before it trains a point
    tracker = tracking.start(wandb_config(run_dir), run_dir, None)
    tracker.finish({"test_accuracy": 0.5})
    run = read_wandb_run(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    assert (run["job_type"], run["group"]) == ("sweep", "job42")


def test_init_kwargs_may_not_take_the_run_folders_own_arguments_and_unknown_ones_are_left_out(tmp_path, monkeypatch,
                                                                                              capsys):
    with pytest.raises(config.ConfigError, match="tracking.init_kwargs may not set id, resume"):
        config.load(None, ["tracking.init_kwargs={id: x, resume: never}"])
    no_wandb_settings(monkeypatch, tmp_path)
    cfg = config.load(None, ["tracking.backend=wandb", f"run.dir={tmp_path}", "data.name=fashion_mnist",
                             "tracking.init_kwargs={job_type: ablation, no_such_argument: 1}"])
    tracker = tracking.start(cfg, tmp_path, None)
    tracker.finish({"test_accuracy": 0.5})
    assert "tracking.init_kwargs: wandb.init takes no no_such_argument; left out" in capsys.readouterr().err
    assert read_wandb_run(next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")))["job_type"] == "ablation"
