"""train.mixed_precision=auto: a launch's bf16 or fp16 first; else bf16 autocast on a CPU with native bf16 and fp32
elsewhere (a GPU keeps fp32 unless the launch says bf16 or fp16). A launch's `no` is accelerate's default too, so
it is not a choice: the quick start's 2-process launch trains in bf16 where the CPU has it. A real run's start-up line and summary.json say which
precision ran and why."""
import json

import pytest

from mnist_dist.train import runtime

from helpers import run_cli, tiny_overrides


@pytest.mark.parametrize("asked, on_cpu, launcher, cpu_bf16, expected", [
    ("auto", True, None, ["avx512_bf16", "amx_tile"], "bf16"),  # Sapphire Rapids
    ("auto", True, None, ["avx512_bf16"], "bf16"),               # Cooper Lake, Zen 4
    ("auto", True, None, [], "no"),                              # AVX2 only (Zen 2/3, most laptops)
    # accelerate launch's `no`: also what it passes when nothing asked for a precision (the repo's CPU YAMLs say none)
    ("auto", True, "no", ["amx_tile"], "bf16"),
    ("auto", True, "no", [], "no"),
    ("auto", True, "bf16", [], "bf16"),                          # the launch's word even without native bf16
    ("auto", False, None, [], "no"),                             # a GPU: fp32 unless the launch says bf16/fp16
    ("auto", False, "no", [], "no"),
    ("auto", False, "fp16", [], "fp16"),
    ("no", True, "bf16", ["amx_tile"], "no"),                    # the config key over the launch
    ("bf16", True, None, [], "bf16"),
])
def test_the_choice(asked, on_cpu, launcher, cpu_bf16, expected):
    precision, why = runtime.choose_mixed_precision(asked, on_cpu, launcher, cpu_bf16)
    assert precision == expected
    assert why.startswith("auto: " if asked == "auto" else f"train.mixed_precision={asked}")
    if asked == "auto" and launcher in (None, "no") and on_cpu:
        assert all(flag in why for flag in cpu_bf16) or "no native bf16" in why


def test_a_run_on_auto_records_what_ran_and_why(tiny_idx, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.mixed_precision=auto", "train.max_steps=2",
                                             "tracking.backend=none")])
    summary = json.loads((run_dir / "summary.json").read_text())
    features = runtime.cpu_bf16_features()
    assert summary["mixed_precision"] == ("bf16" if features else "no")
    assert summary["mixed_precision_why"] == (f"auto: this CPU has native bf16 ({', '.join(features)})" if features
                                              else "auto: this CPU has no native bf16 (avx512_bf16, amx)")
    assert f"mixed_precision={summary['mixed_precision']} ({summary['mixed_precision_why']})" in proc.stdout


def test_the_quick_start_launch_trains_in_bf16_where_the_cpu_has_it(tiny_idx, tmp_path):
    """The README's launch (configs/accelerate/cpu_ddp2.yaml, 2 processes) trained fp32 on every CPU: accelerate
    passed its default `no`, and auto followed it."""
    from helpers import ddp2_launcher
    run_dir = tmp_path / "run"
    run_cli(["train", *tiny_overrides(tiny_idx, run_dir, "train.max_steps=2", "tracking.backend=none",
                                      "train.mixed_precision=auto")], launcher=ddp2_launcher(29645))
    summary = json.loads((run_dir / "summary.json").read_text())
    features = runtime.cpu_bf16_features()
    assert (summary["world_size"], summary["mixed_precision"]) == (2, "bf16" if features else "no")
