"""Start-up: a training run imports what it uses when it uses it (the speed figures are in bench/, not here)."""
import json
import sys

from helpers import run, tiny_overrides

HEAVY = ("datasets", "wandb", "matplotlib", "onnx", "onnxscript", "pandas", "PIL",
         "torch._dynamo", "triton", "sympy")  # dynamo (and Triton, sympy) only for a run that compiles

PROBE = """
import json, sys
from mnist_dist import cli, train
real_step = train.train_step
def first_step(*args, **kwargs):
    train.train_step = real_step
    print("IMPORTED_AT_FIRST_STEP " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), flush=True)
    return real_step(*args, **kwargs)
train.train_step = first_step
code = cli.main(["train", *sys.argv[1:]])
print("IMPORTED_AT_EXIT " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), flush=True)
sys.exit(code)
"""


def test_the_first_optimizer_step_comes_before_any_import_the_run_does_not_need(tiny_idx, tmp_path):
    """No datasets (an IDX folder is read), no wandb (tracking none), no matplotlib (pictures come after
    training), no onnx, no PIL, no torch._dynamo, Triton or sympy (nothing is compiled; torch.optim and
    Accelerate's DTensor check would import them, mnist_dist/eager.py and runtime.prepare) by the first step:
    each costs start-up for every run that does not use it."""
    proc = run([sys.executable, "-c", PROBE.format(heavy=HEAVY),
                *tiny_overrides(tiny_idx, tmp_path / "run", "train.max_steps=2", "tracking.backend=none")], timeout=300)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("IMPORTED_AT_FIRST_STEP "))
    assert json.loads(line.split(" ", 1)[1]) == []
    # Nor by the end: saving the model (Accelerate's unwrap_model) would import dynamo, ~1 s of every run's wall time.
    line = next(x for x in proc.stdout.splitlines() if x.startswith("IMPORTED_AT_EXIT "))
    assert not {"torch._dynamo", "triton", "sympy"} & set(json.loads(line.split(" ", 1)[1]))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["startup_seconds"] < 600 and summary["first_step_unix"] > 0
