"""Start-up: a training run imports what it uses when it uses it (the speed figures are in bench/, not here)."""
import json
import subprocess
import sys

from helpers import run, tiny_overrides

HEAVY = ("datasets", "wandb", "matplotlib", "onnx", "onnxscript", "pandas", "PIL")

PROBE = """
import json, sys
from mnist_dist import cli
from mnist_dist.train import loop
real_step = loop.train_step
def first_step(*args, **kwargs):
    loop.train_step = real_step
    print("IMPORTED_AT_FIRST_STEP " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), flush=True)
    return real_step(*args, **kwargs)
loop.train_step = first_step
sys.exit(cli.main(["train", *sys.argv[1:]]))
"""


def test_the_first_optimizer_step_comes_before_any_import_the_run_does_not_need(tiny_idx, tmp_path):
    """No datasets (an IDX folder is read), no wandb (tracking none), no matplotlib (pictures come after
    training), no onnx, no PIL by the first step: each costs start-up for every run that does not use it.
    (torch.optim's own decorators import torch._dynamo at the first optimizer call: that cost is measured in
    bench/, not avoided through torch's private functions.)"""
    proc = run([sys.executable, "-c", PROBE.format(heavy=HEAVY),
                *tiny_overrides(tiny_idx, tmp_path / "run", "train.max_steps=2", "tracking.backend=none")], timeout=300)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("IMPORTED_AT_FIRST_STEP "))
    assert json.loads(line.split(" ", 1)[1]) == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["startup_seconds"] < 600 and summary["first_step_unix"] > 0


def test_building_the_command_line_imports_no_hub_library():
    """Every command starts by building the parser of all of them. When that imported huggingface_hub (through the
    module of one command), `download` could no longer switch the Hub to offline mode before its import, and an
    offline download retried the Hub for 23 s with a warning per retry."""
    code = ("import sys; from mnist_dist import cli; cli.build_parser(); "
            "print(sorted(m for m in ('huggingface_hub', 'datasets', 'gradio', 'wandb', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
