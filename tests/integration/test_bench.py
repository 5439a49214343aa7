"""bench/run.py runs end to end in --quick mode (tiny synthetic data, a few steps, every suite but DDP) and
leaves a valid JSON with each suite's numbers and a PNG plot. No timing assertions: this checks the harness."""
import json
import statistics
import sys

import pytest

from helpers import run


@pytest.mark.slow
def test_bench_quick_runs_end_to_end(tmp_path, tiny_idx):
    out = tmp_path / "bench"
    proc = run([sys.executable, "bench/run.py", "--quick", "--data-dir", str(tiny_idx), "--out", str(out)])
    result = json.loads((out / "quick.json").read_text())
    assert result["quick"] and result["targets"]
    tta = result["tta"]["debug"]
    assert tta["ok"] == tta["runs"] == 2
    assert all(curve and 0 <= p[2] <= 1 for curve in tta["curves"] for p in curve)  # one point per evaluation
    assert result["reference"]["ok"] == 1 and result["reference"]["curves"][0]
    for name, t in result["throughput"].items():
        assert t.get("images_per_s", 0) > 0, (name, t)
    png = (out / "quick.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "time to accuracy" in proc.stdout and "training throughput" in proc.stdout


@pytest.mark.slow
def test_bench_ddp_suite_pairs_one_and_two_processes(tmp_path, tiny_idx):
    """The DDP suite really starts 1 process, then 2 (gloo's all-reduce), per seed (world_size and all-reduce read
    back from each run's summary) and reports a ratio per seed."""
    out = tmp_path / "bench"
    proc = run([sys.executable, "bench/run.py", "--quick", "--suites", "ddp", "--ddp-seeds", "1",
                "--data-dir", str(tiny_idx), "--out", str(out)])
    ddp = json.loads((out / "quick.json").read_text())["ddp"]
    assert ddp["1"]["world_size"] == [1] and ddp["2"]["world_size"] == [2]
    assert ddp["1"]["allreduce"] == ["none"] and ddp["2"]["allreduce"] == ["gloo"]
    assert len(ddp["paired_ratios"]) == 1 and all(r > 0 for r in ddp["paired_ratios"])
    assert "seed by seed" in proc.stdout


@pytest.mark.slow
def test_bench_startup_suite_alternates_ours_with_the_floor(tmp_path, tiny_idx):
    """The start-up suite times the debug recipe from exec to its first step's end, round by round beside a floor
    script (here a stand-in that prints time.time(), as ../shared/startup_floor.py does)."""
    floor = tmp_path / "floor.py"
    floor.write_text("import time\nprint(time.time())\n")
    out = tmp_path / "bench"
    run([sys.executable, "bench/run.py", "--quick", "--suites", "startup", "--startup-rounds", "2",
         "--floor", str(floor), "--data-dir", str(tiny_idx), "--out", str(out)])
    startup = json.loads((out / "quick.json").read_text())["startup"]
    assert len(startup["ours"]) == len(startup["floor"]) == 2
    assert all(0 < t < 120 for t in startup["ours"] + startup["floor"])
    assert startup["floor"][0] < startup["ours"][0]  # printing the time costs less than importing torch and training
    assert startup["ours_median"] == statistics.median(startup["ours"])
