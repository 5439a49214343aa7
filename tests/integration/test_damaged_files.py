"""Every damaged file of a run folder is one line, for every command that reads it (train on resume included).

A table of damages (broken JSON or YAML, a JSON or YAML file of the wrong type, a truncated model.json, metrics
records of the wrong shape, a junk or broken sweep point) crossed with the commands that read each file (report,
eval, predict, export, compare on run folders and on a sweep folder, convert's output path). Each case must end
with exit code 2 and exactly one stderr line that names the damaged file, with no traceback. The same folder
undamaged works with every command, so each failure is the damage's doing.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_dist import cli, config, models
from mnist_dist.run import artifact, rundir

from helpers import ROOT, run_cli, tiny_overrides


def record(epoch: int, step: int) -> dict:
    """A metrics.jsonl line as training writes it."""
    confusion = (torch.eye(10, dtype=torch.long) * 25 + 1).tolist()
    return {"epoch": epoch, "global_step": step, "train_loss": 1.0 / epoch, "val_loss": 1.1 / epoch,
            "val_accuracy": 0.4 + 0.1 * epoch, "test_loss": 1.2 / epoch, "test_accuracy": 0.35 + 0.1 * epoch,
            "test_count": 300, "test_confusion": confusion, "test_per_class_accuracy": [0.9] * 10,
            "train_seconds": 1.5 * epoch}


@pytest.fixture(scope="module")
def good_run(tiny_idx, tmp_path_factory) -> Path:
    """A run folder with every file a finished run leaves (a small untrained MLP: reading, not accuracy, is tested),
    and a 28x28 picture for predict."""
    run_dir = tmp_path_factory.mktemp("damaged") / "run"
    run_dir.mkdir()
    torch.manual_seed(0)
    artifact.save_model(run_dir, models.build("mlp_128").eval(), "mlp_128", {}, "mnist", 0.1307, 0.3081)
    cfg = config.load(None, tiny_overrides(tiny_idx, run_dir, "model.name=mlp_128", "model.kwargs={}"))
    (run_dir / rundir.CONFIG).write_text(config.dump(cfg))
    (run_dir / rundir.METRICS).write_text("".join(json.dumps(record(e, 10 * e)) + "\n" for e in (1, 2)))
    (run_dir / rundir.SUMMARY).write_text(json.dumps({"model": "mlp_128", "test_accuracy": 0.55, "test_count": 300,
                                                      "global_step": 20, "epochs": 2, "train_seconds": 3.0}))
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[6:22, 12:16] = 255
    Image.fromarray(image.numpy()).save(run_dir.parent / "one.png")
    return run_dir


def sweep_of(run_dir: Path, folder: Path) -> Path:
    """A sweep folder as `mnist-dist sweep` leaves it: the sweep file, a finished point, a point not run yet."""
    folder.mkdir()
    shutil.copy(ROOT / "configs/sweeps/debug_grid.yaml", folder / rundir.SWEEP_FILE)
    shutil.copytree(run_dir, folder / "point_000")
    (folder / "point_000" / rundir.SWEEP_POINT).write_text(json.dumps(
        {"index": 0, "overrides": ["train.lr=0.001", "train.per_device_batch_size=32"], "exit_code": 0}))
    (folder / "point_001").mkdir()
    (folder / "point_001" / rundir.SWEEP_POINT).write_text(json.dumps(
        {"index": 1, "overrides": ["train.lr=0.001", "train.per_device_batch_size=64"], "exit_code": None}))
    return folder


# ----------------------------------------------------------------------------- the damages
# name: (file relative to the folder the command is given, what it then holds)

def truncated_model_json(run_dir: Path) -> bytes:
    text = (run_dir / rundir.MODEL_META).read_bytes()
    return text[: len(text) // 2]


def metrics_with(line: str):
    return lambda run_dir: (json.dumps(record(1, 10)) + "\n" + line + "\n" + json.dumps(record(2, 20)) + "\n").encode()


no_epoch = {k: v for k, v in record(1, 10).items() if k != "epoch"}
bad_confusion = {**record(1, 10), "test_confusion": [[1, 2]]}
bad_per_class = {**record(1, 10), "test_per_class_accuracy": ["high"] * 10}
DAMAGES = {
    "summary_broken": (rundir.SUMMARY, b'{"test_accuracy": 0.5, '),
    "summary_list": (rundir.SUMMARY, b"[0.5, 0.6]"),
    "summary_scalar": (rundir.SUMMARY, b"5"),
    "summary_not_utf8": (rundir.SUMMARY, b"\xff\xfe{}"),
    "summary_text_number": (rundir.SUMMARY, b'{"test_accuracy": "high", "test_count": 300}'),
    "model_json_truncated": (rundir.MODEL_META, truncated_model_json),
    "model_json_list": (rundir.MODEL_META, b"[]"),
    "model_json_scalar": (rundir.MODEL_META, b"5"),
    "metrics_no_epoch": (rundir.METRICS, metrics_with(json.dumps(no_epoch))),
    "metrics_scalar_line": (rundir.METRICS, metrics_with("5")),
    "metrics_bad_confusion": (rundir.METRICS, metrics_with(json.dumps(bad_confusion))),
    "metrics_bad_per_class": (rundir.METRICS, metrics_with(json.dumps(bad_per_class))),
    "metrics_list_line": (rundir.METRICS, metrics_with("[1, 2]")),
    "metrics_broken_line": (rundir.METRICS, metrics_with('{"epoch": 1, "glob')),
    "config_broken": (rundir.CONFIG, b"data: {name: mnist\ntrain: [\n"),
    "config_list": (rundir.CONFIG, b"- data\n- train\n"),
    "config_scalar": (rundir.CONFIG, b"5\n"),
    "config_section_scalar": (rundir.CONFIG, b"data: 5\n"),
    "config_unknown_key": (rundir.CONFIG, b"data: {name: mnist, colour: blue}\n"),
    # In a sweep folder: the damage is in a point (or in a folder that is not one).
    "point_config_broken": ("point_000/" + rundir.CONFIG, b"train: {lr: [\n"),
    "point_metrics_scalar_line": ("point_000/" + rundir.METRICS, metrics_with("5")),
    "point_summary_list": ("point_000/" + rundir.SUMMARY, b"[]"),
    "point_record_broken": ("point_001/" + rundir.SWEEP_POINT, b'{"index": 1, "overr'),
    "point_record_list": ("point_001/" + rundir.SWEEP_POINT, b"[1]"),
    "point_record_bad_overrides": ("point_001/" + rundir.SWEEP_POINT, b'{"overrides": "train.lr=1"}'),
    "junk_folder_config_broken": ("notes/" + rundir.CONFIG, b"{{{\n"),
    "sweep_file_broken": ("./" + rundir.SWEEP_FILE, b"method: grid\nparameters: {\n"),
    "sweep_file_list": ("./" + rundir.SWEEP_FILE, b"- grid\n"),
}
RUN_FILES = [d for d, (f, _) in DAMAGES.items() if "/" not in f]
SWEEP_FILES = [d for d, (f, _) in DAMAGES.items() if "/" in f]
READS = {  # command: the damages of the files it reads
    "report": RUN_FILES,
    "eval": [d for d in RUN_FILES if d.startswith(("model_json", "config"))],
    "predict": [d for d in RUN_FILES if d.startswith("model_json")],
    "export": [d for d in RUN_FILES if d.startswith("model_json")],
    # compare shows a config and the summary's values as they are: a section or key that no Config accepts, or a
    # number written as text, is still shown.
    "compare": [d for d in RUN_FILES if not d.startswith("model_json") and d not in (
        "config_section_scalar", "config_unknown_key", "summary_text_number")],
    "compare_sweep": SWEEP_FILES,
}


def argv(command: str, folder: Path) -> list[str]:
    return {"report": ["report", str(folder)], "eval": ["eval", str(folder)],
            "predict": ["predict", str(folder), str(folder.parent / "one.png")],
            "export": ["export", str(folder), "--format", "torchscript", "--out", str(folder.parent / "m.pt")],
            "compare": ["compare", str(folder), "--png", str(folder.parent / "c.png")],
            "compare_sweep": ["compare", str(folder), "--png", str(folder.parent / "c.png")]}[command]


def damaged_copy(good_run: Path, tmp_path: Path, command: str, damage: str) -> tuple[Path, Path]:
    """(the folder to give the command, the damaged file) in a copy of the good run (or of a sweep of it)."""
    (tmp_path / "one.png").write_bytes((good_run.parent / "one.png").read_bytes())
    folder = sweep_of(good_run, tmp_path / "sweep") if command == "compare_sweep" else \
        Path(shutil.copytree(good_run, tmp_path / "run"))
    name, content = DAMAGES[damage]
    path = folder / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content(folder) if callable(content) else content)
    return folder, path


def one_line_naming(err: str, path: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0], (str(path), lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- the table


CASES = [(command, damage) for command, damages in READS.items() for damage in damages]


@pytest.mark.parametrize("command, damage", CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_a_damaged_file_is_one_line_naming_it(good_run, tmp_path, capsys, command, damage):
    folder, path = damaged_copy(good_run, tmp_path, command, damage)
    capsys.readouterr()
    assert cli.main(argv(command, folder)) == 2
    line = one_line_naming(capsys.readouterr().err, path)
    assert line.startswith(f"mnist-dist {argv(command, folder)[0]}: error: "), line


@pytest.mark.parametrize("command", sorted(READS))
def test_the_undamaged_folder_works_with_every_command(good_run, tmp_path, command):
    """The control: through the installed script, as a user runs it."""
    folder, _ = damaged_copy(good_run, tmp_path, command, "summary_broken")
    (folder / ("point_000" if command == "compare_sweep" else "") / rundir.SUMMARY).write_bytes(
        (good_run / rundir.SUMMARY).read_bytes())
    proc = run_cli(argv(command, folder), timeout=120)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, damage", [("report", "summary_broken"), ("eval", "config_list"),
                                             ("predict", "model_json_truncated"), ("export", "model_json_list"),
                                             ("compare", "metrics_no_epoch"), ("compare_sweep", "point_record_broken")])
def test_the_installed_script_prints_the_same_one_line(good_run, tmp_path, command, damage):
    folder, path = damaged_copy(good_run, tmp_path, command, damage)
    proc = run_cli(argv(command, folder), check=False, timeout=120)
    assert proc.returncode == 2
    one_line_naming(proc.stderr, path)


# ----------------------------------------------------------------------------- convert's output folder


@pytest.mark.parametrize("case", ["parent_is_a_file", "under_proc", "empty_csv", "blank_lines_csv"])
def test_convert_refuses_a_bad_output_folder_or_an_empty_csv_in_one_line(tmp_path, case):
    csv = tmp_path / "good.csv"
    csv.write_text(",".join(["0"] * 784 + ["3"]) + "\n")
    out = tmp_path / "new"
    if case == "parent_is_a_file":
        (tmp_path / "afile").write_text("mine")
        out, named = tmp_path / "afile" / "sub", tmp_path / "afile"
    elif case == "under_proc":
        out, named = Path("/proc/mnist-dist-test"), Path("/proc")
    else:
        csv.write_text("" if case == "empty_csv" else "\n\n")
        named = csv
    proc = run_cli(["convert", str(csv), str(out)], check=False, timeout=120)
    assert proc.returncode == 2
    one_line_naming(proc.stderr, named)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- train on resume


def test_a_resume_with_a_damaged_metrics_file_is_one_line_and_writes_nothing(tiny_idx, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *tiny_overrides(tiny_idx, run_dir, "checkpoint.every_steps=5", "train.max_steps=10")]
    run_cli(args)
    metrics = run_dir / rundir.METRICS
    metrics.write_text("5\n" + metrics.read_text())
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    proc = run_cli(args, check=False)
    assert proc.returncode == 2
    assert "line 1 holds the int '5'" in one_line_naming(proc.stderr, metrics)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
