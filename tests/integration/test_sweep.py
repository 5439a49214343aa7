"""Sweeps without a W&B server: a sweep file in W&B's format runs as a local grid (one point after another, a
failed point not stopping the others) and as a real SLURM job array (one point per task), each point in its own
complete run folder; `compare` ranks the points by the sweep's metric; and `wandb agent` would build the command
line `accelerate launch train_accel.py --config debug key=value ...` (wandb's own helpers) that our CLI reads,
keeping the run id the agent gives (WANDB_RUN_ID)."""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from mnist_dist import cli, config
from mnist_dist.commands import sweep
from mnist_dist.config import sweeps
from mnist_dist.outputs import tracking
from mnist_dist.config import ConfigError

from helpers import (
    ENDED,
    JOB_TIMEOUT_S,
    ROOT,
    VENV_BIN,
    gone,
    popen,
    read_wandb_run,
    run_cli,
    submit,
    usr1_and_wait_for_requeue,
)

GRID = ROOT / "configs" / "sweeps" / "debug_grid.yaml"


def tiny_sweep(tmp_path: Path, idx: Path, models: list[str]) -> Path:
    """debug_grid.yaml's grid (lr x batch size) on the tiny IDX set, plus model.name values (one may not exist)."""
    raw = yaml.safe_load(GRID.read_text())
    raw["parameters"] = {"train.lr": {"values": [0.001, 0.01]}, "model.name": {"values": models}}
    raw["command"] = ["${env}", "accelerate", "launch", "${program}", "--config", "debug", "data.source=idx",
                      f"data.dir={idx}", "data.name=mnist", "data.val_size=200", "train.max_steps=12",
                      "train.progress=false", "${args_no_hyphens}"]
    path = tmp_path / "tiny_grid.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def best_val(run_dir: Path) -> float:
    return max(json.loads(line)["val_accuracy"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def check_compare(sweep_dir: Path, n_points: int, failed: set[str] = frozenset()):
    out = run_cli(["compare", str(sweep_dir)]).stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "run", "train.lr", "model.name"], out
    rows = [line.split() for line in lines[1:1 + n_points]]
    ranked = [r[1] for r in rows]
    done = sorted((d.name for d in sweep_dir.glob("point_*") if (d / "summary.json").is_file()),
                  key=lambda name: (-best_val(sweep_dir / name), name))
    assert ranked[:len(done)] == done, out  # ranked by the sweep's metric, best first
    assert {r[1] for r in rows if r[-1] == "failed"} == set(failed)
    assert (sweep_dir / "compare.png").stat().st_size > 5000
    return out


def test_the_sweep_file_parses_and_a_grid_has_every_point():
    sweep = sweeps.load(GRID)
    assert (sweep.method, sweep.metric, sweep.maximize, sweep.base_args) == ("grid", "val/accuracy", True,
                                                                             ["--config", "debug",
                                                                              "tracking.backend=wandb"])
    assert [sweeps.overrides(p) for p in sweep.points()] == [
        ["train.lr=0.001", "train.per_device_batch_size=32"], ["train.lr=0.001", "train.per_device_batch_size=64"],
        ["train.lr=0.01", "train.per_device_batch_size=32"], ["train.lr=0.01", "train.per_device_batch_size=64"]]


def test_random_points_are_seeded_and_bad_files_are_one_line(tmp_path):
    raw = {"method": "random", "metric": {"name": "val/loss", "goal": "minimize"}, "command": ["${args_no_hyphens}"],
           "parameters": {"train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                          "train.seed": {"distribution": "int_uniform", "min": 0, "max": 9}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    sweep = sweeps.load(tmp_path / "r.yaml")
    a, b = sweep.points(5, seed=1), sweep.points(5, seed=1)
    assert a == b and len({p["train.lr"] for p in a}) == 5 and all(1e-4 <= p["train.lr"] <= 1e-1 for p in a)
    for broken, words in [({**raw, "method": "bayes"}, "method 'bayes' needs W&B's sweep server"),
                          ({**raw, "early_terminate": {"type": "hyperband"}}, "`wandb sweep"),
                          ({**raw, "metric": {"name": "val_loss"}}, "did you mean 'val/loss'?"),
                          ({**raw, "parameters": {"train.lrr": {"values": [1]}}}, "'train.lrr' is not a config key"),
                          ({**raw, "command": ["${args}"]}, "${args_no_hyphens}")]:
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError, match=re.escape(words)):
            sweeps.load(tmp_path / "b.yaml")


def test_the_wandb_agent_command_line_is_read_by_our_cli():
    """What `wandb agent` runs for one point, built with wandb's own helpers and its macro expansion
    (wandb/wandb_agent.py: each ${macro} word is replaced by that list of words)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    raw = yaml.safe_load(GRID.read_text())
    command = sweep_utils.create_sweep_command(raw["command"])
    macros = sweep_utils.create_sweep_command_args(
        {"args": {"train.lr": {"value": 0.01}, "train.per_device_batch_size": {"value": 64}}})
    macros.update(env=["/usr/bin/env"], program=[raw["program"]], interpreter=["python"])
    words = [w for c in command for w in (macros.get(c[2:-1]) or [] if c.startswith("${") else [c])]
    assert words == ["/usr/bin/env", "accelerate", "launch", "train_accel.py", "--config", "debug",
                     "tracking.backend=wandb", "train.lr=0.01", "train.per_device_batch_size=64"]
    parser, commands = cli.build_parser()
    args = commands["train"].parse_intermixed_args(words[4:])
    cfg = config.load(args.config, args.overrides)
    assert (cfg.train.lr, cfg.train.per_device_batch_size, cfg.train.max_steps) == (0.01, 64, 40)  # debug's 40
    assert cfg.tracking.backend == "wandb"


def test_under_an_agent_the_run_keeps_the_agents_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "agent123")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = config.load(None, ["tracking.backend=wandb", f"run.dir={tmp_path}"])
    assert tracking.start(cfg, tmp_path).run_id == "agent123"
    assert tracking.start(cfg, tmp_path, resume_run_id="ckpt0001").run_id == "ckpt0001"  # a resume wins


@pytest.mark.slow
def test_a_local_sweep_runs_every_point_and_a_failed_one_does_not_stop_the_others(tiny_idx, tmp_path):
    path = tiny_sweep(tmp_path, tiny_idx, ["cnn_bn", "no_such_model"])
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["sweep", str(path), "--dir", str(sweep_dir)], check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 point(s) failed: [1, 3]" in proc.stderr
    for i in (0, 2):
        run_dir = sweep_dir / f"point_{i:03d}"
        assert {"config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "report.md"} <= \
            {p.name for p in run_dir.iterdir()}
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["train"]["lr"] == [0.001, 0.01][i // 2] and saved["tracking"]["group"] == "sweep"
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        scalars = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and k != "early_stop"}
        # What metric.name (W&B's names) and compare --metric (these, or W&B's) accept.
        assert {name.replace("/", "_", 1) for name in sweeps.LOGGED_METRICS} <= scalars
    check_compare(sweep_dir, 4, failed={"point_001", "point_003"})
    # Run again: the finished points are skipped, not trained twice.
    again = run_cli(["sweep", str(path), "--dir", str(sweep_dir), "--index", "0"]).stdout
    assert "point 0 finished earlier" in again


@pytest.mark.slurm
@pytest.mark.slow
def test_a_grid_sweep_runs_as_a_slurm_job_array(slurm, tmp_path):
    sweep_dir = tmp_path / "grid_k7q"  # the group: also in every path of the run, so only the run's field tells
    job_id = submit(slurm, tmp_path, str(GRID), "--dir", str(sweep_dir), script="slurm/sweep.sbatch",
                    options=["--array=0-3"])
    for task in range(4):
        info = slurm.wait_for(f"{job_id}_{task}", ENDED, JOB_TIMEOUT_S)
        log = Path(info["StdOut"]).read_text()
        assert info["JobState"] == "COMPLETED", log
    for task in range(4):
        summary = json.loads((sweep_dir / f"point_{task:03d}" / "summary.json").read_text())
        assert summary["global_step"] == 40 and summary["test_count"] == 10000
        run_files = list((sweep_dir / f"point_{task:03d}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == 1  # one W&B run per point, offline without credentials
        wandb_run = read_wandb_run(run_files[0])
        assert wandb_run["group"] == sweep_dir.name  # the run's group field: the sweep folder's name, exactly
        assert wandb_run["config"]["tracking"]["group"] == sweep_dir.name
    out = run_cli(["compare", str(sweep_dir)]).stdout
    print(out)
    assert out.splitlines()[0].split()[:4] == ["rank", "run", "train.lr", "train.per_device_batch_size"]
    ranked = [line.split()[1] for line in out.splitlines()[1:5]]
    assert ranked == sorted(ranked, key=lambda name: (-best_val(sweep_dir / name), name))


def test_bad_random_bounds_are_one_line(tmp_path):
    for spec, words in [({"distribution": "int_uniform", "min": 0.5, "max": 3}, "both integers"),
                        ({"distribution": "log_uniform_values", "min": 0, "max": 1}, "min > 0"),
                        ({"distribution": "uniform", "min": 2, "max": 1}, "min < max")]:
        raw = {"method": "random", "metric": {"name": "val/loss"}, "command": ["${args_no_hyphens}"],
               "parameters": {"train.lr": spec}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=words):
            sweeps.load(tmp_path / "r.yaml")


def test_compare_draws_values_that_are_dicts_or_missing(tmp_path):
    from mnist_dist.outputs import plots
    rows = [{"run": "a", "values": {"model.kwargs": {"width": 4}}, "metric": 0.5, "train_seconds": 1.0},
            {"run": "b", "values": {"model.kwargs": None}, "metric": 0.6, "train_seconds": 2.0}]
    assert plots.comparison(rows, ["model.kwargs"], "val_accuracy", tmp_path / "c.png").stat().st_size > 1000


def test_a_sweep_folder_holds_one_sweep(tmp_path, capsys):
    (tmp_path / "sweep.yaml").write_text("another: sweep\n")
    assert cli.main(["sweep", str(GRID), "--dir", str(tmp_path)]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.slurm
@pytest.mark.slow
def test_a_preempted_array_task_requeues_itself_and_resumes_its_point(slurm, tmp_path):
    """USR1 to an array task's batch shell: the sweep passes it to the training, which checkpoints and requeues
    the task by its own id; released, the task runs the sweep again, which resumes that point."""
    raw = yaml.safe_load(GRID.read_text())
    raw["parameters"] = {"train.lr": {"values": [0.003]}}
    raw["command"] = ["${program}", "--config", "debug", "train.max_steps=200", "checkpoint.every_steps=10",
                      "train.progress=false", "${args_no_hyphens}"]
    path = tmp_path / "one_point.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep_dir = tmp_path / "sweep"
    job_id = submit(slurm, tmp_path, str(path), "--dir", str(sweep_dir), script="slurm/sweep.sbatch",
                    options=["--array=0"])
    task = f"{job_id}_0"
    run_dir = sweep_dir / "point_000"
    step, log = usr1_and_wait_for_requeue(slurm, task, run_dir)
    assert f"requeue of SLURM job {task}: ok" in log
    slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")
    info = slurm.wait_for(task, ENDED, JOB_TIMEOUT_S, "after release")
    log = Path(info["StdOut"]).read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert f"resumed from {run_dir}/checkpoints/step_{step:08d}" in log
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 200


def test_a_misspelled_metric_is_refused_before_any_point_runs(tmp_path, capsys):
    """metric.name val_acuracy was accepted, and compare ranked every point by "-": now one line, with the
    closest recorded metric, and no sweep folder made; compare's --metric is checked the same way."""
    raw = yaml.safe_load(GRID.read_text())
    raw["metric"]["name"] = "val_acuracy"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli(["sweep", str(tmp_path / "typo.yaml"), "--dir", str(tmp_path / "sweep")], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "metric.name 'val_acuracy' is not a metric runs log to W&B; did you mean 'val/accuracy'?" in proc.stderr
    assert not (tmp_path / "sweep").exists()
    assert cli.main(["compare", str(tmp_path), "--metric", "test_acc"]) == 2
    assert "--metric 'test_acc' is not a metric runs log to W&B; did you mean 'test/accuracy'?" in capsys.readouterr().err


def test_count_takes_the_first_points_of_a_grid(tmp_path, capsys):
    """--count 2 on a 1,000-point grid ran all 1,000: it is the first 2 (the order --list shows)."""
    raw = yaml.safe_load(GRID.read_text())
    raw["parameters"] = {"train.seed": {"values": list(range(100))}, "train.lr": {"values": [0.1 * k for k in
                                                                                            range(1, 11)]}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["sweep", str(tmp_path / "big.yaml"), "--list"]) == 0
    every = capsys.readouterr().out.splitlines()
    assert len(every) == 1000
    assert cli.main(["sweep", str(tmp_path / "big.yaml"), "--list", "--count", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == every[:2]
    assert cli.main(["sweep", str(tmp_path / "big.yaml"), "--index", "2", "--count", "2"]) == 2
    assert "has points 0-1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    assert "a grid runs its first COUNT" in capsys.readouterr().out


def test_kill_9_of_a_sweep_kills_its_point_and_the_next_run_records_it_and_reruns(tiny_idx, tmp_path):
    """The point runs under a launcher whose worker sits in a session of its own (as torchrun's do); `kill -9` of
    the sweep alone used to leave both running and the point's record stale. Now both die, the record says
    running with a pid that is gone, and the next run of the sweep marks it killed and runs it again."""
    raw = yaml.safe_load(GRID.read_text())
    raw["parameters"] = {"train.lr": {"values": [0.01]}}
    raw["command"] = ["${program}", "--config", "debug", "data.source=idx", f"data.dir={tiny_idx}", "data.name=mnist",
                      "data.val_size=200", "train.max_steps=6", "train.progress=false", "${args_no_hyphens}"]
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(raw))
    launcher = tmp_path / "launcher.py"
    launcher.write_text("import os, subprocess, sys, time\n"
                        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
                        "start_new_session=True)\n"
                        "open(os.environ['PIDS'] + '.tmp', 'w').write(f'{os.getpid()} {worker.pid}')\n"
                        "os.rename(os.environ['PIDS'] + '.tmp', os.environ['PIDS'])\n"
                        "time.sleep(300)\n")
    sweep_dir, pids_file = tmp_path / "sweep", tmp_path / "pids"
    sweep_proc = popen([str(VENV_BIN / "mnist-dist"), "sweep", str(tmp_path / "one.yaml"), "--dir", str(sweep_dir),
                        "--launcher", f"{sys.executable} {launcher}"], env={"PIDS": str(pids_file)})
    point_record = sweep_dir / "point_000" / "sweep_point.json"
    pids = []
    try:
        deadline = time.monotonic() + 60
        while not (pids_file.exists() and b"running" in point_record.read_bytes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p) for p in pids_file.read_text().split()]
        record = json.loads(point_record.read_text())
        assert record["status"] == "running" and record["pid"] == pids[0]
        os.kill(sweep_proc.pid, signal.SIGKILL)
        sweep_proc.wait()
        deadline = time.monotonic() + 20
        while not all(map(gone, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(map(gone, pids)), f"orphans left running: {[p for p in pids if not gone(p)]}"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    again = run_cli(["sweep", str(tmp_path / "one.yaml"), "--dir", str(sweep_dir)])
    assert f"point 0 was killed with its sweep (process {pids[0]} is gone); running it again" in again.stdout
    record = json.loads((sweep_dir / "point_000" / "sweep_point.json").read_text())
    assert (record["status"], record["exit_code"]) == ("finished", 0)
    assert json.loads((sweep_dir / "point_000" / "summary.json").read_text())["global_step"] == 6


def test_a_watchdog_that_died_early_does_not_end_the_sweep(capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)
    sweep._tell(write_end, "done\n")  # EPIPE: warned, not raised
    os.close(write_end)
    assert "the watchdog is gone" in capsys.readouterr().err
