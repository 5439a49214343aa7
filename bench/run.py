"""The benchmark suite: time to accuracy, throughput, DDP scaling, each beside the classic reference loop.

    python bench/run.py                    # full suite on this machine (CPU or one GPU), minutes
    python bench/run.py --quick            # tiny synthetic data, seconds: checks the harness, not the speed
    python bench/run.py --suites tta,reference --recipes fast_fashion:5 --targets 0.88,0.9

Every figure comes from real processes started here, so start-up is counted:
  tta         recipes from configs/train/ run through the real CLI (train_accel.py) as subprocesses, one per
              seed. The harness watches metrics.jsonl and stamps each evaluation with its own clock: the
              whole-process wall time at which a test accuracy was known. Median over seeds.
  reference   bench/reference.py, the tutorial loop (torchvision + ToTensor + DataLoader(32) + tutorial_cnn +
              SGD 0.01), timed the same way, so every speed-up is a ratio taken side by side.
  throughput  bench/throughput.py: steady-state images/s of the real training loop per loader path and model.
  ddp         (CPU) the same recipe and global batch with 1 process (2 threads) and 2 processes (gloo's
              all-reduce), both started by accelerate launch.
Writes OUT/<tag>.json and OUT/<tag>.png (test accuracy against wall-clock time) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnist_dist import config
from mnist_dist.data import idx, sources

ROOT = Path(__file__).resolve().parents[1]

# What a full run measures, per device kind. recipe: (config file stem, seeds, extra overrides).
PLANS = {
    "cpu": {
        "recipes": "fast_fashion:3,default:1",
        "targets": "0.85,0.88,0.90,0.92",
        "reference_stop_at": 0.85,
        "throughput": [  # (label, config stem, overrides)
            ("fast_fashion device", "fast_fashion", ["data.loader=device"]),
            ("fast_fashion dataloader", "fast_fashion", ["data.loader=dataloader"]),
            ("default device", "default", ["data.loader=device"]),
            ("default dataloader", "default", ["data.loader=dataloader"]),
            ("reference recipe, our loop, device", "bench/tutorial_cnn", ["data.loader=device"]),
            ("reference recipe, our loop, dataloader", "bench/tutorial_cnn", ["data.loader=dataloader"]),
        ],
        "throughput_steps": 60,
        "ddp_recipe": "fast_fashion",
    },
    "cuda": {
        "recipes": "fast_fashion_gpu:3,default:1,accurate_fashion:1",
        "targets": "0.85,0.88,0.90,0.92,0.93",
        "reference_stop_at": 0.85,
        "throughput": [
            ("fast_fashion_gpu device", "fast_fashion_gpu", ["data.loader=device"]),
            ("fast_fashion_gpu dataloader", "fast_fashion_gpu", ["data.loader=dataloader"]),
            ("fast_fashion_gpu device fp32", "fast_fashion_gpu", ["train.mixed_precision=no"]),
            ("fast_fashion_gpu device no channels_last", "fast_fashion_gpu", ["model.channels_last=false"]),
            ("fast_fashion_gpu device compile", "fast_fashion_gpu", ["model.compile=true"]),
            ("default device", "default", ["data.loader=device", "run.guard_every_steps=50"]),
            ("default dataloader", "default", ["data.loader=dataloader", "run.guard_every_steps=50"]),
            ("reference recipe, our loop, device", "bench/tutorial_cnn", ["data.loader=device"]),
            ("reference recipe, our loop, dataloader", "bench/tutorial_cnn", ["data.loader=dataloader"]),
        ],
        "throughput_steps": 200,
        "ddp_recipe": None,  # one GPU here; multi-GPU DDP needs a machine with several
    },
}
# Extra overrides for every recipe run on a GPU (the recipes hold hyperparameters, not hardware).
GPU_OVERRIDES = ["train.eval_batch_size=10000"]


def parse_recipes(text: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, text.split(",")):
        name, _, seeds = item.partition(":")
        out.append((name, int(seeds or 1)))
    return out


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and the ISA flags that pick kernels here (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), []
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile",
              "amx_int8", "avx_vnni")
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.processor()), [f for f in wanted if f in flags]


def machine() -> dict:
    model, flags = cpu_model_and_flags()
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": model, "cpu_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}
    # the kernels torch and oneDNN may use, where the environment narrows them (an AVX2-only CPU emulated on a
    # newer one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
    info |= {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- running one process


def watch(cmd: list[str], run_dir: Path, log_path: Path, timeout_s: float, env=None) -> dict:
    """Run `cmd`, stamping each new metrics.jsonl line with the harness clock (whole-process wall time)."""
    metrics = run_dir / "metrics.jsonl"
    records: list[dict] = []
    t0, t0_unix = time.perf_counter(), time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            finished = proc.poll() is not None
            if metrics.exists():
                lines = metrics.read_text().split("\n")[:-1]  # complete lines only
                for line in lines[len(records):]:
                    records.append({**json.loads(line), "wall_seconds": time.perf_counter() - t0})
            if finished:
                break
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    first_step = (summary or {}).get("first_step_unix")  # the run's own clock: same machine, same epoch
    return {"cmd": cmd, "returncode": proc.returncode, "wall_seconds": wall, "records": records, "summary": summary,
            "startup_seconds": None if first_step is None else first_step - t0_unix,  # exec to first optimizer step
            "log_tail": log_path.read_text()[-2000:]}


def time_to(records: list[dict], target: float, key: str) -> float | None:
    hit = next((r for r in records if r.get("test_accuracy", 0) >= target), None)
    return None if hit is None else hit[key]


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def config_path(recipe: str) -> str:
    """A recipe stem from configs/train/, or a path (without .yaml) relative to the repository."""
    return f"{recipe}.yaml" if "/" in recipe else f"configs/train/{recipe}.yaml"


def train_cmd(recipe: str, run_dir: Path, seed: int, overrides: list[str], processes: int | None = None) -> list[str]:
    """`python train_accel.py ...`, or with `processes` the same under `accelerate launch` on that many CPU
    processes (the launcher's own start-up, ~3 s here, then counts for 1 process too)."""
    args = ["train_accel.py", "--config", config_path(recipe), f"run.dir={run_dir}",
            "train.progress=false", "checkpoint.resume=never", f"train.seed={seed}", *overrides]
    if processes is None:
        return [sys.executable, *args]
    launch_config = "configs/accelerate/cpu.yaml" if processes == 1 else "configs/accelerate/cpu_ddp2.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launch_config, *args]


def summarize_runs(name: str, runs: list[dict], targets: list[float]) -> dict:
    ok = [r for r in runs if r["returncode"] == 0]
    out = {"name": name, "runs": len(runs), "ok": len(ok),
           "final_test_accuracy_median": median_or_none([r["records"][-1]["test_accuracy"] for r in ok if r["records"]]),
           "wall_seconds_median": median_or_none([r["wall_seconds"] for r in ok]),
           "train_seconds_median": median_or_none([r["records"][-1]["train_seconds"] for r in ok if r["records"]]),
           "final_test_accuracy": [r["records"][-1]["test_accuracy"] if r["records"] else None for r in ok],
           "startup_seconds": [r.get("startup_seconds") for r in ok],
           "mixed_precision": [(r["summary"] or {}).get("mixed_precision") for r in ok],  # auto: bf16 where native
           "startup_seconds_median": median_or_none([r.get("startup_seconds") for r in ok]),
           "first_epoch_wall_seconds": [next((x["wall_seconds"] for x in r["records"] if x.get("epoch", 0) >= 1), None)
                                        for r in ok],
           "targets": {}}
    for t in targets:
        walls = [time_to(r["records"], t, "wall_seconds") for r in ok]
        trains = [time_to(r["records"], t, "train_seconds") for r in ok]
        out["targets"][f"{t:.4g}"] = {"reached": sum(w is not None for w in walls), "of": len(ok),
                                      "wall_seconds_median": median_or_none(walls),
                                      "train_seconds_median": median_or_none(trains),
                                      "wall_seconds": walls, "train_seconds": trains}
    return out


# ----------------------------------------------------------------------------- suites


def suite_tta(args, plan, work: Path, common: list[str], targets) -> dict:
    results = {}
    for recipe, seeds in parse_recipes(args.recipes or plan["recipes"]):
        runs = []
        for seed in range(seeds):
            run_dir = work / f"{recipe}-s{seed}"
            cmd = train_cmd(recipe, run_dir, seed, common, args.tta_processes)
            r = watch(cmd, run_dir, work / f"{recipe}-s{seed}.log", args.timeout)
            print(f"  {recipe} seed {seed}: rc={r['returncode']} wall {r['wall_seconds']:.1f}s start-up "
                  f"{fmt(r['startup_seconds'], '.2f')}s final test acc "
                  f"{r['records'][-1]['test_accuracy'] if r['records'] else None}", flush=True)
            runs.append(r)
        results[recipe] = {**summarize_runs(recipe, runs, targets), "curves": [curve(r) for r in runs],
                           "failures": [r["log_tail"] for r in runs if r["returncode"] != 0]}
    return results


def suite_reference(args, plan, work: Path, targets) -> dict:
    runs = []
    for seed in range(args.reference_seeds):
        run_dir = work / f"reference-s{seed}"
        cmd = [sys.executable, "bench/reference.py", "--data", args.data, "--data-dir", args.data_dir,
               "--run-dir", str(run_dir), "--seed", str(seed), "--epochs", str(args.reference_epochs),
               "--stop-at", str(args.reference_stop_at if args.reference_stop_at is not None else plan["reference_stop_at"])]
        if args.quick:
            cmd += ["--max-steps", "4", "--eval-every-images", "64"]
        r = watch(cmd, run_dir, work / f"reference-s{seed}.log", args.timeout)
        print(f"  reference seed {seed}: rc={r['returncode']} wall {r['wall_seconds']:.1f}s final test acc "
              f"{r['records'][-1]['test_accuracy'] if r['records'] else None}", flush=True)
        runs.append(r)
    return {**summarize_runs("reference", runs, targets), "curves": [curve(r) for r in runs],
            "failures": [r["log_tail"] for r in runs if r["returncode"] != 0]}


def run_json(cmd: list[str], timeout_s: float) -> dict:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(lines[-1])


def suite_throughput(args, plan, work: Path, common: list[str]) -> dict:
    steps = 3 if args.quick else args.throughput_steps or plan["throughput_steps"]
    warmup = 1 if args.quick else max(10, steps // 5)
    out = {}
    for label, recipe, overrides in plan["throughput"]:
        cmd = [sys.executable, "bench/throughput.py", "--config", config_path(recipe), "--steps",
               str(steps), "--warmup", str(warmup), *common, *overrides]
        out[label] = run_json(cmd, args.timeout)
        print(f"  {label}: {out[label].get('images_per_s', out[label].get('error', '')[-300:])}", flush=True)
    ref_steps = 4 if args.quick else max(100, steps * 3)
    cmd = [sys.executable, "bench/reference.py", "--data", args.data, "--data-dir", args.data_dir,
           "--run-dir", str(work / "reference-throughput"), "--throughput-steps", str(ref_steps)]
    out["reference (tutorial loop)"] = run_json(cmd, args.timeout)
    print(f"  reference: {out['reference (tutorial loop)'].get('images_per_s')}", flush=True)
    return out


def suite_startup(args, work: Path, common: list[str]) -> dict:
    """Start-up, exec to the end of the first optimizer step: the `debug` recipe (2 steps, `--startup-processes`
    processes) alternating round by round with the public-API floor script (`--floor`), which prints time.time()
    at the end of its one step. Each figure subtracts the harness's clock at launch."""
    floor = Path(args.floor)
    out: dict = {"floor_script": str(floor) if floor.is_file() else None, "ours": [], "floor": []}
    for i in range(args.startup_rounds):
        run_dir = work / f"startup-{i}"
        cmd = train_cmd("debug", run_dir, 0, [*common, "train.max_steps=2"], args.startup_processes)
        t0 = time.time()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        summary = run_dir / "summary.json"
        ours = json.loads(summary.read_text())["first_step_unix"] - t0 if p.returncode == 0 else None
        out["ours"].append(ours)
        if out["floor_script"] and args.startup_processes is None:  # the floor is one process
            t0 = time.time()
            p = subprocess.run([sys.executable, str(floor)], cwd=ROOT, capture_output=True, text=True,
                               timeout=args.timeout)
            out["floor"].append(float(p.stdout.split()[-1]) - t0 if p.returncode == 0 else None)
        print(f"  round {i}: ours {fmt(ours, '.3f')} s, floor {fmt((out['floor'] or [None])[-1], '.3f')} s", flush=True)
    out["ours_median"], out["floor_median"] = median_or_none(out["ours"]), median_or_none(out["floor"])
    print(f"  median of {args.startup_rounds}: ours {fmt(out['ours_median'], '.3f')} s, "
          f"floor {fmt(out['floor_median'], '.3f')} s", flush=True)
    return out


# key: (processes, overrides, label)
DDP_VARIANTS = {"1": (1, [], "x1"), "2": (2, [], "x2")}


def suite_ddp(args, plan, work: Path, common: list[str], targets) -> dict:
    """Same recipe, same global batch, same launcher (accelerate launch): 1 process with the machine's threads
    vs 2 processes (gloo's all-reduce). The two alternate seed by seed, so a drift in
    the machine's speed (a shared VM's is several percent over minutes) lands on all, and each seed gives paired
    ratios."""
    recipe = plan["ddp_recipe"]
    batch = config.load(ROOT / config_path(recipe)).train.per_device_batch_size
    runs = {key: [] for key in DDP_VARIANTS}
    for seed in range(args.ddp_seeds):
        for key, (processes, extra, _) in DDP_VARIANTS.items():
            run_dir = work / f"ddp{key}-s{seed}"
            overrides = [*common, f"train.per_device_batch_size={batch // processes}", *extra]
            r = watch(train_cmd(recipe, run_dir, seed, overrides, processes), run_dir,
                      work / f"ddp{key}-s{seed}.log", args.timeout)
            s = r["summary"] or {}
            print(f"  {recipe} x{processes} processes (world_size={s.get('world_size')}, {s.get('torch_threads')} "
                  f"threads, all-reduce {s.get('allreduce')}) seed {seed}: rc={r['returncode']} "
                  f"wall {r['wall_seconds']:.1f}s train {s.get('train_seconds')}", flush=True)
            runs[key].append(r)
    out = {}
    for key, rs in runs.items():
        s = summarize_runs(f"{recipe} {DDP_VARIANTS[key][2]}", rs, targets)
        s["world_size"] = [(r["summary"] or {}).get("world_size") for r in rs]
        s["allreduce"] = [(r["summary"] or {}).get("allreduce") for r in rs]
        s["train_images_per_s"] = [train_images_per_s(r) for r in rs]
        s["train_images_per_s_median"] = median_or_none([x for x in s["train_images_per_s"] if x])
        s["curves"] = [curve(r) for r in rs]
        s["failures"] = [r["log_tail"] for r in rs if r["returncode"] != 0]
        out[key] = s
    # 2 processes / 1 process, seed by seed (runs next to each other in time)
    pairs = zip(out["1"]["train_images_per_s"], out["2"]["train_images_per_s"])
    out["paired_ratios"] = [b / a for a, b in pairs if a and b]
    return out


def ddp_runs(result: dict) -> list[dict]:
    """The summaries of a result's DDP suite, 1 process first (none without one)."""
    return [result["ddp"][k] for k in DDP_VARIANTS if k in result.get("ddp", {})]


def train_images_per_s(run: dict) -> float | None:
    s = run["summary"]
    return sum(s["train_samples_per_rank"]) / s["train_seconds"] if s else None


def curve(run: dict) -> list[list[float]]:
    return [[r["wall_seconds"], r["train_seconds"], r["test_accuracy"]] for r in run["records"]]


# ----------------------------------------------------------------------------- report


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def print_table(result: dict) -> None:
    targets = result["targets"]
    print(f"\n== {result['tag']}: {result['machine'].get('gpu') or result['machine']['processor']}, "
          f"{result['machine']['cpu_count']} CPUs, torch {result['machine']['torch']}")
    rows = {**result.get("tta", {})}
    if "reference" in result:
        rows["reference (tutorial loop)"] = result["reference"]
    for v in ddp_runs(result):
        rows[f"ddp: {v['name']}"] = v
    if rows:
        head = "".join(f"  wall/train to {float(t) * 100:g}%" for t in targets)
        print(f"{'time to accuracy (median s)':34s} seeds  final acc  wall s  start s{head}")
        for name, s in rows.items():
            cells = "".join(f"  {fmt(s['targets'][t]['wall_seconds_median']):>6s}/{fmt(s['targets'][t]['train_seconds_median']):<6s}"
                            f"{'' if s['targets'][t]['reached'] == s['targets'][t]['of'] else '*':1s}   "
                            for t in s["targets"])
            print(f"{name:34s} {s['ok']:>2d}/{s['runs']:<2d} {fmt(s['final_test_accuracy_median'], '.4f'):>9s} "
                  f"{fmt(s['wall_seconds_median']):>7s}  {fmt(s.get('startup_seconds_median'), '.2f'):>7s}{cells}")
        print("  (* = not every seed reached it; median over those that did. start s: exec to the end of the first "
              "optimizer step)")
        for name, s in result.get("tta", {}).items():
            for t, v in s["targets"].items():
                print(f"  {name} {float(t) * 100:g}% per seed, wall s: "
                      + " ".join(fmt(w, '.1f') for w in v["wall_seconds"]))
            print(f"  {name} final test accuracy per seed: " + " ".join(fmt(a, '.4f') for a in s["final_test_accuracy"])
                  + "; start-up s: " + " ".join(fmt(x, '.2f') for x in s["startup_seconds"]))
    if result.get("throughput"):
        ref = result["throughput"].get("reference (tutorial loop)", {}).get("images_per_s")
        print(f"\n{'training throughput':42s} images/s   x reference")
        for name, t in result["throughput"].items():
            ips = t.get("images_per_s")
            print(f"{name:42s} {fmt(ips, '.0f'):>9s}   {fmt(ips / ref if ips and ref else None, '.1f'):>6s}"
                  + ("" if ips else "   error: " + t.get("error", "").strip().splitlines()[-1][:80] if t.get("error") else ""))
    for line in result.get("ratios", []):
        print(line)


def ratios(result: dict) -> list[str]:
    lines = []
    ref = result.get("reference")
    if ref and result.get("tta"):
        ref85 = ref["targets"].get("0.85", {}).get("wall_seconds_median")
        ref_epoch = median_or_none(ref.get("first_epoch_wall_seconds") or [])
        for name, s in result["tta"].items():
            for t in ("0.9", "0.92"):
                mine = s["targets"].get(t, {}).get("wall_seconds_median")
                if ref85 and mine:
                    lines.append(f"{name}: {float(t) * 100:g}% after {mine:.1f}s wall; the reference reached 85% after "
                                 f"{ref85:.1f}s: {ref85 / mine:.1f}x sooner")
                if ref_epoch and mine:
                    lines.append(f"{name}: {float(t) * 100:g}% after {mine:.1f}s wall = {mine / ref_epoch:.2f}x the "
                                 f"reference's first epoch ({ref_epoch:.1f}s wall, start-up included)")
    one = result.get("ddp", {}).get("1")
    for key, paired_key in (("2", "paired_ratios"),):
        two = result.get("ddp", {}).get(key)
        if not (one and two and one.get("train_images_per_s_median") and two.get("train_images_per_s_median")):
            continue
        a, b = one["train_images_per_s_median"], two["train_images_per_s_median"]
        via = sorted(set(two.get("allreduce") or ["gloo"]) - {None})
        paired = result["ddp"].get(paired_key) or []
        lines.append(f"ddp: training {b:.0f} images/s with 2 processes ({'/'.join(via)} all-reduce) vs {a:.0f} with "
                     f"1 process ({b / a - 1:+.1%}); whole-process wall {fmt(two['wall_seconds_median'])} vs "
                     f"{fmt(one['wall_seconds_median'])} s (both started by accelerate launch)")
        if paired:
            lines.append(f"ddp: 2 processes ({'/'.join(via)}) / 1 process images/s, seed by seed: "
                         + " ".join(f"{x - 1:+.1%}" for x in paired)
                         + f" (median {median_or_none(paired) - 1:+.1%})")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(8, 5))
    series = {**result.get("tta", {})}
    if "reference" in result:
        series["reference (tutorial loop)"] = result["reference"]
    for v in ddp_runs(result):
        series[f"ddp {v['name']}"] = v
    for i, (name, s) in enumerate(series.items()):
        color = f"C{i}"
        for j, c in enumerate(s.get("curves", [])):
            if c:
                ax.plot([p[0] for p in c], [p[2] for p in c], "o-", color=color, alpha=0.8, ms=3, lw=1,
                        label=name if j == 0 else None)
    for t in result["targets"]:
        ax.axhline(float(t), color="grey", lw=0.5, ls=":")
    times = [p[0] for s in series.values() for c in s.get("curves", []) for p in c if p[0] > 0]
    if times and max(times) > 5 * min(times):  # seconds to minutes (the reference): a log axis keeps both legible
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(  # 20, 30, 50, 200, ... in plain numbers
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    ax.set_xlabel("whole-process wall-clock seconds (start-up included)")
    ax.set_ylabel("test accuracy")
    accs = [p[2] for s in series.values() for c in s.get("curves", []) for p in c]
    if accs:
        ax.set_ylim(max(0.0, min(min(accs), 0.8) - 0.02), min(1.0, max(accs) + 0.01))
    ax.set_title(f"{result['data']}: {result['machine'].get('gpu') or result['machine']['processor']} "
                 f"({result['machine']['cpu_count']} CPUs)")
    ax.grid(True, which="both", lw=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def quick_data(folder: Path) -> str:
    """A tiny synthetic IDX dataset (class = a bright square's position) so --quick needs no real data."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 512), ("test", 256)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8)
        for i, y in enumerate(labels.tolist()):
            r, c = 2 + 5 * (y // 5) * 2, 2 + 5 * (y % 5)
            images[i, r:r + 6, c:c + 4] = 255
        idx.write_idx(folder, split, images, labels, gz=True)
    return str(folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Time to accuracy, throughput and DDP scaling, beside the tutorial loop.")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data and a few steps: checks the harness only")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--suites", default=None,
                   help="comma list of tta,reference,throughput,ddp,startup (default: all that apply but startup)")
    p.add_argument("--recipes", default=None, help="comma list of config stems with seed counts, e.g. fast_fashion:3,default:1")
    p.add_argument("--targets", default=None, help="test accuracies, e.g. 0.88,0.9,0.92")
    p.add_argument("--data", default="fashion_mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--data-dir", default=None, help="IDX folder (default: the Debian Fashion-MNIST folder)")
    p.add_argument("--reference-seeds", type=int, default=1)
    p.add_argument("--reference-epochs", type=int, default=10)
    p.add_argument("--reference-stop-at", type=float, default=None, help="stop the reference at this accuracy")
    p.add_argument("--ddp-seeds", type=int, default=1)
    p.add_argument("--tta-processes", type=int, default=None,
                   help="run each recipe under accelerate launch on this many CPU processes (default: one plain "
                        "process); 2 is the README quick start")
    p.add_argument("--throughput-steps", type=int, default=0)
    p.add_argument("--startup-rounds", type=int, default=7, help="startup suite: alternating rounds")
    p.add_argument("--startup-processes", type=int, default=None,
                   help="startup suite: time `accelerate launch` on this many CPU processes (no floor then)")
    p.add_argument("--floor", default=str(ROOT.parent / "shared" / "startup_floor.py"),
                   help="startup suite: the public-API floor script (default ../shared/startup_floor.py)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process before it is killed")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--tag", default=None, help="output file stem (default: cpu, cuda or quick)")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders (checkpoints) under OUT/runs-TAG")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every recipe run, e.g. train.epochs=2")
    args = p.parse_args(argv)

    kind = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    plan = PLANS[kind]
    tag = args.tag or ("quick" if args.quick else kind)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"runs-{tag}" if args.keep_runs else Path(tempfile.mkdtemp(prefix="mnist-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    common = [f"data.name={args.data}", f"train.device={kind}"]
    if args.quick:
        args.data_dir = args.data_dir or quick_data(work / "quick_data")
        args.recipes = args.recipes or "debug:2"
        args.targets = args.targets or "0.1,0.2"
        args.reference_epochs = 1
        plan = {**plan, "throughput": [("debug device", "debug", ["data.loader=device"]),
                                       ("debug dataloader", "debug", ["data.loader=dataloader"])],
                "ddp_recipe": "debug"}
        common += ["data.val_size=64", "train.max_steps=4", "model.kwargs={width: 4}", "train.eval_batch_size=256"]
    args.data_dir = args.data_dir or next(iter(sources.LOCAL_DIRS.get(args.data, [])), None)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        print(f"bench: no IDX folder for {args.data}; pass --data-dir", file=sys.stderr)
        return 2
    common.append(f"data.dir={args.data_dir}")
    if kind == "cuda":
        common += GPU_OVERRIDES
    common += args.overrides
    targets = [float(t) for t in (args.targets or plan["targets"]).split(",")]
    default_suites = "tta,reference,throughput" + (",ddp" if plan["ddp_recipe"] and not args.quick else "")
    suites = (args.suites or default_suites).split(",")

    result = {"tag": tag, "data": args.data, "data_dir": args.data_dir, "quick": args.quick,
              "targets": [f"{t:.4g}" for t in targets], "machine": machine(), "common_overrides": common,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    if "tta" in suites:
        print("time to accuracy:", flush=True)
        result["tta"] = suite_tta(args, plan, work, common, targets)
    if "reference" in suites:
        print("reference loop:", flush=True)
        result["reference"] = suite_reference(args, plan, work, targets)
    if "throughput" in suites:
        print("throughput:", flush=True)
        result["throughput"] = suite_throughput(args, plan, work, common)
    if "ddp" in suites and plan["ddp_recipe"]:
        print("ddp:", flush=True)
        result["ddp"] = suite_ddp(args, plan, work, common, targets)
    if "startup" in suites:
        print("start-up (exec to the end of the first optimizer step):", flush=True)
        result["startup"] = suite_startup(args, work, common)
    result["bench_seconds"] = time.perf_counter() - t0
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    result["ratios"] = ratios(result)

    (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{tag}.png")
    print_table(result)
    print(f"\nwrote {out / f'{tag}.json'} and {out / f'{tag}.png'}")
    if not args.keep_runs:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, s in {**result.get("tta", {}), "reference": result.get("reference")}.items()
              if s and s["ok"] < s["runs"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
